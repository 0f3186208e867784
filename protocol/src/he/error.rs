//! Errors of the homomorphic linear layers.

use thiserror::Error;

use crate::net::NetError;

/// Everything that can go wrong in the HE offline phase.
#[derive(Debug, Error)]
pub enum HeError {
    /// Encryption parameters are invalid or insecure.
    #[error("invalid HE parameters: {reason}")]
    InvalidParams {
        /// Why they were refused.
        reason: String,
    },
    /// SEAL refused an operation.
    #[error("SEAL error while {context}: {message}")]
    Seal {
        /// What was being done.
        context: String,
        /// SEAL's message.
        message: String,
    },
    /// A layer shape cannot be evaluated.
    #[error("invalid shape for layer {layer}: {reason}")]
    InvalidShape {
        /// Layer index or name.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// Tensor data of the wrong length.
    #[error("layer {layer}: {tensor} has {got} elements, expected {expected}")]
    WrongLength {
        /// Layer index or name.
        layer: String,
        /// Which tensor.
        tensor: &'static str,
        /// Elements given.
        got: usize,
        /// Elements expected.
        expected: usize,
    },
    /// A weight exceeds the bound the noise analysis assumes.
    #[error("layer {layer}: weight {index} = {value} exceeds the bound 2^{bound_bits}")]
    WeightTooLarge {
        /// Layer index or name.
        layer: String,
        /// Flat index of the weight.
        index: usize,
        /// Its value.
        value: i64,
        /// The bound, as a power of two.
        bound_bits: u32,
    },
    /// A ciphertext from the peer was rejected before or while deserializing.
    #[error("layer {layer}: ciphertext {index} rejected: {reason}")]
    BadCiphertext {
        /// Layer the ciphertext was for.
        layer: String,
        /// Position in the message.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A message arrived for another layer or with the wrong count.
    #[error("layer {layer}: unexpected message: {reason}")]
    Protocol {
        /// Layer expected.
        layer: String,
        /// What was wrong.
        reason: String,
    },
    /// Offline material on disk is missing or inconsistent.
    #[error("offline store {path}: {reason}")]
    Store {
        /// File concerned.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Transport failure.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// Wraps a SEAL error with context.
pub(crate) fn seal(context: impl Into<String>) -> impl FnOnce(sealy::Error) -> HeError {
    let context = context.into();
    move |e| HeError::Seal {
        context,
        message: e.to_string(),
    }
}
