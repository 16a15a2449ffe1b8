//! The reference's steps, one function each, on plain slices: the threshold,
//! pooling and unpooling, the decision unit, counting, the gate, and the
//! backward's dlogits, dv and dW. [`crate::cpu::op`] composes them into a
//! layer's forward and backward; [`crate::cpu::buffers`] composes them over the
//! caller's buffers for the framework adapters. Each rule of docs/SPEC.md is
//! written once, here.

use crate::config::InputDims;
use crate::cpu::float::Float;

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

/// The threshold unit: `y = x` where NOT `x <= tau` (a NaN is kept), else 0;
/// `keep` is that condition.
pub fn threshold<F: Float>(x: &[F], tau: F, y: &mut [F], keep: &mut [bool]) {
    for ((&v, y), k) in x.iter().zip(y.iter_mut()).zip(keep.iter_mut()) {
        // `!(v <= tau)` keeps NaN: the spec's wording, on purpose.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let kept = !(v <= tau);
        *k = kept;
        *y = if kept { v } else { F::ZERO };
    }
}

/// Pooling: `v [B, C]` from `y` in the layout of `dims`.
pub fn pool<F: Float>(dims: &InputDims, y: &[F], v: &mut [F]) {
    let pooled = dims.pooled_positions();
    for b in 0..dims.batch {
        for c in 0..dims.channels {
            let mut s = F::ZERO;
            for p in 0..pooled {
                s += y[dims.index(b, c, p)];
            }
            v[b * dims.channels + c] = if pooled == 1 { s } else { s / F::from_usize(pooled) };
        }
    }
}

/// `dy_total += unpool(dv)`: `dv [B, C]` to the pooled positions (divided by
/// their number for the averaging modes).
pub fn unpool_add<F: Float>(dims: &InputDims, dv: &[F], dy_total: &mut [F]) {
    let pooled = dims.pooled_positions();
    let div = F::from_usize(pooled);
    for b in 0..dims.batch {
        for c in 0..dims.channels {
            let g = dv[b * dims.channels + c];
            let g = if pooled == 1 { g } else { g / div };
            for p in 0..pooled {
                dy_total[dims.index(b, c, p)] += g;
            }
        }
    }
}

/// The decision unit: `logits [B, K] = v W^T` (`v [B, C]`, `w [K, C]`).
pub fn logits<F: Float>(v: &[F], w: &[F], batch: usize, channels: usize, classes: usize, out: &mut [F]) {
    for b in 0..batch {
        for k in 0..classes {
            let mut s = F::ZERO;
            for c in 0..channels {
                s += v[b * channels + c] * w[k * channels + c];
            }
            out[b * classes + k] = s;
        }
    }
}

/// The counters of one layer as the caller's slices.
pub struct CountersSlices<'a> {
    /// `[K, C]`.
    pub act: &'a mut [i64],
    /// `[K, C]`.
    pub inh: &'a mut [i64],
    /// `[K]`.
    pub total: &'a mut [i64],
}

/// The counting unit on an update step: for every sample predicted correctly
/// (`argmax logits[b] == t[b]`), `act[t, c] += v > 0`, `inh[t, c] += v == 0`
/// (a NaN adds to neither), `total[t] += 1`. `act`, `inh` `[K, C]`, `total` `[K]`.
pub fn count<F: Float>(
    v: &[F],
    logits: &[F],
    targets: &[usize],
    channels: usize,
    classes: usize,
    counters: &mut CountersSlices,
) {
    let CountersSlices { act, inh, total } = counters;
    for (b, &t) in targets.iter().enumerate() {
        if argmax(&logits[b * classes..(b + 1) * classes]) != t {
            continue;
        }
        for c in 0..channels {
            let val = v[b * channels + c];
            if val > F::ZERO {
                act[t * channels + c] += 1;
            } else if val == F::ZERO {
                inh[t * channels + c] += 1;
            }
        }
        total[t] += 1;
    }
}

