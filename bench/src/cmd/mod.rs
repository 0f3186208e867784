//! One module per `pibench` subcommand.

pub mod accuracy;
pub mod calibrate;
pub mod count;
pub mod import;
pub mod infer;
pub mod micro;
pub mod micro_linear;
pub mod micro_relu;
pub mod model_args;
pub mod prune;
pub mod table;
