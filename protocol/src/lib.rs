//! pibench-protocol: the two parties of Delphi-style private inference.
//!
//! The protocol cores are pure state machines over typed messages; [`net`]
//! moves those messages over TCP or an in-memory duplex and counts traffic
//! per phase.

pub mod compute;
pub mod gc;
pub mod he;
pub mod inference;
pub mod msg;
pub mod net;
pub mod ot;
pub mod shaper;
