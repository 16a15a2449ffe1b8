//! Op level of the CPU reference: one layer's forward and backward, stateless.
//! Written for clarity, not speed; every other backend is judged against it.

use crate::alloc;
/// Re-exported from [`crate::config`], where it is defined.
pub use crate::config::check_targets;
use crate::config::{checked_len, AiecConfig, InputDims};
use crate::counters::Counters;
use crate::cpu::float::Float;
use crate::cpu::parts;
/// Re-exported from [`crate::cpu::parts`], where they are defined.
pub use crate::cpu::parts::{argmax, cross_entropy, softmax};
use crate::cpu::scales::LossScales;
use crate::error::{AiecError, Result};
use crate::origin::RecordId;

/// What one forward produces and its backward needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRecord<F> {
    /// The input shape, planned for the layer's pooling mode.
    pub dims: InputDims,
    /// `y`, shape of `x`: `x` where NOT `x <= tau`, else 0.
    pub y: Vec<F>,
    /// Shape of `x`: NOT `x <= tau` (true for NaN). The backward's pass-through mask.
    pub keep: Vec<bool>,
    /// The AIEC part, present on a forward with targets.
    pub aux: Option<AuxRecord<F>>,
}

/// The decision, counting and gating units' part of a forward record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuxRecord<F> {
    /// Which forward this is: loss scales remember the records they were
    /// combined from, and a backward refuses another record's.
    pub id: RecordId,
    /// `[B]`, each in `0..K`.
    pub targets: Vec<usize>,
    /// `K`.
    pub classes: usize,
    /// `[B, C]` pooled activation.
    pub v: Vec<F>,
    /// `[B, K]` = `v W^T`.
    pub logits: Vec<F>,
    /// `[B, C]`, 1 where channel `c` is irrelevant to class `t[b]` by consensus.
    pub mask: Vec<u8>,
    /// `S = sum mask * v^2`.
    pub gate_sum_sq: F,
    /// `N = sum mask`.
    pub gate_count: u64,
    /// Whether this forward updated the counters.
    pub updated: bool,
}

impl<F> AuxRecord<F> {
    /// Checks that this part is whole for `batch` samples of `channels`
    /// (its fields are public): the targets, `v`, `logits` and `mask` lengths,
    /// and every target in `0..K`, so that nothing reading it can index out of bounds.
    pub fn check(&self, batch: usize, channels: usize) -> Result<()> {
        if self.targets.len() != batch {
            return Err(AiecError::TargetCountMismatch { batch, got: self.targets.len() });
        }
        if let Some((index, &t)) = self.targets.iter().enumerate().find(|(_, &t)| t >= self.classes) {
            let value = i64::try_from(t).unwrap_or(i64::MAX);
            return Err(AiecError::TargetOutOfRange { index, value, classes: self.classes });
        }
        let bc = checked_len(&[batch, channels])?;
        let bk = checked_len(&[batch, self.classes])?;
        for (what, got, expected) in [
            ("record v [B, C]", self.v.len(), bc),
            ("record mask [B, C]", self.mask.len(), bc),
            ("record logits [B, K]", self.logits.len(), bk),
        ] {
            if got != expected {
                return Err(AiecError::LengthMismatch { what, expected, got });
            }
        }
        Ok(())
    }
}

/// Gradients of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<F> {
    /// Shape of `x`.
    pub dx: Vec<F>,
    /// `[K, C]`; all zero for a forward without targets.
    pub dw: Vec<F>,
}

/// Checks everything [`forward`] takes, before anything is computed or changed.
pub fn check_forward<F>(
    cfg: &AiecConfig,
    x: &[F],
    dims: &[usize],
    w: &[F],
    targets: Option<&[i64]>,
    counters: &Counters,
) -> Result<(InputDims, Option<Vec<usize>>)> {
    let plan = cfg.plan_input(dims)?;
    if x.len() != plan.len() {
        return Err(AiecError::LengthMismatch { what: "x", expected: plan.len(), got: x.len() });
    }
    let kc = cfg.classes() * cfg.channels();
    if w.len() != kc {
        return Err(AiecError::LengthMismatch { what: "W [K, C]", expected: kc, got: w.len() });
    }
    counters.check(cfg.classes(), cfg.channels())?;
    let targets = targets.map(|t| check_targets(t, plan.batch, cfg.classes())).transpose()?;
    Ok((plan, targets))
}

