//! `piprune`: the pruning front-end (see `piprune --help`).

use clap::Parser;

fn main() {
    let args = pibench_prune::cli::PruneCli::parse();
    if let Err(e) = pibench_prune::cli::run(args) {
        eprintln!("piprune: error: {e:#}");
        std::process::exit(1);
    }
}
