//! Finite-difference gradient check of the complete AIEC loss, in `f64`, and the
//! random input builder that tests, examples and benches share.
//!
//! The loss checked is the one the golden cases use:
//! `sum_l <y_l, dy_l> + aux_coef * aux + gate_coef * gate`, whose gradient with
//! respect to `x_l` and `W_l` is exactly what `backward` returns.

use crate::config::LossCoefs;
use crate::config::{AiecConfig, Pool};
use crate::counters::Counters;
use crate::cpu::loss::combine;
use crate::cpu::op::{backward, forward, Gradients};
use crate::error::Result;
use crate::init::SplitMix64;

/// One layer's inputs in a multi-layer case.
#[derive(Debug, Clone)]
pub struct LayerCase {
    /// Input, layout of the pooling mode.
    pub x: Vec<f64>,
    /// `[K, C]`.
    pub w: Vec<f64>,
    /// Counters before the forward.
    pub counters: Counters,
    /// Gradient arriving from above, shape of `x`.
    pub dy: Vec<f64>,
}

/// `L` layers of the same configuration sharing one target vector.
#[derive(Debug, Clone)]
pub struct Case {
    /// The layers' configuration.
    pub cfg: AiecConfig,
    /// Input shape (same for all layers).
    pub dims: Vec<usize>,
    /// `[B]`.
    pub targets: Vec<i64>,
    /// Loss coefficients.
    pub coefs: LossCoefs,
    /// Whether the forward updates the counters.
    pub update: bool,
    /// The layers.
    pub layers: Vec<LayerCase>,
}

/// Shape of a random case: `B`, `C`, `K`, positions `P` (`T` or `H*W` split as
/// `H = P`, `W = 1`... see [`dims_for`]) and the number of layers.
#[derive(Debug, Clone, Copy)]
pub struct CaseShape {
    /// Batch size.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Classes.
    pub classes: usize,
    /// Tokens for token modes; `(H, W)` for `avg_hw` is `(positions, 2)`.
    pub positions: usize,
    /// Layers sharing the targets.
    pub layers: usize,
}

/// The input shape of `pool` for `B`, `C` and `positions` (`avg_hw` uses `H = positions, W = 2`).
pub fn dims_for(pool: Pool, batch: usize, channels: usize, positions: usize) -> Vec<usize> {
    match pool {
        Pool::Token | Pool::AvgToken => vec![batch, positions, channels],
        Pool::AvgHw => vec![batch, channels, positions, 2],
        Pool::None => vec![batch, channels],
    }
}

/// A uniform value in `[lo, hi)` at least `gap` away from `avoid`.
fn away_from(rng: &mut SplitMix64, lo: f64, hi: f64, avoid: f64, gap: f64) -> f64 {
    loop {
        let v = rng.uniform(lo, hi);
        if (v - avoid).abs() >= gap {
            return v;
        }
    }
}

/// A random case: `x` in `[-1, 1.5)` kept at least `1e-3` from `tau`, `W` in
/// `[-0.6, 0.6)` kept `1e-3` from 0 (so that the mask cannot flip under a
/// finite-difference step), counters that leave about half the channels
/// inactive, and random targets and `dy`.
pub fn random_case(seed: u64, cfg: AiecConfig, shape: CaseShape, coefs: LossCoefs, update: bool) -> Case {
    let mut rng = SplitMix64::new(seed);
    let dims = dims_for(cfg.pool(), shape.batch, cfg.channels(), shape.positions);
    let n: usize = dims.iter().product();
    let (k, c) = (cfg.classes(), cfg.channels());
    let targets = (0..shape.batch).map(|_| (rng.next_u64() % k as u64) as i64).collect();
    let layers = (0..shape.layers)
        .map(|_| {
            let x = (0..n).map(|_| away_from(&mut rng, -1.0, 1.5, cfg.tau(), 1e-3)).collect();
            let w = (0..k * c).map(|_| away_from(&mut rng, -0.6, 0.6, 0.0, 1e-3)).collect();
            let act: Vec<i64> = (0..k * c).map(|_| (rng.next_u64() % 4) as i64).collect();
            let inh: Vec<i64> = (0..k * c).map(|_| (rng.next_u64() % 4) as i64).collect();
            let total = (0..k).map(|_| 1 + (rng.next_u64() % 6) as i64).collect();
            let counters = Counters::from_parts(k, c, act, inh, total).expect("lengths match");
            let dy = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            LayerCase { x, w, counters, dy }
        })
        .collect();
    Case { cfg, dims, targets, coefs, update, layers }
}

