//! The crate's one error type. Every variant carries the offending values, so a
//! message alone says what was wrong; no public function panics on bad input.

use std::fmt;

use crate::dtype::DType;
use crate::pool::Pool;

/// Everything that can go wrong in `aiec`, from a bad shape to a missing driver.
// The fields are the offending values, named for what they hold; each variant's
// doc says what went wrong.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum AiecError {
    /// `tau` is negative, NaN or infinite (in `f64`, or once rounded to the
    /// kernels' `f32`, e.g. `1e39`).
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
    /// A backward was handed loss scales combined from other records (another
    /// batch, or layers this record was not among): their factors do not
    /// belong to this record.
    ForeignScales { record: u64, batch: usize, scales_batch: usize, scales_records: Vec<u64> },
    /// A shape whose element count does not fit in `usize`, or whose size in
    /// bytes no allocation can hold (more than `isize::MAX`).
    ShapeOverflow { dims: Vec<usize> },
    /// Memory for `what` could not be allocated (host memory, or the simulator's
    /// device memory; a CUDA allocation that fails is [`AiecError::Driver`]).
    OutOfMemory { what: String, bytes: usize },
    /// A tensor has another element type than the operation needs.
    DTypeMismatch { what: &'static str, expected: DType, got: DType },
    /// Tensors of one operation live on different devices.
    DeviceMismatch { what: &'static str, expected: String, got: String },
    /// A view's address is not aligned to its element size (or is null with elements).
    Misaligned { what: &'static str, address: u64, align: usize },
    /// Two buffers of one operation overlap where they may not (address, bytes).
    Overlap { what: &'static str, other: &'static str, at: (u64, usize), other_at: (u64, usize) },
    /// The operation needs something this record or device does not have.
    Unsupported { what: String },
    /// No usable CUDA driver or GPU: says what is missing and how to get it.
    CudaUnavailable { reason: String, hint: &'static str },
    /// The NVRTC library could not be loaded.
    NvrtcUnavailable { reason: String, hint: &'static str },
    /// NCCL (feature `nccl`) could not be loaded, or the device is not a CUDA one.
    NcclUnavailable { reason: String, hint: &'static str },
    /// NVRTC rejected a kernel; carries the compiler log.
    NvrtcCompile { file: String, target: String, log: String },
    /// A CUDA driver call failed.
    Driver { call: &'static str, message: String },
    /// The CPU simulator reported a failed launch (deadlock, bad configuration...).
    Sim { kernel: String, code: i32, message: String },
}

impl fmt::Display for AiecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use AiecError::*;
        match self {
            InvalidTau { tau } => {
                write!(f, "tau must be finite and >= 0, got {tau}")?;
                if tau.is_finite() && !(*tau as f32).is_finite() {
                    write!(f, ", which is infinite as the kernels' f32")?;
                }
                Ok(())
            }
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
            ForeignScales { record, batch, scales_batch, scales_records } => write!(
                f,
                "the loss scales were combined from records {scales_records:?} of B = {scales_batch}, \
                 not from this backward's record {record} of B = {batch}: pass the scales of the \
                 combine this record took part in"
            ),
            ShapeOverflow { dims } => {
                write!(f, "shape {dims:?} is larger than any allocation can hold (elements or bytes)")
            }
            OutOfMemory { what, bytes } => write!(f, "could not allocate {bytes} bytes for {what}"),
            DTypeMismatch { what, expected, got } => write!(f, "{what} is {got}, expected {expected}"),
            DeviceMismatch { what, expected, got } => write!(f, "{what} is on {got}, expected {expected}"),
            Misaligned { what, address, align } => {
                write!(f, "{what} at address {address:#x} is not aligned to {align} bytes (or is null)")
            }
            Overlap { what, other, at, other_at } => write!(
                f,
                "{what} ({} bytes at {:#x}) overlaps {other} ({} bytes at {:#x})",
                at.1, at.0, other_at.1, other_at.0
            ),
            Unsupported { what } => write!(f, "not supported: {what}"),
            CudaUnavailable { reason, hint } => write!(f, "CUDA is not available: {reason}. {hint}"),
            NvrtcUnavailable { reason, hint } => write!(f, "NVRTC is not available: {reason}. {hint}"),
            NcclUnavailable { reason, hint } => write!(f, "NCCL is not available: {reason}; {hint}"),
            NvrtcCompile { file, target, log } => {
                write!(f, "NVRTC failed to compile {file} for {target}:\n{log}")
            }
            Driver { call, message } => write!(f, "CUDA driver call {call} failed: {message}"),
            Sim { kernel, code, message } => {
                write!(f, "simulated launch of {kernel} failed (code {code}): {message}")
            }
        }
    }
}

impl std::error::Error for AiecError {}

/// `Result` with [`AiecError`].
pub type Result<T> = std::result::Result<T, AiecError>;
