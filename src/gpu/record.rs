//! What one forward leaves on the device for its loss level and its backward:
//! plain state that [`crate::gpu::op`] writes and [`crate::gpu::loss`]
//! combines.

use std::sync::Arc;

use crate::buffer::Buffer;
use crate::config::InputDims;
use crate::error::{AiecError, Result};
use crate::gpu::dp::CountSum;
use crate::origin::RecordId;
use crate::params::AiecGateStats;
use crate::tensor::Tensor;

/// What one forward leaves on the device for its backward and its losses.
#[derive(Debug)]
pub struct GpuRecord {
    /// The input shape, planned for the layer's pooling mode.
    pub dims: InputDims,
    /// `y` when the forward allocated it ([`crate::gpu::forward`]); `None` when it wrote
    /// into the caller's view ([`crate::gpu::forward_with`]).
    pub y: Option<Tensor>,
    /// The keep bits (1 bit per element: NOT `x <= tau`): what the backward needs of `x`.
    pub keep: Buffer<u32>,
    /// The AIEC part, present on a forward with targets.
    pub aux: Option<GpuAux>,
    /// The ranks the layer summed its counts over, whose masked count the
    /// gate is then normalised by ([`crate::gpu::combine`]).
    pub(crate) ranks: Option<RankSum>,
    /// Which forward this is: the losses remember the records they were
    /// combined from, and a backward refuses another record's.
    pub(crate) id: RecordId,
}

/// A layer's [`CountSum`], carried by its records to the loss level.
#[derive(Clone)]
pub(crate) struct RankSum(pub(crate) Arc<dyn CountSum>);

impl std::fmt::Debug for RankSum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RankSum({} ranks)", self.0.world_size())
    }
}

/// The device buffers of a training forward.
#[derive(Debug)]
pub struct GpuAux {
    /// `[B, C]` pooled activation.
    pub v: Buffer<f32>,
    /// `[B, K]`.
    pub logits: Buffer<f32>,
    /// `[B]` cross-entropy of each row.
    pub ce: Buffer<f32>,
    /// `[B, K]`: `softmax(logits) - onehot(t)`, unscaled.
    pub g: Buffer<f32>,
    /// `[B, C]` consensus mask (0/1).
    pub mask: Buffer<u8>,
    /// `S`, `N` of this layer.
    pub stats: Buffer<AiecGateStats>,
    /// `K`.
    pub classes: usize,
    /// Whether this forward updated the counters.
    pub updated: bool,
}

impl GpuRecord {
    /// Which forward this record is from (unique in the process).
    pub fn id(&self) -> RecordId {
        self.id
    }

    /// `y`, when the forward allocated it.
    pub fn y(&self) -> Result<&Tensor> {
        self.y.as_ref().ok_or_else(|| AiecError::Unsupported {
            what: "this forward wrote y into the caller's view; the record does not hold it".into(),
        })
    }

    /// Bytes kept on the device between forward and backward, `y` (the output)
    /// excluded: the keep bits and the `O(B*C + B*K)` buffers.
    pub fn saved_bytes(&self) -> usize {
        self.keep.byte_len()
            + self.aux.as_ref().map_or(0, |a| {
                a.v.byte_len()
                    + a.logits.byte_len()
                    + a.ce.byte_len()
                    + a.g.byte_len()
                    + a.mask.byte_len()
                    + a.stats.byte_len()
            })
    }
}
