//! Placeholder replaced by the crate owner in this session.

use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct ReluArgs {}

/// Runs the command.
pub fn run(_args: ReluArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
