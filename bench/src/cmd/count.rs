//! Placeholder replaced by the crate owner in this session.

use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct CountArgs {}

/// Runs the command.
pub fn run(_args: CountArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
