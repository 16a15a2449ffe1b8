//! The aux and gate losses of `L` [`super::Aiec`] layers as nodes of candle's
//! graph: each layer's forward leaves [`Terms`] (`[sum_b CE_b, S]`, a tensor
//! with a backward, and the plain count `N`), and [`combine`] (or [`losses`])
//! builds
//!
//! * `aux = sum_l ce_sum_l / (L * B)` (the mean cross-entropy over the `L * B`
//!   rows),
//! * `gate = sum_l S_l / max(sum_l N_l, 1)` (the spec's normalisation over all
//!   layers together; 0 when no channel is masked),
//!
//! with ordinary candle ops. The caller adds them to the task loss, e.g.
//! [`Losses::paper_objective`]; whatever the loss is then multiplied by
//! reaches the layers' backward through candle's autograd.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::config::LossCoefs;
use crate::error::AiecError;

use super::error::{to_candle, IntoCandle};
use super::Aiec;

/// One layer's contribution to the losses, from one forward with targets.
#[derive(Debug, Clone)]
pub struct Terms {
    pub(crate) tensor: Tensor,
    pub(crate) gate_count: u64,
    pub(crate) targets: Arc<Vec<i64>>,
}

impl Terms {
    /// `[sum_b CE_b, S]` (f32; f64 for an f64 input), differentiable: its
    /// backward gives the layer's `dx` and `dW` for these two numbers.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }
    /// `N`, the number of masked `(b, c)` entries (not differentiated).
    pub fn gate_count(&self) -> u64 {
        self.gate_count
    }
    /// `B`.
    pub fn batch(&self) -> usize {
        self.targets.len()
    }
}

/// The combined losses of `L` layers sharing one target vector.
#[derive(Debug, Clone)]
pub struct Losses {
    /// Scalar: the mean cross-entropy of the decision units over the `L * B` rows.
    pub aux: Tensor,
    /// Scalar: `sum_l S_l / sum_l N_l`, 0 when nothing is masked.
    pub gate: Tensor,
    /// `sum_l N_l`.
    pub gate_count: u64,
    /// `L * B`.
    pub rows: usize,
}

/// The values of [`Losses`], for logging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossValues {
    /// The aux loss.
    pub aux: f64,
    /// The gate loss.
    pub gate: f64,
    /// `sum_l N_l`.
    pub gate_count: u64,
    /// `L * B`.
    pub rows: usize,
}

impl Losses {
    /// `aux_coef * aux + gate_coef * gate` (coefficients checked: finite, `>= 0`),
    /// to add to the task loss.
    pub fn objective(&self, coefs: LossCoefs) -> candle_core::Result<Tensor> {
        let coefs = LossCoefs::new(coefs.aux_coef, coefs.gate_coef).candle()?;
        self.aux.affine(coefs.aux_coef, 0.0)? + self.gate.affine(coefs.gate_coef, 0.0)?
    }

    /// [`Losses::objective`] with the paper's coefficients (1 and 200).
    pub fn paper_objective(&self) -> candle_core::Result<Tensor> {
        self.objective(LossCoefs::PAPER)
    }

    /// Reads the two values (a device-to-host copy on a GPU; nothing on the CPU).
    pub fn values(&self) -> candle_core::Result<LossValues> {
        let read = |t: &Tensor| t.to_dtype(DType::F64)?.to_scalar::<f64>();
        Ok(LossValues {
            aux: read(&self.aux)?,
            gate: read(&self.gate)?,
            gate_count: self.gate_count,
            rows: self.rows,
        })
    }
}

fn mismatch(layer: usize, reason: String) -> candle_core::Error {
    to_candle(AiecError::LayerMismatch { layer, reason })
}

/// Combines the terms of the `L` layers (at least one) whose forwards shared
/// one target vector (checked).
pub fn combine(terms: &[&Terms]) -> candle_core::Result<Losses> {
    let Some(first) = terms.first() else {
        return Err(mismatch(0, "0 layers given, at least 1 is needed".into()));
    };
    for (layer, t) in terms.iter().enumerate().skip(1) {
        if t.targets != first.targets {
            return Err(mismatch(
                layer,
                format!("targets differ from layer 0's (B = {} vs {})", t.batch(), first.batch()),
            ));
        }
        if t.tensor.dtype() != first.tensor.dtype() {
            return Err(mismatch(
                layer,
                format!("terms of dtype {:?}, layer 0's are {:?}", t.tensor.dtype(), first.tensor.dtype()),
            ));
        }
    }
    let rows = terms.len() * first.batch();
    let gate_count: u64 = terms.iter().map(|t| t.gate_count).sum();
    let mut sum = first.tensor.clone();
    for t in &terms[1..] {
        sum = (sum + &t.tensor)?;
    }
    let ce_sum = sum.narrow(0, 0, 1)?.squeeze(0)?;
    let s_sum = sum.narrow(0, 1, 1)?.squeeze(0)?;
    let aux = ce_sum.affine(1.0 / rows.max(1) as f64, 0.0)?;
    let gate = s_sum.affine(1.0 / gate_count.max(1) as f64, 0.0)?;
    Ok(Losses { aux, gate, gate_count, rows })
}

/// [`combine`] of the terms each layer's last forward left (every one must
/// have had targets).
pub fn losses(layers: &[&Aiec]) -> candle_core::Result<Losses> {
    let mut terms = Vec::with_capacity(layers.len());
    for (layer, l) in layers.iter().enumerate() {
        match l.terms() {
            Some(t) => terms.push(t),
            None => {
                return Err(mismatch(layer, "its last forward had no targets, so it has no aux loss".into()))
            }
        }
    }
    combine(&terms.iter().collect::<Vec<_>>())
}
