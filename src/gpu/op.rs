//! Op level on a device: one layer's fused forward and backward, stateless,
//! mirroring [`crate::cpu::op`] name for name, with the per-step buffers from
//! a [`Workspace`] and the input, output and targets as the caller's views.
//!
//! A training forward is four launches (x pass; logits; CE, softmax gradient
//! and counters; gate) and a backward two (dv and dW; dy pass), with no host
//! synchronisation and no device-to-host copy ([`crate::gpu::fused`]). Host
//! targets are checked on the host before the first launch and copied into the
//! workspace (one host-to-device copy); device targets are checked by the
//! first kernel (a bad one changes no counter and is reported at the device's
//! next synchronisation or read).

use crate::buffer::Buffer;
use crate::config::{check_targets, AiecConfig};
use crate::device::{Device, Init};
use crate::error::{AiecError, Result};
use crate::gpu::dp::{self, CountSum};
use crate::gpu::fused::{
    self, AuxMut, DwMode, Dx, SavedRef, Scales, TargetCheck, TrainBackward, TrainIn, TrainOut,
};
use crate::gpu::loss::GpuLosses;
use crate::gpu::workspace::Workspace;
/// Re-exported from [`crate::gpu::counters`] and [`crate::gpu::record`], where they are defined.
pub use crate::gpu::{
    counters::GpuCounters,
    record::{GpuAux, GpuRecord},
};
use crate::layout::{ForwardScratch, Sizes};
use crate::origin::RecordId;
use crate::params::{AiecGateStats, AiecShape};
use crate::tensor::Tensor;
use crate::view::{SliceMut, SliceRef, TensorMut, TensorRef};

/// The targets of a training forward.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// Host memory: checked on the host (a bad target is an error before any
    /// launch), then copied to the device (one host-to-device copy).
    Host(&'a [i64]),
    /// Device memory (`i64 [B]`): no copy; checked by the first kernel (a bad
    /// target changes no counter and surfaces as
    /// [`AiecError::TargetOutOfRange`] at the device's next synchronisation or
    /// read).
    Device(&'a SliceRef<'a, i64>),
}

/// Gradients of one layer on the device.
#[derive(Debug)]
pub struct GpuGradients {
    /// Shape and type of `x`.
    pub dx: Tensor,
    /// `[K, C]` (zero for a forward without targets).
    pub dw: Buffer<f32>,
}

/// One layer's parameters and state as a forward reads and updates them.
pub struct LayerStep<'v, 'a> {
    /// `[K, C]`.
    pub w: &'v SliceRef<'a, f32>,
    /// The layer's counters, updated on the device when `update` is true.
    pub counters: &'v mut GpuCounters,
    /// Whether this step updates the counters.
    pub update: bool,
}

fn check_state(cfg: &AiecConfig, dev: &Device, w: &SliceRef<f32>, counters: &GpuCounters) -> Result<()> {
    let kc = cfg.classes() * cfg.channels();
    if w.len() != kc {
        return Err(AiecError::LengthMismatch { what: "W [K, C]", expected: kc, got: w.len() });
    }
    for (what, d) in [("W", w.device()), ("counters", counters.act.device())] {
        if d != dev {
            return Err(AiecError::DeviceMismatch {
                what,
                expected: dev.label().to_string(),
                got: d.label().to_string(),
            });
        }
    }
    if (counters.classes(), counters.channels()) != (cfg.classes(), cfg.channels()) {
        return Err(AiecError::LengthMismatch {
            what: "counters [K, C]",
            expected: kc,
            got: counters.classes() * counters.channels(),
        });
    }
    Ok(())
}

/// One layer's forward on `x`'s device into the caller's `y`, with the
/// per-step buffers from `ws`; see [`crate::cpu::op::forward`].
///
/// Without targets: `y` and the keep bits, one launch. With targets: three
/// launches, no host synchronisation; the counters update on the device when
/// `layer.update` is true. Everything is checked before the first launch.
pub fn forward_with(
    cfg: &AiecConfig,
    layer: LayerStep,
    x: &TensorRef,
    targets: Option<Targets>,
    ws: &Workspace,
    y: &mut TensorMut,
) -> Result<GpuRecord> {
    forward_with_sum(cfg, layer, x, targets, ws, y, None)
}

