//! The crate's one error type. Every variant carries the offending values, so a
//! message alone says what was wrong; no public function panics on bad input.

use std::fmt;

use crate::config::Pool;

/// Everything that can go wrong in `aiec`, from a bad shape to a missing driver.
#[derive(Debug, Clone, PartialEq)]
pub enum AiecError {
    /// `tau` is negative, NaN or infinite.
    InvalidTau { tau: f64 },
    /// `update_interval` must be at least 1.
    ZeroUpdateInterval,
    /// A loss coefficient is negative, NaN or infinite.
    InvalidCoefficient { name: &'static str, value: f64 },
    /// A dimension that must be at least 1 is 0 (`C`, `K`, `T`, `H*W`).
    EmptyDimension { what: &'static str, dims: Vec<usize> },
    /// The input has the wrong number of dimensions for its pooling mode.
    RankMismatch { pool: Pool, expected: usize, dims: Vec<usize> },
    /// The input's channel dimension differs from the layer's `C`.
    ChannelMismatch { pool: Pool, expected: usize, got: usize, dims: Vec<usize> },
    /// A buffer's length differs from what its shape (or the layer) implies.
    LengthMismatch { what: &'static str, expected: usize, got: usize },
    /// The number of targets differs from the batch size `B`.
    TargetCountMismatch { batch: usize, got: usize },
    /// A target lies outside `0..K`.
    TargetOutOfRange { index: usize, value: i64, classes: usize },
    /// Two tensors that must have the same shape do not.
    ShapeMismatch { what: &'static str, expected: Vec<usize>, got: Vec<usize> },
    /// Layers combined in one loss disagree (batch sizes, or records without targets).
    LayerMismatch { layer: usize, reason: String },
    /// A shape whose element count does not fit in `usize`.
    ShapeOverflow { dims: Vec<usize> },
}

impl fmt::Display for AiecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use AiecError::*;
        match self {
            InvalidTau { tau } => write!(f, "tau must be finite and >= 0, got {tau}"),
            ZeroUpdateInterval => write!(f, "update_interval must be >= 1, got 0"),
            InvalidCoefficient { name, value } => {
                write!(f, "{name} must be finite and >= 0, got {value}")
            }
            EmptyDimension { what, dims } => {
                write!(f, "{what} must be at least 1 (shape {dims:?})")
            }
            RankMismatch { pool, expected, dims } => write!(
                f,
                "pooling mode {pool} takes a {expected}-d input {}, got shape {dims:?}",
                pool.layout()
            ),
            ChannelMismatch { pool, expected, got, dims } => write!(
                f,
                "input {dims:?} has {got} channels for pooling mode {pool} (layout {}), the layer has C = {expected}",
                pool.layout()
            ),
            LengthMismatch { what, expected, got } => {
                write!(f, "{what} has {got} elements, expected {expected}")
            }
            TargetCountMismatch { batch, got } => {
                write!(f, "{got} targets given for a batch of B = {batch}")
            }
            TargetOutOfRange { index, value, classes } => write!(
                f,
                "target {index} is {value}, outside 0..{classes} (K = {classes})"
            ),
            ShapeMismatch { what, expected, got } => {
                write!(f, "{what} has shape {got:?}, expected {expected:?}")
            }
            LayerMismatch { layer, reason } => write!(f, "layer {layer}: {reason}"),
            ShapeOverflow { dims } => write!(f, "shape {dims:?} has more elements than fit in usize"),
        }
    }
}

impl std::error::Error for AiecError {}

/// `Result` with [`AiecError`].
pub type Result<T> = std::result::Result<T, AiecError>;
