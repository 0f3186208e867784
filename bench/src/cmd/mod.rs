//! One module per `pibench` subcommand.

pub mod count;
pub mod micro;
pub mod micro_linear;
pub mod micro_relu;
pub mod prune;
