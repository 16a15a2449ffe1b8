//! Op level of the CPU reference: one layer's forward and backward, stateless.
//! Written for clarity, not speed; every other backend is judged against it.

use crate::config::{AiecConfig, InputDims};
use crate::counters::Counters;
use crate::cpu::float::Float;
use crate::cpu::loss::LossScales;
use crate::cpu::parts;
use crate::error::{AiecError, Result};

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

/// Gradients of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<F> {
    /// Shape of `x`.
    pub dx: Vec<F>,
    /// `[K, C]`; all zero for a forward without targets.
    pub dw: Vec<F>,
}

/// Checks the targets against `B` and `K`; returns them as indices.
pub fn check_targets(targets: &[i64], batch: usize, classes: usize) -> Result<Vec<usize>> {
    if targets.len() != batch {
        return Err(AiecError::TargetCountMismatch { batch, got: targets.len() });
    }
    targets
        .iter()
        .enumerate()
        .map(|(index, &value)| {
            if value >= 0 && (value as u64) < classes as u64 {
                Ok(value as usize)
            } else {
                Err(AiecError::TargetOutOfRange { index, value, classes })
            }
        })
        .collect()
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

/// `argmax` with the spec's rules: the lowest index among equal maxima, and a
/// NaN counts as larger than any number (so the first NaN wins).
pub fn argmax<F: Float>(row: &[F]) -> usize {
    let mut best = 0;
    for k in 1..row.len() {
        let (z, b) = (row[k], row[best]);
        if (z.is_nan() && !b.is_nan()) || z > b {
            best = k;
        }
    }
    best
}

/// `logsumexp(z) - z[t]`, stable.
pub fn cross_entropy<F: Float>(row: &[F], t: usize) -> F {
    let m = row.iter().copied().fold(row[0], |a, z| if z > a || z.is_nan() { z } else { a });
    let sum = row.iter().fold(F::ZERO, |s, &z| s + (z - m).exp());
    m + sum.ln() - row[t]
}

/// `softmax(z)`, stable.
pub fn softmax<F: Float>(row: &[F]) -> Vec<F> {
    let m = row.iter().copied().fold(row[0], |a, z| if z > a || z.is_nan() { z } else { a });
    let e: Vec<F> = row.iter().map(|&z| (z - m).exp()).collect();
    let sum = e.iter().fold(F::ZERO, |s, &v| s + v);
    e.into_iter().map(|v| v / sum).collect()
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
    let mut logits = vec![F::ZERO; b_n * k_n];
    parts::logits(&v, w, b_n, c_n, k_n, &mut logits);

    // 5. Activation-counting unit, on update steps, for correct samples only.
    if update {
        let Counters { act, inh, total, .. } = counters;
        parts::count(&v, &logits, &targets, c_n, k_n, act, inh, total);
    }

    // 6. Consensus gatekeeping unit, with the counters after step 5.
    let mut mask = vec![0u8; b_n * c_n];
    let (gate_sum_sq, gate_count) =
        parts::gate(&v, w, &targets, c_n, &counters.act, &counters.inh, &mut mask);

    let aux = AuxRecord { targets, classes: k_n, v, logits, mask, gate_sum_sq, gate_count, updated: update };
    Ok(ForwardRecord { dims: plan, y, keep, aux: Some(aux) })
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
    let plan = &record.dims;
    if dy.len() != plan.len() {
        return Err(AiecError::LengthMismatch { what: "dy", expected: plan.len(), got: dy.len() });
    }
    let kc = cfg.classes() * cfg.channels();
    if w.len() != kc {
        return Err(AiecError::LengthMismatch { what: "W [K, C]", expected: kc, got: w.len() });
    }
    if plan.channels != cfg.channels() {
        return Err(AiecError::LengthMismatch {
            what: "record channels C",
            expected: cfg.channels(),
            got: plan.channels,
        });
    }
    let mut dw = vec![F::ZERO; kc];
    let mut dy_total = dy.to_vec();

    if let Some(aux) = &record.aux {
        let (b_n, c_n, k_n) = (plan.batch, plan.channels, cfg.classes());
        if aux.classes != k_n {
            return Err(AiecError::LengthMismatch {
                what: "record classes K",
                expected: k_n,
                got: aux.classes,
            });
        }
        // g = softmax - onehot; dlogits = aux_scale * g; dv, dW.
        let (mut ce, mut g) = (vec![F::ZERO; b_n], vec![F::ZERO; b_n * k_n]);
        parts::row_losses(&aux.logits, &aux.targets, k_n, &mut ce, &mut g);
        let mut dv = vec![F::ZERO; b_n * c_n];
        let rows = parts::RowScale::Uniform(scales.aux_scale);
        parts::dv_dw(&g, &aux.v, &aux.mask, w, b_n, c_n, k_n, rows, scales.gate_scale, &mut dv, &mut dw);
        // dy_total = dy + unpool(dv).
        parts::unpool_add(plan, &dv, &mut dy_total);
    }

    let mut dx = vec![F::ZERO; dy_total.len()];
    parts::pass_gradient(&dy_total, &record.keep, &mut dx);
    Ok(Gradients { dx, dw })
}
