//! The fused op on views: every buffer a forward, the losses or a backward
//! reads or writes is the caller's ([`crate::view`]), so nothing is allocated,
//! copied or synchronised here. This is the level the framework adapters use
//! (PyTorch allocates every buffer from its caching allocator and passes
//! them in); [`crate::gpu::forward`] and [`crate::gpu::GpuLayer`] build on it
//! with a workspace of the crate's own.
//!
//! A training forward is four launches (the pass over `x`; the logits; the
//! rows' CE, softmax gradient and counting; gate), the losses of `L` layers one, a backward two (`dv` and
//! `dW`; the pass over `dy`). Everything is checked before the first launch:
//! lengths, devices and element types, and that no written buffer overlaps
//! another buffer of the call (`dx` may be `dy` exactly). Targets checked on
//! the host are trusted; device-side targets are checked by the first kernel,
//! which makes the step count nothing and leaves the error for the device's
//! next synchronisation or read ([`crate::Device::synchronize`]).

/// Re-exported from [`crate::config`], where it is defined (the CPU reference uses it too).
pub use crate::config::DwMode;
use crate::config::{AiecConfig, InputDims, LossCoefs};
use crate::dtype::DType;
use crate::error::{AiecError, Result};
use crate::launch::{self, BwdDvDwArgs, BwdXArgs, FwdGateArgs, FwdLogitsArgs, FwdSoftmaxArgs, FwdXArgs};
use crate::layout::ForwardScratch;
/// Re-exported from [`crate::layout`], where they are defined.
pub use crate::layout::{Sizes, SCRATCH_ALIGN};
use crate::params::{AiecGateStats, AiecLossParams, AiecLosses, AiecShape, FLAG_ACCUMULATE_DW, MAX_LAYERS};
use crate::view::{check_disjoint, SliceMut, SliceRef, Span, TensorMut, TensorRef};
use crate::Device;

/// The counters of one layer as writable views: `act`, `inh` `[K, C]`, `total` `[K]`.
pub struct CountersMut<'a> {
    /// `[K, C]`.
    pub act: SliceMut<'a, i64>,
    /// `[K, C]`.
    pub inh: SliceMut<'a, i64>,
    /// `[K]`.
    pub total: SliceMut<'a, i64>,
}

/// What a training forward writes besides `y` and the keep bits; sizes from
/// [`Sizes`]. `v`, `g` and `mask` are what its backward needs; `logits`,
/// `ce` and `stats` are results; the first [`Sizes::scratch_zero_bytes`] bytes of
/// `scratch` (its tickets) must be zero before a forward. Every launch leaves
/// them zero where its shape's layout keeps them, so the scratch can be reused
/// as it is by every later forward of the same shape; before a forward of
/// another shape, whose tickets may lie where this one left partial sums, set
/// those bytes to zero again (the layers' workspace does).
pub struct AuxMut<'a> {
    /// `[B, C]` pooled activation.
    pub v: SliceMut<'a, f32>,
    /// `[B, K]`.
    pub logits: SliceMut<'a, f32>,
    /// `[B]` cross-entropy of each row.
    pub ce: SliceMut<'a, f32>,
    /// `[B, K]`: `softmax(logits) - onehot(t)`.
    pub g: SliceMut<'a, f32>,
    /// `[B, C]` consensus mask (0/1).
    pub mask: SliceMut<'a, u8>,
    /// `[1]`: `S`, `N` of this layer.
    pub stats: SliceMut<'a, AiecGateStats>,
    /// [`Sizes::scratch_bytes`] bytes, [`SCRATCH_ALIGN`]-byte aligned (it holds
    /// 8-byte counts and the targets status; every device allocation is).
    pub scratch: SliceMut<'a, u8>,
}

fn check_scratch(scratch: &SliceMut<u8>) -> Result<()> {
    let address = scratch.address();
    if address % SCRATCH_ALIGN as u64 != 0 {
        return Err(AiecError::Misaligned { what: "forward scratch", address, align: SCRATCH_ALIGN });
    }
    Ok(())
}

/// The saved state a training backward reads.
pub struct SavedRef<'a> {
    /// `[B, C]`.
    pub v: SliceRef<'a, f32>,
    /// `[B, K]`.
    pub g: SliceRef<'a, f32>,
    /// `[B, C]`.
    pub mask: SliceRef<'a, u8>,
}

fn mismatch(what: &'static str, expected: usize, got: usize) -> AiecError {
    AiecError::LengthMismatch { what, expected, got }
}

