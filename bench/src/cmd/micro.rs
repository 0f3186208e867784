//! `pibench micro`: micro-benchmarks of the protocol's building blocks.

use clap::{Args, Subcommand};

/// Arguments of `pibench micro`.
#[derive(Debug, Args)]
pub struct MicroArgs {
    #[command(subcommand)]
    which: MicroCommand,
}

#[derive(Debug, Subcommand)]
enum MicroCommand {
    /// Garbled-circuit ReLUs: garble/evaluate time, AND gates and bytes per ReLU.
    Relu(super::micro_relu::ReluArgs),
    /// Homomorphic linear layers of a network: HE time, ciphertext bytes, rotations per layer.
    Linear(super::micro_linear::LinearArgs),
}

/// Runs the selected micro-benchmark.
pub fn run(args: MicroArgs) -> anyhow::Result<()> {
    match args.which {
        MicroCommand::Relu(a) => super::micro_relu::run(a),
        MicroCommand::Linear(a) => super::micro_linear::run(a),
    }
}
