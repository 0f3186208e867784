//! Heavy computation inside async protocol code.
//!
//! Protocol functions are `async` because they wait on the channel, but
//! between two messages they may compute for seconds (HE layers, garbling,
//! the online linear layers). [`heavy`] runs such a section with
//! `tokio::task::block_in_place` on a multi-threaded runtime, so the
//! runtime moves its other tasks (other sessions of a server, timers of the
//! network emulator) to another worker instead of stalling them; on a
//! current-thread runtime (or outside tokio) it simply runs the closure.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs a CPU-heavy section without blocking the async runtime's other tasks.
pub fn heavy<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
