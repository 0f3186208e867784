//! pibench-models: the network description every pibench crate shares.
//!
//! Data flows prune → models → protocol → bench; this crate is the middle of
//! that chain and depends on none of the others.

pub mod fixed;