/// [`forward_with`], and on an update step with `sum`, the counts summed over
/// the ranks of a data-parallel job before the gate ([`crate::gpu::dp`]).
pub(crate) fn forward_with_sum(
    cfg: &AiecConfig,
    layer: LayerStep,
    x: &TensorRef,
    targets: Option<Targets>,
    ws: &Workspace,
    y: &mut TensorMut,
    sum: Option<&dyn CountSum>,
) -> Result<GpuRecord> {
    let LayerStep { w, counters, update } = layer;
    let dims = cfg.plan_input(x.shape())?;
    let dev = x.device().clone();
    check_state(cfg, &dev, w, counters)?;
    if ws.device() != &dev {
        return Err(AiecError::DeviceMismatch {
            what: "workspace",
            expected: dev.label().to_string(),
            got: ws.device().label().to_string(),
        });
    }
    if let Some(Targets::Host(t)) = targets {
        check_targets(t, dims.batch, cfg.classes())?;
    }
    let sizes = Sizes::of(&dims, cfg.classes());
    let mut keep: Buffer<u32> = ws.buffer("keep", sizes.keep, Init::Unwritten)?;
    let Some(targets) = targets else {
        fused::fwd_x(cfg, x, y, &mut keep.view_mut(), None)?;
        return Ok(GpuRecord { dims, y: None, keep, aux: None, ranks: None, id: RecordId::next() });
    };
    // Every buffer is written in full by the kernels, but the scratch (whose
    // gate ticket must start at zero).
    let mut v: Buffer<f32> = ws.buffer("v", sizes.bc, Init::Unwritten)?;
    let mut logits: Buffer<f32> = ws.buffer("logits", sizes.bk, Init::Unwritten)?;
    let mut ce: Buffer<f32> = ws.buffer("ce", sizes.batch, Init::Unwritten)?;
    let mut g: Buffer<f32> = ws.buffer("g", sizes.bk, Init::Unwritten)?;
    let mut mask: Buffer<u8> = ws.buffer("mask", sizes.bc, Init::Unwritten)?;
    let mut stats: Buffer<AiecGateStats> = ws.buffer("stats", 1, Init::Unwritten)?;
    let layout = ForwardScratch::of(&AiecShape::new(&dims, cfg.classes(), cfg.tau() as f32, false));
    let mut scratch: Buffer<u8> = ws.scratch(&layout)?;
    let uploaded: Buffer<i64>;
    let (tview, check) = match targets {
        Targets::Host(t) => {
            let mut b: Buffer<i64> = ws.buffer("targets", t.len(), Init::Unwritten)?;
            b.copy_from(t)?;
            uploaded = b;
            (uploaded.view(), TargetCheck::Host)
        }
        Targets::Device(t) => (
            // SAFETY: the same memory as `t`, which the caller keeps borrowed for this call.
            unsafe { SliceRef::from_raw(t.device(), t.address(), t.len()) }?,
            TargetCheck::Device,
        ),
    };
    {
        let mut aux = AuxMut {
            v: v.view_mut(),
            logits: logits.view_mut(),
            ce: ce.view_mut(),
            g: g.view_mut(),
            mask: mask.view_mut(),
            stats: stats.view_mut(),
            scratch: scratch.view_mut(),
        };
        let inp = TrainIn { x, w, targets: &tview, check };
        let out = TrainOut { y, keep: &mut keep.view_mut(), aux: &mut aux };
        match sum {
            Some(sum) if update => {
                dp::forward_summed(cfg, inp, counters, out, ws, sum)?;
            }
            _ => {
                fused::forward_train(cfg, inp, &mut counters.views_mut(), fused::Update::Now(update), out)?;
            }
        }
    }
    let aux = GpuAux { v, logits, ce, g, mask, stats, classes: cfg.classes(), updated: update };
    Ok(GpuRecord { dims, y: None, keep, aux: Some(aux), ranks: None, id: RecordId::next() })
}

/// One layer's forward, allocating `y` and its own buffers; see [`forward_with`].
pub fn forward(
    cfg: &AiecConfig,
    x: &Tensor,
    w: &Buffer<f32>,
    targets: Option<&[i64]>,
    counters: &mut GpuCounters,
    update: bool,
) -> Result<GpuRecord> {
    let ws = Workspace::new(x.device());
    let layer = LayerStep { w: &w.view(), counters, update };
    forward_owned(cfg, layer, x, targets.map(Targets::Host), &ws, None)
}

/// [`forward_with`] into a new `y` (kept in the record).
pub(crate) fn forward_owned(
    cfg: &AiecConfig,
    layer: LayerStep,
    x: &Tensor,
    targets: Option<Targets>,
    ws: &Workspace,
    sum: Option<&dyn CountSum>,
) -> Result<GpuRecord> {
    cfg.plan_input(x.shape())?;
    // Written in full by the kernels (the simulator fills unwritten memory
    // with NaN bytes, so the tests would see a gap).
    let mut y = Tensor::unwritten(x.device(), x.dtype(), x.shape())?;
    let mut rec = forward_with_sum(cfg, layer, &x.view(), targets, ws, &mut y.view_mut(), sum)?;
    rec.y = Some(y);
    Ok(rec)
}

fn saved(aux: &GpuAux) -> SavedRef<'_> {
    SavedRef { v: aux.v.view(), g: aux.g.view(), mask: aux.mask.view() }
}

/// Where one layer's backward writes: `dx` where [`Dx`] says (its own buffer
/// or over `dy`), `dW` (`[K, C]`) written or accumulated per `mode`.
pub struct GradsMut<'v, 'y, 'x, 'g> {
    /// `dy` and where `dx` goes.
    pub dx: Dx<'v, 'y, 'x>,
    /// `[K, C]`.
    pub dw: &'v mut SliceMut<'g, f32>,
    /// How `dw` is delivered.
    pub mode: DwMode,
}