/// The consensus gate with the counters after counting: `mask [B, C]` (1 where
/// `act[t, c] <= inh[t, c]` and `W[t, c] <= 0`), and `(S, N)`.
pub fn gate<F: Float>(
    v: &[F],
    w: &[F],
    targets: &[usize],
    channels: usize,
    act: &[i64],
    inh: &[i64],
    mask: &mut [u8],
) -> (F, u64) {
    let (mut sum_sq, mut count) = (F::ZERO, 0u64);
    for (b, &t) in targets.iter().enumerate() {
        for c in 0..channels {
            let i = t * channels + c;
            let m = act[i] <= inh[i] && w[i] <= F::ZERO;
            mask[b * channels + c] = m as u8;
            if m {
                let val = v[b * channels + c];
                sum_sq += val * val;
                count += 1;
            }
        }
    }
    (sum_sq, count)
}

/// Per row: the cross-entropy `logsumexp(z) - z[t]` and `g = softmax(z) -
/// onehot(t)` (unscaled), `logits`, `g` `[B, K]`, `ce` `[B]`.
pub fn row_losses<F: Float>(logits: &[F], targets: &[usize], classes: usize, ce: &mut [F], g: &mut [F]) {
    for (b, &t) in targets.iter().enumerate() {
        let row = &logits[b * classes..(b + 1) * classes];
        ce[b] = cross_entropy(row, t);
        let p = softmax(row);
        for k in 0..classes {
            g[b * classes + k] = p[k] - if k == t { F::ONE } else { F::ZERO };
        }
    }
}

/// How the backward scales `g` into `dlogits`: `dlogits[b, k] = a_b * g[b, k]`.
#[derive(Debug, Clone, Copy)]
pub enum RowScale<'a, F> {
    /// The same `a` for every row (`aux_coef / (L * B)`).
    Uniform(F),
    /// `a_b` per row: the gradient of the loss with respect to row `b`'s CE.
    PerRow(&'a [F]),
}

impl<F: Copy> RowScale<'_, F> {
    fn at(&self, b: usize) -> F {
        match self {
            RowScale::Uniform(a) => *a,
            RowScale::PerRow(r) => r[b],
        }
    }
}

/// What the decision and gate part of a backward reads: the saved `g`
/// `[B, K]`, `v` and `mask` `[B, C]`, `W` `[K, C]`, and the loss scales
/// (`dlogits = a_b * g`, the gate term `gate_scale * v * mask`).
#[derive(Debug, Clone, Copy)]
pub struct DvDwIn<'a, F> {
    /// `[B, K]`: `softmax - onehot`.
    pub g: &'a [F],
    /// `[B, C]`.
    pub v: &'a [F],
    /// `[B, C]`.
    pub mask: &'a [u8],
    /// `[K, C]`.
    pub w: &'a [F],
    /// The `a_b` of each row.
    pub rows: RowScale<'a, F>,
    /// The gate loss's scale.
    pub gate_scale: F,
}

/// The decision and gate part of a backward: `dv [B, C]` and `dW [K, C]` from
/// [`DvDwIn`]: `dv = dlogits W + gate_scale * v * mask`, `dW = dlogits^T v`,
/// with `dlogits = a_b * g`.
pub fn dv_dw<F: Float>(
    inp: DvDwIn<F>,
    batch: usize,
    channels: usize,
    classes: usize,
    dv: &mut [F],
    dw: &mut [F],
) {
    let DvDwIn { g, v, mask, w, rows, gate_scale } = inp;
    let dlogits: Vec<F> = (0..batch * classes).map(|i| rows.at(i / classes) * g[i]).collect();
    for b in 0..batch {
        for c in 0..channels {
            let mut s = F::ZERO;
            for k in 0..classes {
                s += dlogits[b * classes + k] * w[k * channels + c];
            }
            if mask[b * channels + c] != 0 {
                s += gate_scale * v[b * channels + c];
            }
            dv[b * channels + c] = s;
        }
    }
    for k in 0..classes {
        for c in 0..channels {
            let mut s = F::ZERO;
            for b in 0..batch {
                s += dlogits[b * classes + k] * v[b * channels + c];
            }
            dw[k * channels + c] = s;
        }
    }
}

/// `dx = dy_total` where `keep`, else 0.
pub fn pass_gradient<F: Float>(dy_total: &[F], keep: &[bool], dx: &mut [F]) {
    for ((d, &g), &k) in dx.iter_mut().zip(dy_total).zip(keep) {
        *d = if k { g } else { F::ZERO };
    }
}
