//! The scales a layer's backward takes from the loss level: what the combined
//! losses ([`crate::cpu::combine`], `gpu::combine`) hand each layer, or what a
//! caller computed itself.

use crate::cpu::float::Float;
use crate::error::Result;
use crate::origin::{RecordId, ScalesOrigin};

/// What each layer's backward needs from the combined losses, and, when a
/// combine made them, which records they belong to (a backward refuses them
/// for any other record: [`crate::AiecError::ForeignScales`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LossScales<F> {
    /// `aux_coef / (L * B)` (0 when `L * B == 0`): `dlogits = aux_scale * (softmax - onehot)`.
    pub aux_scale: F,
    /// `2 * gate_coef / sum_l N_l` (0 when that sum is 0): `dv += gate_scale * v * mask`.
    pub gate_scale: F,
    origin: Option<ScalesOrigin>,
}

impl<F: Float> LossScales<F> {
    /// Scales that add nothing: the backward of the threshold plus whatever `dy` carries.
    pub fn zero() -> Self {
        Self::unbound(F::ZERO, F::ZERO)
    }

    /// Scales a caller computed itself (e.g. handed back by an autograd
    /// engine), accepted by the backward of any record.
    pub fn unbound(aux_scale: F, gate_scale: F) -> Self {
        LossScales { aux_scale, gate_scale, origin: None }
    }

    pub(crate) fn combined(aux_scale: F, gate_scale: F, origin: ScalesOrigin) -> Self {
        LossScales { aux_scale, gate_scale, origin: Some(origin) }
    }

    /// The records these scales were combined from (`None`: unbound).
    pub fn origin(&self) -> Option<&ScalesOrigin> {
        self.origin.as_ref()
    }

    /// Errors unless these scales may scale the backward of the record `id`
    /// of `batch` samples: unbound, or combined from it.
    pub fn check_record(&self, id: RecordId, batch: usize) -> Result<()> {
        self.origin.as_ref().map_or(Ok(()), |o| o.check(id, batch))
    }
}
