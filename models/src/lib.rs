//! pibench-models: the network description every pibench crate shares.
//!
//! Data flows prune → models → protocol → bench; this crate is the middle of
//! that chain and depends on none of the others.

pub mod arch;
pub mod calibrate;
pub mod count;
pub mod data;
pub mod error;
pub mod file;
pub mod fixed;
pub mod graph;
#[cfg(feature = "pth")]
pub mod import;
pub mod mask;
pub mod reference;

pub use error::{ModelError, Result};
