//! Placeholder replaced by the crate owner in this session.

use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct PruneArgs {}

/// Runs the command.
pub fn run(_args: PruneArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
