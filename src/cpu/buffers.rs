//! The CPU reference on the caller's buffers, mirroring `gpu::fused`
//! step for step: what a framework adapter calls on its CPU tensors (PyTorch's
//! float32 and float64, candle's), with the same saved state as the kernels
//! (the keep bits packed the same way, `v`, `g`, `mask`). Every rule comes
//! from [`crate::cpu::parts`]; this module only checks lengths and packs bits.

use crate::config::{check_targets, AiecConfig, DwMode, InputDims};
use crate::cpu::float::Float;
use crate::cpu::parts::{self, DvDwIn, RowScale};
use crate::error::{AiecError, Result};
use crate::layout::{KeepLayout, Sizes};

fn expect_len(what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(AiecError::LengthMismatch { what, expected, got });
    }
    Ok(())
}

/// Packs the keep bits of an input planned as `plan` (one per element, in the
/// input's order) into `words` ([`Sizes::keep`] of them) in the kernels'
/// layout, [`KeepLayout`]: row by row, every row from a word,
/// padding bits 0.
pub fn pack_keep(plan: &InputDims, keep: &[bool], words: &mut [u32]) {
    let layout = KeepLayout::of_dims(plan);
    words.fill(0);
    for (i, &k) in keep.iter().enumerate() {
        let (w, b) = layout.bit(i as u64);
        words[w] |= (k as u32) << b;
    }
}

/// The keep bits of every element of an input planned as `plan`, from words in
/// the kernels' layout ([`pack_keep`]).
pub fn unpack_keep(plan: &InputDims, words: &[u32]) -> Vec<bool> {
    let layout = KeepLayout::of_dims(plan);
    (0..plan.len() as u64)
        .map(|i| {
            let (w, b) = layout.bit(i);
            (words[w] >> b) & 1 == 1
        })
        .collect()
}

/// `aiec_fwd_x`, the pass over `x`: `y`, the keep bits ([`Sizes::keep`] words) and, when
/// given, the pooled `v` (`[B, C]`). `dims` is the shape of `x`.
pub fn fwd_x<F: Float>(
    cfg: &AiecConfig,
    dims: &[usize],
    x: &[F],
    y: &mut [F],
    keep: &mut [u32],
    v: Option<&mut [F]>,
) -> Result<InputDims> {
    let plan = cfg.plan_input(dims)?;
    let sizes = Sizes::of(&plan, cfg.classes());
    expect_len("x", x.len(), plan.len())?;
    expect_len("y", y.len(), plan.len())?;
    expect_len("keep bits", keep.len(), sizes.keep)?;
    if let Some(v) = &v {
        expect_len("v [B, C]", v.len(), sizes.bc)?;
    }
    let mut bits = vec![false; x.len()];
    parts::threshold(x, F::from_f64(cfg.tau()), y, &mut bits);
    pack_keep(&plan, &bits, keep);
    if let Some(v) = v {
        parts::pool(&plan, y, v);
    }
    Ok(plan)
}

/// `aiec_bwd_x`, the pass over `dy`: `dx = keep ? dy + unpool(dv) : 0` (`dv` `[B, C]`, or
/// none: `dx = keep ? dy : 0`).
pub fn bwd_x<F: Float>(
    cfg: &AiecConfig,
    plan: &InputDims,
    keep: &[u32],
    dv: Option<&[F]>,
    dy: &[F],
    dx: &mut [F],
) -> Result<()> {
    let sizes = Sizes::of(plan, cfg.classes());
    expect_len("keep bits", keep.len(), sizes.keep)?;
    expect_len("dy", dy.len(), plan.len())?;
    expect_len("dx", dx.len(), plan.len())?;
    let mut total = dy.to_vec();
    if let Some(dv) = dv {
        expect_len("dv [B, C]", dv.len(), sizes.bc)?;
        parts::unpool_add(plan, dv, &mut total);
    }
    parts::pass_gradient(&total, &unpack_keep(plan, keep), dx);
    Ok(())
}

/// Re-exported from [`crate::cpu::parts`], where counting uses it.
pub use crate::cpu::parts::CountersSlices;

