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
    /// Import a PyTorch checkpoint (SNL, AutoReP, ReLUPruner) as a model file.
    Import(cmd::import::ImportArgs),
    /// Train and ReLU-prune a network (runs the `piprune` binary, which links libtorch).
    Prune(cmd::prune::PruneArgs),
    /// Private inference between a server process and a client process on loopback, with a per-layer report.
    Run(cmd::infer::RunArgs),
    /// Serve private inferences of a model to clients, one after another.
    Server(cmd::infer::ServerArgs),
    /// Run private inferences against a server.
    Client(cmd::infer::ClientArgs),
    /// Fixed-point reference against float over a test set: top-1, agreement, |Δlogit|, per-site ℓ.
    Accuracy(cmd::accuracy::AccuracyArgs),
    /// Measure per-site magnitude bounds on data and store them (and the scale plan) in the model file.
    Calibrate(cmd::calibrate::CalibrateArgs),
    /// Run the seeds' latency tables (configs/tables/*.toml) through the protocol; write md/csv/json and plots.
    Table(cmd::table::TableArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Count(args) => cmd::count::run(args),
        Command::Micro(args) => cmd::micro::run(args),
        Command::Import(args) => cmd::import::run(args),
        Command::Prune(args) => cmd::prune::run(args),
        Command::Run(args) => cmd::infer::run(args),
        Command::Server(args) => cmd::infer::server(args),
        Command::Client(args) => cmd::infer::client(args),
        Command::Accuracy(args) => cmd::accuracy::run(args),
        Command::Calibrate(args) => cmd::calibrate::run(args),
        Command::Table(args) => cmd::table::run(args),
    };
    if let Err(err) = result {
        eprintln!("pibench: error: {err:#}");
        std::process::exit(1);
    }
}
