//! Import of PyTorch checkpoints written by the published code of the
//! pruning papers (feature `pth`).
//!
//! [`pth`] reads `torch.save` archives into a [`pth::PyValue`] tree;
//! [`schemes`] maps the three naming schemes — SNL, AutoReP, ReLUPruner —
//! and plain all-ReLU state dicts onto a [`crate::graph::Network`] of a
//! given architecture, so that the result is a model file like any other.
//!
//! The reader needs candle-core's pickle interpreter (and the `zip` crate),
//! which pull in a numeric library the rest of `models` has no use for; they
//! sit behind the `pth` feature, which only the crates that import
//! checkpoints (`pibench` for `pibench import`, `pibench-prune` for
//! `--teacher model.pth`) enable.

pub mod pth;
pub mod schemes;

use thiserror::Error;

use crate::error::ModelError;

/// Everything that can go wrong while importing a checkpoint.
#[derive(Debug, Error)]
pub enum ImportError {
    /// The file cannot be read.
    #[error("{file}: cannot read the file")]
    Io {
        /// File.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The zip archive is not a `torch.save` archive.
    #[error("{file}: {reason}")]
    Archive {
        /// File.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The pickle (`data.pkl`) is malformed or exceeds a limit.
    #[error("{file}: data.pkl byte offset {offset}: {reason}")]
    Pickle {
        /// File.
        file: String,
        /// Byte offset of the opcode in `data.pkl`.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A tensor or its storage is malformed.
    #[error("{file}: tensor {tensor}: {reason}")]
    Tensor {
        /// File.
        file: String,
        /// Tensor name or storage key.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint's layout does not fit the scheme (no state dict, wrong types).
    #[error("{file}: {reason}")]
    Layout {
        /// File.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Tensors that map to nothing in the architecture.
    #[error("{file}: {} tensor(s) map to nothing in {arch}: {}{} (pass --ignore-unknown to import anyway)", tensors.len(), tensors.iter().take(12).cloned().collect::<Vec<_>>().join(", "), if tensors.len() > 12 { ", …" } else { "" })]
    Unknown {
        /// File.
        file: String,
        /// Architecture name.
        arch: String,
        /// The stray tensors.
        tensors: Vec<String>,
    },
    /// A site has no mask in the checkpoint.
    #[error("{file}: no ReLU mask for site {site} ({expected}); a missing mask is not taken to mean all-ReLU")]
    MissingMask {
        /// File.
        file: String,
        /// Site name.
        site: String,
        /// The tensor that should have held it.
        expected: String,
    },
    /// A weight the architecture needs is absent or has the wrong shape.
    #[error("{file}: {reason}")]
    Weights {
        /// File.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The models crate refused the result.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// IEEE half to single precision.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) & 1) as u32;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign << 31,
        (0, f) => {
            let mut e: i32 = -14;
            let mut m = f;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            m &= 0x3ff;
            (sign << 31) | (((e + 127) as u32) << 23) | (m << 13)
        }
        (31, 0) => (sign << 31) | 0x7f80_0000,
        (31, f) => (sign << 31) | 0x7f80_0000 | (f << 13),
        (e, f) => (sign << 31) | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Single to half precision (round to nearest even; overflow to infinity).
pub(crate) fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if frac != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = frac | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let mut r = m >> shift;
        let rem = m & ((1 << shift) - 1);
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (frac >> 13);
    let rem = frac & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        r += 1;
    }
    sign | r as u16
}