/// The buffers a training forward writes besides `y` and the keep bits.
pub struct AuxSlices<'a, F> {
    /// `[B, C]`.
    pub v: &'a mut [F],
    /// `[B, K]`.
    pub logits: &'a mut [F],
    /// `[B]`.
    pub ce: &'a mut [F],
    /// `[B, K]`: `softmax - onehot`.
    pub g: &'a mut [F],
}

/// What a training forward reads (as `gpu::fused::TrainIn`): `x`, `W` `[K, C]`
/// and the targets `[B]`.
#[derive(Clone, Copy)]
pub struct TrainInSlices<'a, F> {
    /// The input, of the shape passed beside it.
    pub x: &'a [F],
    /// `[K, C]`.
    pub w: &'a [F],
    /// `[B]`.
    pub targets: &'a [i64],
}

/// What a training forward writes besides the counters (as
/// `gpu::fused::TrainOut`): `y`, the keep bits and the [`AuxSlices`].
pub struct TrainOutSlices<'v, 'a, F> {
    /// Shape of `x`.
    pub y: &'v mut [F],
    /// [`Sizes::keep`] words.
    pub keep: &'v mut [u32],
    /// The saved state and results.
    pub aux: &'v mut AuxSlices<'a, F>,
}

/// The first half of a training forward (`aiec_fwd_x`, `aiec_fwd_logits` then `aiec_fwd_softmax`, as
/// `gpu::fused::fwd_x_logits`): `y`, the keep bits, `v`, logits, `ce`, `g`, and the counting into
/// `counters` when `update`. Targets are checked first: a bad one is an error
/// and nothing is written.
pub fn fwd_x_logits<F: Float>(
    cfg: &AiecConfig,
    dims: &[usize],
    inp: TrainInSlices<F>,
    counters: &mut CountersSlices,
    update: bool,
    out: TrainOutSlices<F>,
) -> Result<InputDims> {
    let TrainInSlices { x, w, targets } = inp;
    let TrainOutSlices { y, keep, aux } = out;
    let plan = cfg.plan_input(dims)?;
    let (b, c, k) = (plan.batch, plan.channels, cfg.classes());
    let t = check_targets(targets, b, k)?;
    let sizes = Sizes::of(&plan, k);
    expect_len("W [K, C]", w.len(), k * c)?;
    expect_len("counters act [K, C]", counters.act.len(), k * c)?;
    expect_len("counters inh [K, C]", counters.inh.len(), k * c)?;
    expect_len("counters total [K]", counters.total.len(), k)?;
    expect_len("logits [B, K]", aux.logits.len(), sizes.bk)?;
    expect_len("ce [B]", aux.ce.len(), b)?;
    expect_len("g [B, K]", aux.g.len(), sizes.bk)?;
    expect_len("v [B, C]", aux.v.len(), sizes.bc)?;
    expect_len("x", x.len(), plan.len())?;
    expect_len("y", y.len(), plan.len())?;
    expect_len("keep bits", keep.len(), sizes.keep)?;
    fwd_x(cfg, dims, x, y, keep, Some(aux.v))?;
    parts::logits(aux.v, w, b, c, k, aux.logits);
    if update {
        parts::count(aux.v, aux.logits, &t, c, k, counters);
    }
    parts::row_losses(aux.logits, &t, k, aux.ce, aux.g);
    Ok(plan)
}

/// What the gate reads (as `gpu::fused::GateIn`): `v` `[B, C]`, `W` `[K, C]`,
/// the targets `[B]` and the counters `act`, `inh` `[K, C]` after this step's
/// counting.
#[derive(Clone, Copy)]
pub struct GateInSlices<'a, F> {
    /// `[B, C]`.
    pub v: &'a [F],
    /// `[K, C]`.
    pub w: &'a [F],
    /// `[B]`.
    pub targets: &'a [i64],
    /// `[K, C]`.
    pub act: &'a [i64],
    /// `[K, C]`.
    pub inh: &'a [i64],
}

