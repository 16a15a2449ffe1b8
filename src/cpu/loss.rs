//! Loss level of the CPU reference: the aux and gate losses over `L` layers that
//! share one target vector, and the scales each layer's backward needs.

/// Re-exported from [`crate::config`], where it is defined.
pub use crate::config::LossCoefs;
use crate::cpu::float::Float;
use crate::cpu::op::{AuxRecord, ForwardRecord};
use crate::cpu::parts::cross_entropy;
/// Re-exported from [`crate::cpu::scales`], where it is defined.
pub use crate::cpu::scales::LossScales;
use crate::error::{AiecError, Result};
use crate::origin::ScalesOrigin;

/// The combined losses of `L` layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Losses<F> {
    /// Mean over all `L * B` rows of `CE(logits_l[b], t[b])` (0 when there are no rows).
    pub aux: F,
    /// `sum_l S_l / sum_l N_l`, 0 when `sum_l N_l == 0`. Read from a device
    /// in data-parallel training, this rank's share `W S / N` instead (`N` and
    /// `gate_count` over all `W` ranks; [`crate::params::AiecLosses`]).
    pub gate: F,
    /// `sum_l S_l`.
    pub gate_sum_sq: F,
    /// `sum_l N_l`.
    pub gate_count: u64,
    /// `L * B`.
    pub rows: usize,
    /// The coefficients these losses were combined with.
    pub coefs: LossCoefs,
    /// What each layer's backward needs.
    pub scales: LossScales<F>,
}

impl<F: Float> Losses<F> {
    /// `aux_coef * aux + gate_coef * gate`: what AIEC adds to the task loss.
    pub fn objective(&self) -> F {
        F::from_f64(self.coefs.aux_coef) * self.aux + F::from_f64(self.coefs.gate_coef) * self.gate
    }
}

/// Combines the forward records of the `L >= 1` layers that share one target
/// vector. Every record must come from a forward with targets, all of one
/// batch size `B`, with the same targets; the scales remember the records.
pub fn combine<F: Float>(records: &[&ForwardRecord<F>], coefs: LossCoefs) -> Result<Losses<F>> {
    let coefs = LossCoefs::new(coefs.aux_coef, coefs.gate_coef)?;
    let auxes = check_layers(records)?;
    let batch = auxes[0].targets.len();
    let (mut ce_sum, mut rows) = (F::ZERO, 0usize);
    let (mut gate_sum_sq, mut gate_count) = (F::ZERO, 0u64);
    for aux in &auxes {
        let k = aux.classes;
        for (b, &t) in aux.targets.iter().enumerate() {
            ce_sum += cross_entropy(&aux.logits[b * k..(b + 1) * k], t);
        }
        rows += batch;
        gate_sum_sq += aux.gate_sum_sq;
        gate_count += aux.gate_count;
    }
    let aux = if rows == 0 { F::ZERO } else { ce_sum / F::from_usize(rows) };
    let aux_scale = if rows == 0 { F::ZERO } else { F::from_f64(coefs.aux_coef) / F::from_usize(rows) };
    let (gate, gate_scale) = if gate_count == 0 {
        (F::ZERO, F::ZERO)
    } else {
        let n = F::from_f64(gate_count as f64);
        (gate_sum_sq / n, F::from_f64(2.0 * coefs.gate_coef) / n)
    };
    let origin = ScalesOrigin::new(batch, auxes.iter().map(|a| a.id).collect());
    Ok(Losses {
        aux,
        gate,
        gate_sum_sq,
        gate_count,
        rows,
        coefs,
        scales: LossScales::combined(aux_scale, gate_scale, origin),
    })
}

/// The aux parts of `records`, checked: at least one, each from a forward
/// with targets and whole (its lengths and targets fit), all of layer 0's `B`
/// and targets (as `gpu::combine` checks).
fn check_layers<'a, F>(records: &[&'a ForwardRecord<F>]) -> Result<Vec<&'a AuxRecord<F>>> {
    if records.is_empty() {
        return Err(AiecError::LayerMismatch {
            layer: 0,
            reason: "0 layers given, at least 1 is needed".into(),
        });
    }
    let mut auxes: Vec<&AuxRecord<F>> = Vec::with_capacity(records.len());
    for (layer, rec) in records.iter().enumerate() {
        let Some(aux) = &rec.aux else {
            return Err(AiecError::LayerMismatch {
                layer,
                reason: "its forward had no targets, so it has no aux loss".into(),
            });
        };
        aux.check(rec.dims.batch, rec.dims.channels)?;
        if let Some(first) = auxes.first() {
            let batch = first.targets.len();
            if aux.targets.len() != batch {
                return Err(AiecError::LayerMismatch {
                    layer,
                    reason: format!("batch B = {} differs from layer 0's {batch}", aux.targets.len()),
                });
            }
            if aux.targets != first.targets {
                return Err(AiecError::LayerMismatch {
                    layer,
                    reason: "targets differ from layer 0's".into(),
                });
            }
        }
        auxes.push(aux);
    }
    Ok(auxes)
}