/// The loss of `case`: `sum_l <y_l, dy_l> + aux_coef * aux + gate_coef * gate`.
/// Each layer starts from its own counters, so calls are independent.
pub fn loss(case: &Case) -> Result<f64> {
    let mut records = Vec::with_capacity(case.layers.len());
    let mut inner = 0.0;
    for l in &case.layers {
        let mut counters = l.counters.clone();
        let rec =
            forward(&case.cfg, &l.x, &case.dims, &l.w, Some(&case.targets), &mut counters, case.update)?;
        inner += rec.y.iter().zip(&l.dy).map(|(a, b)| a * b).sum::<f64>();
        records.push(rec);
    }
    let refs: Vec<_> = records.iter().collect();
    Ok(inner + combine(&refs, case.coefs)?.objective())
}

/// The analytic gradients of [`loss`] for every layer.
pub fn analytic(case: &Case) -> Result<Vec<Gradients<f64>>> {
    let mut records = Vec::with_capacity(case.layers.len());
    for l in &case.layers {
        let mut counters = l.counters.clone();
        records.push(forward(
            &case.cfg,
            &l.x,
            &case.dims,
            &l.w,
            Some(&case.targets),
            &mut counters,
            case.update,
        )?);
    }
    let refs: Vec<_> = records.iter().collect();
    let losses = combine(&refs, case.coefs)?;
    case.layers
        .iter()
        .zip(&records)
        .map(|(l, rec)| backward(&case.cfg, rec, &l.w, &l.dy, &losses.scales))
        .collect()
}

/// Largest errors found by [`check`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GradReport {
    /// Max relative error of `dx` over all layers.
    pub dx: f64,
    /// Max relative error of `dW` over all layers.
    pub dw: f64,
}

impl GradReport {
    /// The larger of the two errors.
    pub fn max(&self) -> f64 {
        self.dx.max(self.dw)
    }
}

/// Relative error of `analytic` against `numeric`: per element
/// `|a - n| / max(|n|, 1e-3 * max_i |n_i|, 1e-12)`, maximised.
pub fn rel_error(analytic: &[f64], numeric: &[f64]) -> f64 {
    let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    analytic
        .iter()
        .zip(numeric)
        .map(|(a, n)| (a - n).abs() / n.abs().max(1e-3 * scale).max(1e-12))
        .fold(0.0, f64::max)
}

/// Central-difference gradients of [`loss`] with step `h`, for every element of
/// every layer's `x` and `W`.
pub fn numeric(case: &Case, h: f64) -> Result<Vec<Gradients<f64>>> {
    let mut probe = case.clone();
    let mut out = Vec::with_capacity(case.layers.len());
    for li in 0..case.layers.len() {
        let mut dx = vec![0.0; case.layers[li].x.len()];
        for (i, slot) in dx.iter_mut().enumerate() {
            *slot = central(&mut probe, h, |c| &mut c.layers[li].x[i])?;
        }
        let mut dw = vec![0.0; case.layers[li].w.len()];
        for (i, slot) in dw.iter_mut().enumerate() {
            *slot = central(&mut probe, h, |c| &mut c.layers[li].w[i])?;
        }
        out.push(Gradients { dx, dw });
    }
    Ok(out)
}

/// Compares [`analytic`] with [`numeric`] (step `h`) and returns the largest
/// relative errors.
pub fn check(case: &Case, h: f64) -> Result<GradReport> {
    let grads = analytic(case)?;
    let nums = numeric(case, h)?;
    let mut report = GradReport::default();
    for (g, n) in grads.iter().zip(&nums) {
        report.dx = report.dx.max(rel_error(&g.dx, &n.dx));
        report.dw = report.dw.max(rel_error(&g.dw, &n.dw));
    }
    Ok(report)
}

fn central(probe: &mut Case, h: f64, at: impl Fn(&mut Case) -> &mut f64) -> Result<f64> {
    let x0 = *at(probe);
    *at(probe) = x0 + h;
    let up = loss(probe)?;
    *at(probe) = x0 - h;
    let down = loss(probe)?;
    *at(probe) = x0;
    Ok((up - down) / (2.0 * h))
}