/// The shape, and that `y` fits `x` on `x`'s device.
fn check_x_y(cfg: &AiecConfig, x: &TensorRef, y: &TensorMut) -> Result<InputDims> {
    let dims = cfg.plan_input(x.shape())?;
    let dev = x.device();
    y.expect_device("y", dev)?;
    y.expect_dtype("y", x.dtype())?;
    y.expect_shape("y", x.shape())?;
    Ok(dims)
}

/// `aiec_fwd_x` alone: `y` and the keep bits ([`Sizes::keep`] words) and,
/// with `v`, the pooled `v` (`[B, C]`) in one read of `x`; one launch. Without
/// `v` it is the forward without targets (inference, or a training step
/// without them); with it, what adapters that compute the `[B, C]` and
/// `[K, C]` parts themselves (the PyTorch drop-in) call.
pub fn fwd_x(
    cfg: &AiecConfig,
    x: &TensorRef,
    y: &mut TensorMut,
    keep: &mut SliceMut<u32>,
    v: Option<&mut SliceMut<f32>>,
) -> Result<InputDims> {
    let dims = check_x_y(cfg, x, y)?;
    let dev = x.device();
    let sizes = Sizes::of(&dims, cfg.classes());
    keep.expect("keep bits", dev, sizes.keep)?;
    let mut written = vec![("y", y.span()), ("keep bits", keep.span())];
    if let Some(v) = &v {
        v.expect("v [B, C]", dev, sizes.bc)?;
        written.push(("v", v.span()));
    }
    check_disjoint(&written)?;
    for wr in &written {
        check_disjoint(&[*wr, ("x", x.span())])?;
    }
    let shape = AiecShape::new(&dims, cfg.classes(), cfg.tau() as f32, false);
    let args = FwdXArgs {
        x: x.address(),
        y: y.address(),
        keep: keep.address(),
        v: v.map_or(0, |v| v.address()),
        ..Default::default()
    };
    if let Some(p) = launch::aiec_fwd_x(x.dtype(), &shape, args, dev.limits()) {
        // SAFETY: x, y, keep (and v) are live views of this device sized for
        // `shape` (checked above), the written ones disjoint from the rest.
        unsafe { dev.launch(&p) }?;
    }
    Ok(dims)
}

/// The old name of [`fwd_x`] without `v`.
#[deprecated(note = "renamed fwd_x (with v = None), after the kernel's stem")]
pub fn forward_infer(
    cfg: &AiecConfig,
    x: &TensorRef,
    y: &mut TensorMut,
    keep: &mut SliceMut<u32>,
) -> Result<InputDims> {
    fwd_x(cfg, x, y, keep, None)
}

/// Where a training forward's targets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetCheck {
    /// Already checked on the host: every target is in `0..K`.
    Host,
    /// Device memory the host has not seen: the first kernel checks it.
    Device,
}

/// When a training forward updates the counters.
#[derive(Debug, Clone, Copy)]
pub enum Update<'v, 'a> {
    /// Decided on the host.
    Now(bool),
    /// Decided on the device, for graphs and compilers that must not depend
    /// on the step's value: the counters update when `step % interval == 0`,
    /// with `step` (`i64 [1]`) the layer's step counter already incremented for
    /// this forward.
    OnStep {
        /// `i64 [1]`.
        step: &'v SliceRef<'a, i64>,
        /// `update_interval >= 1`.
        interval: u64,
    },
}

/// What a training forward reads: `x`, `W` (`[K, C]`), the targets (`[B]`)
/// and where they were checked.
#[derive(Clone, Copy)]
pub struct TrainIn<'v, 'a> {
    /// The input, shape of the layout.
    pub x: &'v TensorRef<'a>,
    /// `[K, C]`.
    pub w: &'v SliceRef<'a, f32>,
    /// `[B]`.
    pub targets: &'v SliceRef<'a, i64>,
    /// Where the targets were checked.
    pub check: TargetCheck,
}

/// What a training forward writes besides the counters: `y` (shape of `x`),
/// the keep bits ([`Sizes::keep`] words) and every [`AuxMut`] buffer. (Each
/// writable view has its own lifetime: a `&mut` to a view is invariant in it.)
pub struct TrainOut<'v, 'y, 'k, 'x> {
    /// Shape and type of `x`.
    pub y: &'v mut TensorMut<'y>,
    /// [`Sizes::keep`] words.
    pub keep: &'v mut SliceMut<'k, u32>,
    /// The saved state and results.
    pub aux: &'v mut AuxMut<'x>,
}

impl<'y, 'k, 'x> TrainOut<'_, 'y, 'k, 'x> {
    /// The same outputs, borrowed for a shorter call.
    pub fn reborrow(&mut self) -> TrainOut<'_, 'y, 'k, 'x> {
        TrainOut { y: &mut *self.y, keep: &mut *self.keep, aux: &mut *self.aux }
    }
}