/// The second half (`aiec_fwd_gate`, as `gpu::fused::fwd_gate`): `mask [B, C]` from
/// the counters after this step's counting, and `(S, N)`.
pub fn fwd_gate<F: Float>(
    cfg: &AiecConfig,
    plan: &InputDims,
    inp: GateInSlices<F>,
    mask: &mut [u8],
) -> Result<(F, u64)> {
    let GateInSlices { v, w, targets, act, inh } = inp;
    let (b, c, k) = (plan.batch, plan.channels, cfg.classes());
    let t = check_targets(targets, b, k)?;
    expect_len("v [B, C]", v.len(), b * c)?;
    expect_len("W [K, C]", w.len(), k * c)?;
    expect_len("counters act [K, C]", act.len(), k * c)?;
    expect_len("counters inh [K, C]", inh.len(), k * c)?;
    expect_len("mask [B, C]", mask.len(), b * c)?;
    Ok(parts::gate(v, w, &t, c, act, inh, mask))
}

/// What a training backward reads of its forward.
pub struct SavedSlices<'a, F> {
    /// Keep bits.
    pub keep: &'a [u32],
    /// `[B, C]`.
    pub v: &'a [F],
    /// `[B, K]`.
    pub g: &'a [F],
    /// `[B, C]`.
    pub mask: &'a [u8],
}

/// What a training backward reads and writes besides the saved state, `dy`
/// and `dx` (as `gpu::fused::TrainBackward`): `W` `[K, C]`, the loss scales,
/// and `dW` `[K, C]` with how to deliver it.
pub struct TrainBackwardSlices<'v, F> {
    /// `[K, C]`.
    pub w: &'v [F],
    /// The `a_b` of each row (`dlogits = a_b * g`).
    pub rows: RowScale<'v, F>,
    /// The gate loss's scale.
    pub gate_scale: F,
    /// `[K, C]`, written or added to per `mode`.
    pub dw: &'v mut [F],
    /// How `dw` is delivered.
    pub mode: DwMode,
}

/// A training backward (as `gpu::fused::backward` with a training part): `dx`
/// and `dW`, with `dlogits = a_b * g` and the gate term `gate_scale * v *
/// mask`.
pub fn backward_train<F: Float>(
    cfg: &AiecConfig,
    plan: &InputDims,
    saved: &SavedSlices<F>,
    train: TrainBackwardSlices<F>,
    dy: &[F],
    dx: &mut [F],
) -> Result<()> {
    let TrainBackwardSlices { w, rows, gate_scale, dw, mode } = train;
    let (b, c, k) = (plan.batch, plan.channels, cfg.classes());
    expect_len("saved v [B, C]", saved.v.len(), b * c)?;
    expect_len("saved g [B, K]", saved.g.len(), b * k)?;
    expect_len("saved mask [B, C]", saved.mask.len(), b * c)?;
    expect_len("W [K, C]", w.len(), k * c)?;
    expect_len("dW [K, C]", dw.len(), k * c)?;
    if let RowScale::PerRow(r) = rows {
        expect_len("row scales [B]", r.len(), b)?;
    }
    let mut dv = vec![F::ZERO; b * c];
    let mut grad_w = vec![F::ZERO; k * c];
    let inp = DvDwIn { g: saved.g, v: saved.v, mask: saved.mask, w, rows, gate_scale };
    parts::dv_dw(inp, b, c, k, &mut dv, &mut grad_w);
    bwd_x(cfg, plan, saved.keep, Some(&dv), dy, dx)?;
    for (o, g) in dw.iter_mut().zip(grad_w) {
        *o = if mode == DwMode::Accumulate { *o + g } else { g };
    }
    Ok(())
}

/// The old name of [`fwd_x`].
#[deprecated(note = "renamed fwd_x, after the kernel's stem")]
pub fn activation_forward<F: Float>(
    cfg: &AiecConfig,
    dims: &[usize],
    x: &[F],
    y: &mut [F],
    keep: &mut [u32],
    v: Option<&mut [F]>,
) -> Result<InputDims> {
    fwd_x(cfg, dims, x, y, keep, v)
}

/// The old name of [`bwd_x`].
#[deprecated(note = "renamed bwd_x, after the kernel's stem")]
pub fn activation_backward<F: Float>(
    cfg: &AiecConfig,
    plan: &InputDims,
    keep: &[u32],
    dv: Option<&[F]>,
    dy: &[F],
    dx: &mut [F],
) -> Result<()> {
    bwd_x(cfg, plan, keep, dv, dy, dx)
}
