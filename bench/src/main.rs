//! `pibench`: measure the real cost of private inference for ReLU-pruned networks.

use clap::{Parser, Subcommand};

mod cmd;
mod table;

/// Measure the real cost of private inference for ReLU-pruned networks.
#[derive(Debug, Parser)]
#[command(name = "pibench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Count ReLUs, FLOPs and parameters per activation site.
    Count(cmd::count::CountArgs),
    /// Micro-benchmarks of the protocol's building blocks.
    Micro(cmd::micro::MicroArgs),
    /// Train and ReLU-prune a network (runs the `piprune` binary, which links libtorch).
    Prune(cmd::prune::PruneArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Count(args) => cmd::count::run(args),
        Command::Micro(args) => cmd::micro::run(args),
        Command::Prune(args) => cmd::prune::run(args),
    };
    if let Err(err) = result {
        eprintln!("pibench: error: {err:#}");
        std::process::exit(1);
    }
}