/// Checks of a training forward: shapes, lengths, devices, overlaps.
fn check_train(
    cfg: &AiecConfig,
    inp: &TrainIn,
    counters: &CountersMut,
    out: &TrainOut,
    with_gate: bool,
) -> Result<InputDims> {
    let TrainIn { x, w, targets, .. } = *inp;
    let (y, keep, aux) = (&*out.y, &*out.keep, &*out.aux);
    let dims = check_x_y(cfg, x, y)?;
    let dev = x.device();
    let (k, c) = (cfg.classes(), cfg.channels());
    let sizes = Sizes::of(&dims, k);
    w.expect("W [K, C]", dev, k * c)?;
    targets.expect("targets [B]", dev, dims.batch).map_err(|e| match e {
        AiecError::LengthMismatch { got, .. } => AiecError::TargetCountMismatch { batch: dims.batch, got },
        e => e,
    })?;
    for (what, got, want) in [
        ("counters act [K, C]", counters.act.len(), k * c),
        ("counters inh [K, C]", counters.inh.len(), k * c),
        ("counters total [K]", counters.total.len(), k),
    ] {
        if got != want {
            return Err(mismatch(what, want, got));
        }
    }
    keep.expect("keep bits", dev, sizes.keep)?;
    aux.v.expect("v [B, C]", dev, sizes.bc)?;
    aux.logits.expect("logits [B, K]", dev, sizes.bk)?;
    aux.ce.expect("ce [B]", dev, sizes.batch)?;
    aux.g.expect("g [B, K]", dev, sizes.bk)?;
    aux.scratch.expect("forward scratch (bytes)", dev, sizes.scratch_bytes)?;
    check_scratch(&aux.scratch)?;
    let mut written = vec![
        ("y", y.span()),
        ("keep bits", keep.span()),
        ("v", aux.v.span()),
        ("logits", aux.logits.span()),
        ("ce", aux.ce.span()),
        ("g", aux.g.span()),
        ("forward scratch", aux.scratch.span()),
        ("counters act", counters.act.span()),
        ("counters inh", counters.inh.span()),
        ("counters total", counters.total.span()),
    ];
    if with_gate {
        aux.mask.expect("mask [B, C]", dev, sizes.bc)?;
        aux.stats.expect("gate stats", dev, 1)?;
        written.push(("mask", aux.mask.span()));
        written.push(("gate stats", aux.stats.span()));
    }
    check_disjoint(&written)?;
    for read in [("x", x.span()), ("W", w.span()), ("targets", targets.span())] {
        for wr in &written {
            check_disjoint(&[*wr, read])?;
        }
    }
    Ok(dims)
}

/// A training forward: `y`, the keep bits and every [`AuxMut`] buffer, in
/// four launches; the counters update when `update` says so. The same as
/// [`fwd_x_logits`] then [`fwd_gate`].
pub fn forward_train(
    cfg: &AiecConfig,
    inp: TrainIn,
    counters: &mut CountersMut,
    update: Update,
    mut out: TrainOut,
) -> Result<InputDims> {
    // Every buffer of the four launches first, so that a bad one launches nothing.
    check_train(cfg, &inp, counters, &out, true)?;
    let dims = fwd_x_logits(cfg, inp, counters, update, out.reborrow())?;
    let aux = &mut *out.aux;
    let gate_in = GateIn {
        v: &aux.v.as_ref(),
        w: inp.w,
        targets: inp.targets,
        act: &counters.act.as_ref(),
        inh: &counters.inh.as_ref(),
    };
    let gate_out = GateOut { mask: &mut aux.mask, stats: &mut aux.stats, scratch: &mut aux.scratch };
    fwd_gate(cfg, &dims, gate_in, gate_out)?;
    Ok(dims)
}

