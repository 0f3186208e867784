//! Garbled circuits: fixed-key-AES hashing, half-gates and three-halves
//! garbling, circuits written once over backends, and the batched
//! truncated-ReLU engine with arithmetic output decoding.
//!
//! * [`hash`]: the GKWY20 tweakable hash `π(σ(x) ⊕ i) ⊕ σ(x)` and an AES-CTR PRG.
//! * [`backend`]: the [`Backend`] trait, constant folding, plaintext and counting backends.
//! * [`circuit`]: the truncated ReLU / truncate-only circuit on 43-bit share halves.
//! * [`garble`]: half-gates and three-halves garbler/evaluator backends, `LANES` circuits per call.
//! * [`accel`]: run-time detection of the AES-NI kernels (the crate's only `unsafe`: the calls into them).
//! * `kernels` (x86-64): fused AES-NI AND-gate, hashing and counter-mode kernels.
//! * `kernels512` (x86-64 with VAES and AVX-512): the half-gates AND gate, `π` and counter mode, four blocks per instruction.
//! * [`simd`]: 128-bit label arithmetic on SSE2 registers (safe intrinsics) for the AND kernels.
//! * [`engine`]: batch garbling/evaluation, input encoding, output re-masking mod `P`.
//! * [`protocol`]: the two-party offline/online protocol over [`crate::net::Channel`].

pub mod accel;
pub mod backend;
pub mod circuit;
pub mod engine;
pub mod garble;
pub mod hash;
#[cfg(target_arch = "x86_64")]
mod kernels;
#[cfg(target_arch = "x86_64")]
mod kernels512;
pub mod protocol;
pub mod simd;

pub use backend::{Backend, Bit, CountingBackend, PlainBackend};
pub use circuit::{ActivationKind, CircuitSpec};

use thiserror::Error;

/// Which garbling scheme tables are made with.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Scheme {
    /// Zahur–Rosulek–Evans 2015: 2 blocks (256 bits) per AND.
    #[default]
    HalfGates,
    /// Rosulek–Roy 2021: 3 half-blocks plus 5 control bits (197 bits) per AND.
    ThreeHalves,
}

impl Scheme {
    /// Stable one-byte code for messages.
    pub fn code(self) -> u8 {
        match self {
            Scheme::HalfGates => 0,
            Scheme::ThreeHalves => 1,
        }
    }

    /// Inverse of [`Scheme::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Scheme::HalfGates),
            1 => Some(Scheme::ThreeHalves),
            _ => None,
        }
    }

    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::HalfGates => "half-gates",
            Scheme::ThreeHalves => "three-halves",
        }
    }

    /// 64-bit table words per AND gate.
    pub fn words_per_and(self) -> usize {
        match self {
            Scheme::HalfGates => 4,
            Scheme::ThreeHalves => 3,
        }
    }

    /// Control bits per AND gate (bit-packed on the wire).
    pub fn control_bits_per_and(self) -> usize {
        match self {
            Scheme::HalfGates => 0,
            Scheme::ThreeHalves => 5,
        }
    }

    /// Bytes of garbled tables for `ands` AND gates, as sent.
    pub fn table_bytes(self, ands: usize) -> usize {
        8 * self.words_per_and() * ands + (self.control_bits_per_and() * ands).div_ceil(8)
    }
}

impl std::str::FromStr for Scheme {
    type Err = GcError;
    fn from_str(s: &str) -> Result<Self, GcError> {
        match s {
            "half-gates" | "halfgates" => Ok(Scheme::HalfGates),
            "three-halves" | "threehalves" => Ok(Scheme::ThreeHalves),
            other => Err(GcError::Parameters {
                reason: format!("unknown garbling scheme {other:?} (half-gates | three-halves)"),
            }),
        }
    }
}

/// Errors of garbling, evaluation and the GC protocol.
#[derive(Debug, Error)]
pub enum GcError {
    /// Parameters are unusable.
    #[error("invalid GC parameters: {reason}")]
    Parameters {
        /// Why they were refused.
        reason: String,
    },
    /// A buffer of labels, tables, decoding values or inputs has the wrong length.
    #[error("{site}: {what} has {got} {unit}, expected {expected}")]
    Length {
        /// The activation site (layer) being processed.
        site: String,
        /// Which buffer.
        what: &'static str,
        /// Expected count.
        expected: usize,
        /// Received count.
        got: usize,
        /// Unit of the counts (bytes, labels, …).
        unit: &'static str,
    },
    /// An input value is out of range.
    #[error("{site}: {what} value {value} at index {index} exceeds {max}")]
    Range {
        /// The activation site.
        site: String,
        /// Which input.
        what: &'static str,
        /// Offending index.
        index: usize,
        /// Offending value.
        value: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A message that does not fit the protocol state.
    #[error("{site}: unexpected {got} message, expected {expected}")]
    Unexpected {
        /// The activation site.
        site: String,
        /// What arrived.
        got: &'static str,
        /// What the protocol waited for.
        expected: &'static str,
    },
    /// The channel failed.
    #[error("{site}: {source}")]
    Net {
        /// The activation site.
        site: String,
        /// The transport error.
        #[source]
        source: crate::net::NetError,
    },
    /// Offline material on disk is unreadable or does not fit the plan.
    #[error("{file}: at byte offset {offset}: {reason}")]
    Store {
        /// The file.
        file: String,
        /// Byte offset.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A worker thread of the session stopped without a result.
    #[error("{site}: worker thread failed: {reason}")]
    Worker {
        /// The activation site.
        site: String,
        /// What the runtime reported.
        reason: String,
    },
    /// Oblivious transfer failed.
    #[error("{site}: {source}")]
    Ot {
        /// The activation site.
        site: String,
        /// The OT error.
        #[source]
        source: crate::ot::OtError,
    },
}