/// One layer's backward into the caller's `dx` and `dW` ([`GradsMut`]), with
/// its `dv` scratch from `ws` ([`fused::dv_scratch_len`]). Two launches (three
/// where `dv`'s sums split) for a training record, one for a
/// record without targets (which leaves `dW` zero, or unchanged when
/// accumulating); no host synchronisation. `losses` must come from
/// [`crate::gpu::combine`] over the records of every layer sharing the
/// targets, this one among them ([`AiecError::ForeignScales`] otherwise).
pub fn backward_with(
    cfg: &AiecConfig,
    record: &GpuRecord,
    w: &SliceRef<f32>,
    losses: &GpuLosses,
    ws: &Workspace,
    out: GradsMut,
) -> Result<()> {
    let GradsMut { dx, dw, mode } = out;
    let dev = dx.device().clone();
    let Some(aux) = &record.aux else {
        fused::backward(cfg, &record.dims, &record.keep.view(), None, dx)?;
        return clear_dw(cfg, &dev, dw, mode);
    };
    losses.check_record(record)?;
    losses.check_device(&dev)?;
    let dv_len = fused::dv_scratch_len(cfg, &record.dims, &dev);
    let mut dv: Buffer<f32> = ws.buffer("dv", dv_len, Init::Unwritten)?;
    let scales = Scales { losses: losses.buf.view(), row_scale: None };
    let train = TrainBackward { w, saved: &saved(aux), scales: &scales, dv: &mut dv.view_mut(), dw, mode };
    let done = fused::backward(cfg, &record.dims, &record.keep.view(), Some(train), dx);
    done
}

/// `dW = 0` for a record without targets (nothing to accumulate).
fn clear_dw(cfg: &AiecConfig, dev: &Device, dw: &mut SliceMut<f32>, mode: DwMode) -> Result<()> {
    dw.expect("dW [K, C]", dev, cfg.classes() * cfg.channels())?;
    if mode == DwMode::Write {
        // SAFETY: `dw` is a live, writable view of this device of K*C floats.
        unsafe { dev.memset(dw.address(), 0, dw.byte_len()) }?;
    }
    Ok(())
}

/// One layer's backward, writing `dx` over `dy` (in place); returns a new `dW`.
pub fn backward_inplace(
    cfg: &AiecConfig,
    record: &GpuRecord,
    w: &Buffer<f32>,
    dy: &mut Tensor,
    losses: &GpuLosses,
) -> Result<Buffer<f32>> {
    let ws = Workspace::new(dy.device());
    backward_inplace_owned(cfg, record, &w.view(), dy, losses, &ws)
}

pub(crate) fn backward_inplace_owned(
    cfg: &AiecConfig,
    record: &GpuRecord,
    w: &SliceRef<f32>,
    dy: &mut Tensor,
    losses: &GpuLosses,
    ws: &Workspace,
) -> Result<Buffer<f32>> {
    // Written in full by aiec_bwd_dv_dw (or cleared for a record without targets).
    let mut dw = Buffer::unwritten(dy.device(), cfg.classes() * cfg.channels())?;
    {
        let (mut dyv, mut dwv) = (dy.view_mut(), dw.view_mut());
        let out = GradsMut { dx: Dx::OverDy(&mut dyv), dw: &mut dwv, mode: DwMode::Write };
        backward_with(cfg, record, w, losses, ws, out)?;
    }
    Ok(dw)
}

/// One layer's backward into a new `dx` and `dW`; see [`backward_with`].
pub fn backward(
    cfg: &AiecConfig,
    record: &GpuRecord,
    w: &Buffer<f32>,
    dy: &Tensor,
    losses: &GpuLosses,
) -> Result<GpuGradients> {
    let ws = Workspace::new(dy.device());
    backward_owned(cfg, record, &w.view(), dy, losses, &ws)
}

pub(crate) fn backward_owned(
    cfg: &AiecConfig,
    record: &GpuRecord,
    w: &SliceRef<f32>,
    dy: &Tensor,
    losses: &GpuLosses,
    ws: &Workspace,
) -> Result<GpuGradients> {
    let dev = dy.device();
    // Both written in full by the backward's launches (dW cleared for a record without targets).
    let mut dx = Tensor::unwritten(dev, dy.dtype(), dy.shape())?;
    let mut dw = Buffer::unwritten(dev, cfg.classes() * cfg.channels())?;
    {
        let (dyv, mut dxv, mut dwv) = (dy.view(), dx.view_mut(), dw.view_mut());
        let out = GradsMut { dx: Dx::Into { dy: &dyv, dx: &mut dxv }, dw: &mut dwv, mode: DwMode::Write };
        backward_with(cfg, record, w, losses, ws, out)?;
    }
    Ok(GpuGradients { dx, dw })
}