/// `aiec_fwd_x`, `aiec_fwd_logits` then `aiec_fwd_softmax`, launches 1 to 3 of a training forward: the pass over
/// `x` (`y`, keep bits, `v`, the targets check) and the decision unit (the logits; then per row `ce`, `g`, the
/// argmax) with the counting, into `counters` (`aux.mask` and `aux.stats` are
/// not used and may be empty views). Those may be the layer's
/// counters or zeroed increments (data-parallel training sums increments
/// over ranks before [`fwd_gate`] reads the counters).
pub fn fwd_x_logits(
    cfg: &AiecConfig,
    inp: TrainIn,
    counters: &mut CountersMut,
    update: Update,
    out: TrainOut,
) -> Result<InputDims> {
    let TrainIn { x, w, targets, check } = inp;
    let dev = x.device();
    for (what, d) in [
        ("counters act", counters.act.device()),
        ("counters inh", counters.inh.device()),
        ("counters total", counters.total.device()),
    ] {
        if d != dev {
            return Err(AiecError::DeviceMismatch {
                what,
                expected: dev.label().to_string(),
                got: d.label().to_string(),
            });
        }
    }
    let dims = check_train(cfg, &inp, counters, &out, false)?;
    let TrainOut { y, keep, aux } = out;
    let (host_update, step) = match update {
        Update::Now(u) => (u as u32, 0),
        Update::OnStep { step, interval } => {
            step.expect("step [1]", dev, 1)?;
            if interval == 0 {
                return Err(AiecError::ZeroUpdateInterval);
            }
            (interval.min(u32::MAX as u64) as u32, step.address())
        }
    };
    let mut shape = AiecShape::new(&dims, cfg.classes(), cfg.tau() as f32, false);
    shape.update = host_update;
    let sc = ForwardScratch::of(&shape);
    let base = aux.scratch.address();
    let device_error = match check {
        TargetCheck::Host => 0,
        TargetCheck::Device => dev.target_error_record()?,
    };
    let status = base + sc.status as u64;
    let plans = [
        launch::aiec_fwd_x(
            x.dtype(),
            &shape,
            FwdXArgs {
                x: x.address(),
                y: y.address(),
                keep: keep.address(),
                v: aux.v.address(),
                targets: targets.address(),
                status,
                device_error,
            },
            dev.limits(),
        ),
        launch::aiec_fwd_logits(
            &shape,
            FwdLogitsArgs {
                v: aux.v.address(),
                w: w.address(),
                logits: aux.logits.address(),
                g: aux.g.address(),
                part: base + sc.row_parts as u64,
                tickets: base + sc.logits_tickets as u64,
                slices: base + sc.logits_slices as u64,
            },
            dev.limits(),
        ),
        launch::aiec_fwd_softmax(
            &shape,
            FwdSoftmaxArgs {
                v: aux.v.address(),
                targets: targets.address(),
                status,
                step,
                logits: aux.logits.address(),
                part: base + sc.row_parts as u64,
                ce: aux.ce.address(),
                g: aux.g.address(),
                act: counters.act.address(),
                inh: counters.inh.address(),
                total: counters.total.address(),
            },
            dev.limits(),
        ),
    ];
    for p in plans.iter().flatten() {
        // SAFETY: every address is a live view of this device sized for the
        // shape the plan was made from (checked above); the written ones are
        // disjoint from each other and from the inputs; the launches run in
        // order on the device's stream.
        unsafe { dev.launch(p) }?;
    }
    Ok(dims)
}

/// What the gate reads: `v` (`[B, C]`), `W` (`[K, C]`), the targets (`[B]`)
/// and the counters `act`, `inh` (`[K, C]`) as they are after this step's
/// counting.
#[derive(Clone, Copy)]
pub struct GateIn<'v, 'a> {
    /// `[B, C]`.
    pub v: &'v SliceRef<'a, f32>,
    /// `[K, C]`.
    pub w: &'v SliceRef<'a, f32>,
    /// `[B]`.
    pub targets: &'v SliceRef<'a, i64>,
    /// `[K, C]`.
    pub act: &'v SliceRef<'a, i64>,
    /// `[K, C]`.
    pub inh: &'v SliceRef<'a, i64>,
}

/// What the gate writes: `mask` (`[B, C]`), `stats` (one [`AiecGateStats`])
/// and its part of the forward's `scratch` ([`Sizes::scratch_bytes`]).
pub struct GateOut<'v, 'm, 's, 'c> {
    /// `[B, C]`.
    pub mask: &'v mut SliceMut<'m, u8>,
    /// `[1]`.
    pub stats: &'v mut SliceMut<'s, AiecGateStats>,
    /// The forward's scratch.
    pub scratch: &'v mut SliceMut<'c, u8>,
}

