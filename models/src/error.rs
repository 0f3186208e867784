//! The crate's error type.

use thiserror::Error;

use crate::fixed::FixedError;

/// Everything that can go wrong while building, loading, counting or
/// evaluating a network. Each variant names what was wrong and where.
#[derive(Debug, Error)]
pub enum ModelError {
    /// An architecture name or parameter is not understood.
    #[error("unknown architecture {name:?}: {expected}")]
    UnknownArch {
        /// What was asked for.
        name: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A size (channels, spatial size, depth, width, class count) is zero or otherwise unusable.
    #[error("invalid size for {what}: {value} ({expected})")]
    InvalidSize {
        /// Which size.
        what: String,
        /// The offending value.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A graph is malformed (bad input reference, shape mismatch between ops).
    #[error("malformed graph at node {node} ({name}): {reason}")]
    Graph {
        /// Index of the node.
        node: usize,
        /// Name of the node.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has the wrong shape.
    #[error("{file}: tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// File (or `<memory>`).
        file: String,
        /// Tensor name.
        tensor: String,
        /// Shape found.
        found: Vec<usize>,
        /// Shape expected.
        expected: Vec<usize>,
    },
    /// A required tensor is absent.
    #[error("{file}: missing tensor {tensor:?} ({expected})")]
    MissingTensor {
        /// File.
        file: String,
        /// Tensor name.
        tensor: String,
        /// What it should have held.
        expected: String,
    },
    /// A tensor has an unsupported element type or invalid values.
    #[error("{file}: tensor {tensor:?}: {reason}")]
    TensorData {
        /// File.
        file: String,
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A mask does not fit its site.
    #[error("site {site:?}: {reason}")]
    Site {
        /// Site name.
        site: String,
        /// What is wrong.
        reason: String,
    },
    /// The model file cannot be parsed.
    #[error("{file}: malformed model file: {reason}")]
    Format {
        /// File.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{file}: cannot read or write the file")]
    Io {
        /// File.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input given to a forward pass has the wrong size.
    #[error("input has {found} values, the network expects {expected} ({shape})")]
    InputSize {
        /// Values given.
        found: usize,
        /// Values expected.
        expected: usize,
        /// Expected shape, as text.
        shape: String,
    },
    /// A fixed-point value leaves the field's safe range.
    #[error("fixed-point overflow at node {node} ({name}): magnitude up to 2^{bits} exceeds the safe range 2^{limit_bits}")]
    Overflow {
        /// Node index.
        node: usize,
        /// Node name.
        name: String,
        /// Bits of the offending magnitude (bound or value).
        bits: u32,
        /// Bits of the safe range.
        limit_bits: u32,
    },
    /// Encoding a weight or input failed.
    #[error("fixed-point encoding: {0}")]
    Fixed(#[from] FixedError),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