/// One layer's forward.
///
/// * `x`: the layout of `cfg.pool()` with shape `dims`;
/// * `w`: `[K, C]`;
/// * `targets`: `[B]` in `0..K`, or `None` for inference (threshold alone);
/// * `counters`: updated in place when `update` is true and targets are given;
///   the mask is built from the counters *after* that update.
///
/// All input is checked first; on error nothing has changed.
pub fn forward<F: Float>(
    cfg: &AiecConfig,
    x: &[F],
    dims: &[usize],
    w: &[F],
    targets: Option<&[i64]>,
    counters: &mut Counters,
    update: bool,
) -> Result<ForwardRecord<F>> {
    let (plan, targets) = check_forward(cfg, x, dims, w, targets, counters)?;
    let tau = F::from_f64(cfg.tau());

    // 1. Threshold unit.
    let mut y = vec![F::ZERO; x.len()];
    let mut keep = vec![false; x.len()];
    parts::threshold(x, tau, &mut y, &mut keep);

    // 2. Inference stops here.
    let Some(targets) = targets else {
        return Ok(ForwardRecord { dims: plan, y, keep, aux: None });
    };
    let (b_n, c_n, k_n) = (plan.batch, plan.channels, cfg.classes());

    // 3. Pooling; 4. decision-making unit.
    let mut v = vec![F::ZERO; b_n * c_n];
    parts::pool(&plan, &y, &mut v);
    let mut logits = alloc::filled("logits [B, K]", checked_len(&[b_n, k_n])?, F::ZERO)?;
    parts::logits(&v, w, b_n, c_n, k_n, &mut logits);

    // 5. Activation-counting unit, on update steps, for correct samples only.
    if update {
        let Counters { act, inh, total, .. } = counters;
        let mut slices = parts::CountersSlices { act, inh, total };
        parts::count(&v, &logits, &targets, c_n, k_n, &mut slices);
    }

    // 6. Consensus gatekeeping unit, with the counters after step 5.
    let mut mask = vec![0u8; b_n * c_n];
    let (gate_sum_sq, gate_count) =
        parts::gate(&v, w, &targets, c_n, &counters.act, &counters.inh, &mut mask);

    let id = RecordId::next();
    let aux =
        AuxRecord { id, targets, classes: k_n, v, logits, mask, gate_sum_sq, gate_count, updated: update };
    Ok(ForwardRecord { dims: plan, y, keep, aux: Some(aux) })
}

/// Checks that `record` is whole and of this layer (its fields are public):
/// its shape planned as `cfg` plans it, its keep mask of that length, and its
/// aux part of `K` classes and whole ([`AuxRecord::check`]).
pub fn check_record<F>(cfg: &AiecConfig, record: &ForwardRecord<F>) -> Result<()> {
    let plan = cfg.plan_input(&record.dims.dims)?;
    if plan != record.dims {
        return Err(AiecError::ShapeMismatch {
            what: "record dims (B, C, P)",
            expected: vec![plan.batch, plan.channels, plan.positions],
            got: vec![record.dims.batch, record.dims.channels, record.dims.positions],
        });
    }
    if record.keep.len() != plan.len() {
        return Err(AiecError::LengthMismatch {
            what: "record keep",
            expected: plan.len(),
            got: record.keep.len(),
        });
    }
    let Some(aux) = &record.aux else { return Ok(()) };
    if aux.classes != cfg.classes() {
        return Err(AiecError::LengthMismatch {
            what: "record classes K",
            expected: cfg.classes(),
            got: aux.classes,
        });
    }
    aux.check(plan.batch, plan.channels)
}

/// One layer's backward: `dx` and `dW` from the record of its forward, the same
/// `w` (`[K, C]`), `dy` (shape of `x`) and the loss scales of all layers
/// ([`crate::cpu::loss::combine`]). A record without targets back-propagates the
/// threshold alone and gives `dW = 0`.
pub fn backward<F: Float>(
    cfg: &AiecConfig,
    record: &ForwardRecord<F>,
    w: &[F],
    dy: &[F],
    scales: &LossScales<F>,
) -> Result<Gradients<F>> {
    check_record(cfg, record)?;
    let plan = &record.dims;
    if dy.len() != plan.len() {
        return Err(AiecError::LengthMismatch { what: "dy", expected: plan.len(), got: dy.len() });
    }
    let kc = cfg.classes() * cfg.channels();
    if w.len() != kc {
        return Err(AiecError::LengthMismatch { what: "W [K, C]", expected: kc, got: w.len() });
    }
    if let Some(aux) = &record.aux {
        scales.check_record(aux.id, plan.batch)?;
    }
    let mut dw = vec![F::ZERO; kc];
    let mut dy_total = dy.to_vec();

    if let Some(aux) = &record.aux {
        let (b_n, c_n, k_n) = (plan.batch, plan.channels, cfg.classes());
        // g = softmax - onehot; dlogits = aux_scale * g; dv, dW.
        let (mut ce, mut g) = (vec![F::ZERO; b_n], alloc::filled("g [B, K]", b_n * k_n, F::ZERO)?);
        parts::row_losses(&aux.logits, &aux.targets, k_n, &mut ce, &mut g);
        let mut dv = vec![F::ZERO; b_n * c_n];
        let rows = parts::RowScale::Uniform(scales.aux_scale);
        let inp = parts::DvDwIn { g: &g, v: &aux.v, mask: &aux.mask, w, rows, gate_scale: scales.gate_scale };
        parts::dv_dw(inp, b_n, c_n, k_n, &mut dv, &mut dw);
        // dy_total = dy + unpool(dv).
        parts::unpool_add(plan, &dv, &mut dy_total);
    }

    let mut dx = vec![F::ZERO; dy_total.len()];
    parts::pass_gradient(&dy_total, &record.keep, &mut dx);
    Ok(Gradients { dx, dw })
}