/// `aiec_fwd_gate`, launch 4 of a training forward: the consensus gate (`mask`, `S`, `N`) from
/// [`GateIn`] into [`GateOut`].
pub fn fwd_gate(cfg: &AiecConfig, dims: &InputDims, inp: GateIn, out: GateOut) -> Result<()> {
    let GateIn { v, w, targets, act, inh } = inp;
    let GateOut { mask, stats, scratch } = out;
    let dev = w.device().clone();
    let (k, c) = (cfg.classes(), cfg.channels());
    if dims.channels != c {
        return Err(mismatch("input channels C", c, dims.channels));
    }
    let sizes = Sizes::of(dims, k);
    w.expect("W [K, C]", &dev, k * c)?;
    targets.expect("targets [B]", &dev, dims.batch)?;
    act.expect("counters act [K, C]", &dev, k * c)?;
    inh.expect("counters inh [K, C]", &dev, k * c)?;
    v.expect("v [B, C]", &dev, sizes.bc)?;
    mask.expect("mask [B, C]", &dev, sizes.bc)?;
    stats.expect("gate stats", &dev, 1)?;
    scratch.expect("forward scratch (bytes)", &dev, sizes.scratch_bytes)?;
    check_scratch(scratch)?;
    let written = [("mask", mask.span()), ("gate stats", stats.span()), ("forward scratch", scratch.span())];
    check_disjoint(&written)?;
    for read in [
        ("v", v.span()),
        ("W", w.span()),
        ("targets", targets.span()),
        ("act", act.span()),
        ("inh", inh.span()),
    ] {
        for wr in &written {
            check_disjoint(&[*wr, read])?;
        }
    }
    let shape = AiecShape::new(dims, k, cfg.tau() as f32, false);
    if dims.batch * c == 0 {
        // The gate is not launched: S = 0, N = 0 (the buffer may hold an older step's).
        // SAFETY: `stats` is a live view of this device of one AiecGateStats.
        unsafe { dev.memset(stats.address(), 0, stats.byte_len()) }?;
        return Ok(());
    }
    let sc = ForwardScratch::of(&shape);
    let base = scratch.address();
    let args = FwdGateArgs {
        v: v.address(),
        w: w.address(),
        targets: targets.address(),
        act: act.address(),
        inh: inh.address(),
        mask: mask.address(),
        block_sum_sq: base + sc.gate_sum_sq as u64,
        block_count: base + sc.gate_count as u64,
        done: base + sc.gate_done as u64,
        stats: stats.address(),
    };
    if let Some(p) = launch::aiec_fwd_gate(&shape, args) {
        // SAFETY: live views of this device sized for `shape`; the written ones
        // disjoint from each other and from the inputs.
        unsafe { dev.launch(&p) }?;
    }
    Ok(())
}

/// One layer's contribution to the losses: its `ce [B]` and gate statistics.
pub struct LayerLoss<'a> {
    /// `[B]`.
    pub ce: SliceRef<'a, f32>,
    /// `[1]`.
    pub stats: SliceRef<'a, AiecGateStats>,
}

/// The losses of the `L` layers (1 to 32) that share one target vector of
/// `batch` samples, into `out` (one [`AiecLosses`]); one launch. (In
/// data-parallel training, [`crate::gpu::dp::combine_over_ranks`] normalises
/// the gate by the masked count of every rank.)
pub fn combine(
    layers: &[LayerLoss],
    batch: usize,
    coefs: LossCoefs,
    out: &mut SliceMut<AiecLosses>,
) -> Result<()> {
    let (dev, p) = loss_params(layers, batch, coefs, out)?;
    // SAFETY: every address is a live view of `dev` with B floats of CE and
    // one AiecGateStats per layer; `out` is disjoint from them.
    unsafe { dev.launch(&launch::aiec_loss(&p)) }
}

/// [`combine`]'s checks, and its arguments (`count_all` 0: this process alone).
pub(crate) fn loss_params(
    layers: &[LayerLoss],
    batch: usize,
    coefs: LossCoefs,
    out: &SliceMut<AiecLosses>,
) -> Result<(Device, AiecLossParams)> {
    let coefs = LossCoefs::new(coefs.aux_coef, coefs.gate_coef)?;
    if layers.is_empty() || layers.len() > MAX_LAYERS {
        return Err(AiecError::LayerMismatch {
            layer: layers.len(),
            reason: format!("{} layers given, 1 to {MAX_LAYERS} are supported", layers.len()),
        });
    }
    let dev = out.device().clone();
    out.expect("losses", &dev, 1)?;
    let mut p = AiecLossParams {
        ce: [0; MAX_LAYERS],
        stats: [0; MAX_LAYERS],
        out: out.address(),
        layers: layers.len() as u32,
        world: 1,
        batch: batch as u64,
        aux_coef: coefs.aux_coef as f32,
        gate_coef: coefs.gate_coef as f32,
        count_all: 0,
    };
    for (l, layer) in layers.iter().enumerate() {
        layer.ce.expect("layer ce [B]", &dev, batch).map_err(|e| match e {
            AiecError::LengthMismatch { got, .. } => AiecError::LayerMismatch {
                layer: l,
                reason: format!("batch B = {got} differs from layer 0's {batch}"),
            },
            e => e,
        })?;
        layer.stats.expect("layer gate stats", &dev, 1)?;
        check_disjoint(&[("losses", out.span()), ("layer ce", layer.ce.span())])?;
        check_disjoint(&[("losses", out.span()), ("layer gate stats", layer.stats.span())])?;
        p.ce[l] = layer.ce.address();
        p.stats[l] = layer.stats.address();
    }
    Ok((dev, p))
}

/// The loss gradients a training backward scales by: the combined losses of
/// [`combine`] (its `aux_scale` and `gate_scale`), and optionally the gradient
/// with respect to each row's cross-entropy (`[B]`, replacing the uniform
/// `aux_scale`: what an autograd engine hands back).
pub struct Scales<'a> {
    /// One [`AiecLosses`].
    pub losses: SliceRef<'a, AiecLosses>,
    /// `[B]` or none.
    pub row_scale: Option<SliceRef<'a, f32>>,
}

/// Where a backward writes `dx`, with the `dy` it reads: one type for both
/// placements, so that each backward is one function. `dy` is writable only
/// where `dx` goes over it.
pub enum Dx<'v, 'y, 'x> {
    /// `dx` into its own buffer of `dy`'s shape and type, on `dy`'s device:
    /// disjoint from every input, or exactly `dy`'s memory (two views the
    /// caller made of one buffer).
    Into {
        /// The gradient with respect to `y`, shape of the layout.
        dy: &'v TensorRef<'y>,
        /// The gradient with respect to `x`, written.
        dx: &'v mut TensorMut<'x>,
    },
    /// `dx` written over `dy` (in place).
    OverDy(&'v mut TensorMut<'y>),
}

/// `dx` as a backward writes it.
struct DxOut {
    addr: u64,
    span: Span,
    dtype: DType,
    shape: Vec<usize>,
}

impl Dx<'_, '_, '_> {
    /// The device of `dy`.
    pub fn device(&self) -> &Device {
        match self {
            Dx::Into { dy, .. } => dy.device(),
            Dx::OverDy(dy) => dy.device(),
        }
    }

    /// Calls `f` with `dy` as read and `dx` as written, after checking that
    /// `dx` has `dy`'s device, type and shape (and `dy` the forward's shape),
    /// and that `dx` is `dy` exactly or disjoint from it.
    fn check<R>(&self, dims: &InputDims, f: impl FnOnce(&TensorRef, DxOut) -> Result<R>) -> Result<R> {
        let (dy_owned, dx);
        let dy: &TensorRef = match self {
            Dx::Into { dy, dx: out } => {
                out.expect_device("dx", dy.device())?;
                dx = DxOut {
                    addr: out.address(),
                    span: out.span(),
                    dtype: out.dtype(),
                    shape: out.shape().to_vec(),
                };
                dy
            }
            Dx::OverDy(dy) => {
                dx = DxOut {
                    addr: dy.address(),
                    span: dy.span(),
                    dtype: dy.dtype(),
                    shape: dy.shape().to_vec(),
                };
                dy_owned = dy.as_ref();
                &dy_owned
            }
        };
        // Each tensor named with its own shape: dy against the forward's, dx against dy.
        if dy.shape() != dims.dims.as_slice() {
            return Err(AiecError::ShapeMismatch {
                what: "dy",
                expected: dims.dims.clone(),
                got: dy.shape().to_vec(),
            });
        }
        if dx.dtype != dy.dtype() {
            return Err(AiecError::DTypeMismatch { what: "dx", expected: dy.dtype(), got: dx.dtype });
        }
        if dx.shape != dy.shape() {
            return Err(AiecError::ShapeMismatch {
                what: "dx",
                expected: dy.shape().to_vec(),
                got: dx.shape,
            });
        }
        if dx.span.addr != dy.address() || dx.span.bytes != dy.byte_len() {
            check_disjoint(&[("dx", dx.span), ("dy", dy.span())])?;
        }
        f(dy, dx)
    }
}

/// What a training backward reads and writes besides `dy` and `dx`: `W`, the
/// saved state, the loss scales, the `dv` scratch (`[B, C]` or more), and `dW`
/// (`[K, C]`) with how to deliver it. (Each writable view has its own
/// lifetime: a `&mut` to a view is invariant in it.)
pub struct TrainBackward<'v, 'a, 'd, 'g> {
    /// `[K, C]`.
    pub w: &'v SliceRef<'a, f32>,
    /// What the forward saved.
    pub saved: &'v SavedRef<'a>,
    /// The loss gradients.
    pub scales: &'v Scales<'a>,
    /// Scratch for `dv`: at least `B C` values (`dv` itself); with more
    /// ([`dv_scratch_len`]) the backward may split `dv`'s sums over the classes
    /// and `dW`'s over the samples, keeping the slices there ([`launch::bwd_slices`]).
    pub dv: &'v mut SliceMut<'d, f32>,
    /// `[K, C]`, written or accumulated per `mode`.
    pub dw: &'v mut SliceMut<'g, f32>,
    /// How `dw` is delivered.
    pub mode: DwMode,
}

/// The length of the `dv` scratch ([`TrainBackward::dv`]) with which a backward of `dims` on `device`
/// splits its sums as far as [`launch::bwd_slices`] would: `B C` values per slice of `dv`'s sums, then
/// `K C` per slice of `dW`'s past the first ([`launch::BwdSlices::scratch_len`]; `B C` where neither
/// splits). A shorter scratch (at least `B C`) runs with the slices it has room for.
///
/// ```
/// # #[cfg(feature = "sim")] {
/// use aiec::{AiecConfig, Device, Pool};
/// let cfg = AiecConfig::new(16, 1000, 0.0, Pool::None).unwrap();
/// let dims = cfg.plan_input(&[8, 16]).unwrap();
/// let dev = Device::sim();
/// // 1000 classes beside 8 samples: dv's sums split, so the scratch holds several [B, C] slices.
/// let len = aiec::gpu::fused::dv_scratch_len(&cfg, &dims, &dev);
/// assert!(len > 8 * 16 && len % (8 * 16) == 0);
/// dev.set_split_k(aiec::launch::SplitK::Off); // never split: one slice
/// assert_eq!(aiec::gpu::fused::dv_scratch_len(&cfg, &dims, &dev), 8 * 16);
/// # }
/// ```
pub fn dv_scratch_len(cfg: &AiecConfig, dims: &InputDims, device: &Device) -> usize {
    let shape = AiecShape::new(dims, cfg.classes(), cfg.tau() as f32, false);
    launch::bwd_slices(&shape, &device.limits(), u64::MAX).scratch_len(&shape) as usize
}

/// The backward of a forward of `dims` (its [`Sizes`]): with `train` (a
/// training forward), `dv` and `dW` then `dx`, two launches (three where
/// their sums split, [`dv_scratch_len`]); without (a
/// forward without targets), `dx = keep ? dy : 0`, one launch. `dx` goes where
/// [`Dx`] says. No synchronisation. Replaces `backward_train`,
/// `backward_train_inplace`, `backward_infer` and `backward_infer_inplace`.
pub fn backward(
    cfg: &AiecConfig,
    dims: &InputDims,
    keep: &SliceRef<u32>,
    train: Option<TrainBackward>,
    dx: Dx,
) -> Result<()> {
    dx.check(dims, |dy, dx| backward_checked(cfg, dims, keep, train, dy, dx))
}

fn backward_checked(
    cfg: &AiecConfig,
    dims: &InputDims,
    keep: &SliceRef<u32>,
    train: Option<TrainBackward>,
    dy: &TensorRef,
    dx: DxOut,
) -> Result<()> {
    let dev = dy.device().clone();
    if dims.channels != cfg.channels() {
        return Err(mismatch("record channels C", cfg.channels(), dims.channels));
    }
    let (k, c) = (cfg.classes(), cfg.channels());
    let sizes = Sizes::of(dims, k);
    keep.expect("keep bits", &dev, sizes.keep)?;
    check_disjoint(&[("dx", dx.span), ("keep bits", keep.span())])?;
    let update = false; // the backward does not depend on it
    let mut shape = AiecShape::new(dims, k, cfg.tau() as f32, update);
    let mut dv_addr = 0;
    if let Some(TrainBackward { w, saved, scales, dv, dw, mode }) = train {
        w.expect("W [K, C]", &dev, k * c)?;
        saved.v.expect("saved v [B, C]", &dev, sizes.bc)?;
        saved.g.expect("saved g [B, K]", &dev, sizes.bk)?;
        saved.mask.expect("saved mask [B, C]", &dev, sizes.bc)?;
        scales.losses.expect("losses", &dev, 1)?;
        if let Some(r) = &scales.row_scale {
            r.expect("row scales [B]", &dev, sizes.batch)?;
        }
        // At least [B, C] (dv itself): a shorter one's error names that length.
        dv.expect("dv scratch [B, C] or more", &dev, dv.len().max(sizes.bc))?;
        dw.expect("dW [K, C]", &dev, k * c)?;
        let written = [("dx", dx.span), ("dv scratch", dv.span()), ("dW", dw.span())];
        check_disjoint(&written)?;
        for read in [
            ("W", w.span()),
            ("saved v", saved.v.span()),
            ("saved g", saved.g.span()),
            ("saved mask", saved.mask.span()),
            ("losses", scales.losses.span()),
        ] {
            for wr in &written {
                check_disjoint(&[*wr, read])?;
            }
        }
        if mode == DwMode::Accumulate {
            shape.flags |= FLAG_ACCUMULATE_DW;
        }
        shape = launch::with_bwd_slices(&shape, launch::bwd_slices(&shape, &dev.limits(), dv.len() as u64));
        let row_scale = scales.row_scale.as_ref().map_or(0, |r| r.address());
        let args = BwdDvDwArgs {
            v: saved.v.address(),
            w: w.address(),
            g: saved.g.address(),
            mask: saved.mask.address(),
            losses: scales.losses.address(),
            row_scale,
            dv: dv.address(),
            dw: dw.address(),
        };
        if let Some(p) = launch::aiec_bwd_dv_dw(&shape, args, dev.limits()) {
            // SAFETY: all views are live on this device and sized for `shape`;
            // dv and dw are disjoint from each other and from every input.
            unsafe { dev.launch(&p) }?;
        }
        if let Some(p) = launch::aiec_bwd_sum_slices(&shape, dv.address(), dw.address(), dev.limits()) {
            // SAFETY: dv is a live view of this device with room for the slices `shape` carries (bwd_slices
            // fits them to its length); dw is disjoint from it.
            unsafe { dev.launch(&p) }?;
        }
        dv_addr = dv.address();
    }
    if let Some(p) = launch::aiec_bwd_x(
        dy.dtype(),
        &shape,
        BwdXArgs { dy: dy.address(), keep: keep.address(), dv: dv_addr, dx: dx.addr },
        dev.limits(),
    ) {
        // SAFETY: dy, keep, dv (or null) and dx are live views of this device
        // sized for `shape`; dx is dy itself or disjoint from every input.
        unsafe { dev.launch(&p) }?;
    }
    Ok(())
}

/// The old name of [`fwd_x`] with `v`.
#[deprecated(note = "renamed fwd_x (with Some(v)), after the kernel's stem")]
pub fn activation_forward(
    cfg: &AiecConfig,
    x: &TensorRef,
    y: &mut TensorMut,
    keep: &mut SliceMut<u32>,
    v: &mut SliceMut<f32>,
) -> Result<InputDims> {
    fwd_x(cfg, x, y, keep, Some(v))
}

/// `aiec_bwd_x` alone, the pass over `dy`: `dx = keep ? dy + unpool(dv) : 0` with `dv`
/// `[B, C]` (the gradient reaching the pooled `v`); one launch. `dx` goes
/// where [`Dx`] says.
pub fn bwd_x(
    cfg: &AiecConfig,
    dims: &InputDims,
    keep: &SliceRef<u32>,
    dv: &SliceRef<f32>,
    dx: Dx,
) -> Result<()> {
    dx.check(dims, |dy, dx| {
        let dev: Device = dy.device().clone();
        dv.expect("dv [B, C]", &dev, dims.batch * dims.channels)?;
        check_disjoint(&[("dx", dx.span), ("dv", dv.span())])?;
        check_disjoint(&[("dx", dx.span), ("keep bits", keep.span())])?;
        keep.expect("keep bits", &dev, Sizes::of(dims, cfg.classes()).keep)?;
        let s = AiecShape::new(dims, cfg.classes(), cfg.tau() as f32, false);
        let args = BwdXArgs { dy: dy.address(), keep: keep.address(), dv: dv.address(), dx: dx.addr };
        if let Some(p) = launch::aiec_bwd_x(dy.dtype(), &s, args, dev.limits()) {
            // SAFETY: live views of this device sized for `s`; dx is dy or disjoint.
            unsafe { dev.launch(&p) }?;
        }
        Ok(())
    })
}

/// The old name of [`bwd_x`].
#[deprecated(note = "renamed bwd_x, after the kernel's stem")]
pub fn activation_backward(
    cfg: &AiecConfig,
    dims: &InputDims,
    keep: &SliceRef<u32>,
    dv: &SliceRef<f32>,
    dx: Dx,
) -> Result<()> {
    bwd_x(cfg, dims, keep, dv, dx)
}

/// The old name of [`fwd_x_logits`].
#[deprecated(note = "renamed fwd_x_logits, after the kernels' stems")]
pub fn forward_count(
    cfg: &AiecConfig,
    inp: TrainIn,
    counters: &mut CountersMut,
    update: Update,
    out: TrainOut,
) -> Result<InputDims> {
    fwd_x_logits(cfg, inp, counters, update, out)
}

/// The old name of [`fwd_gate`].
#[deprecated(note = "renamed fwd_gate, after the kernel's stem")]
pub fn forward_gate(cfg: &AiecConfig, dims: &InputDims, inp: GateIn, out: GateOut) -> Result<()> {
    fwd_gate(cfg, dims, inp, out)
}
