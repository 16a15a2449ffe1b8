//! The translation from checked tensor arguments ([`crate::tensor::Arg`]) to
//! the crate: slices for the CPU reference ([`aiec::cpu::buffers`]), views
//! for the simulator and CUDA ([`aiec::gpu::fused`]). Each buffer's element
//! type and device are checked here against its role ([`Roles`]), and every
//! buffer a call writes against every other for shared memory, on every
//! backend (the reference's `&mut` slices require it; the kernels' views are
//! also checked by the crate, which allows an in-place backward that Python
//! never asks for); lengths against the shapes are the crate's checks.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::PyResult;

use aiec::cpu::buffers::{
    self as reference, AuxSlices, CountersSlices, GateInSlices, SavedSlices, TrainBackwardSlices,
    TrainInSlices, TrainOutSlices,
};
use aiec::cpu::parts::RowScale;
use aiec::cpu::Float;
use aiec::gpu::fused::{
    self, AuxMut, CountersMut, DwMode, Dx, GateIn, GateOut, SavedRef, Scales, TargetCheck, TrainBackward,
    TrainIn, TrainOut, Update,
};
use aiec::layout::Sizes;
use aiec::params::{AiecGateStats, AiecLosses};
use aiec::{AiecConfig, DType, Device, SliceMut, SliceRef, TensorMut, TensorRef};
use std::mem::{offset_of, size_of};

use crate::tensor::{Arg, Elem, Place};
use crate::to_py;

/// Where the op runs.
pub(crate) enum Kind {
    /// The CPU reference, on host memory.
    Reference,
    /// The simulator (host memory) or a CUDA device (its memory).
    Device(Device, Place),
}

impl Kind {
    fn place(&self) -> Place {
        match self {
            Kind::Reference => Place::Cpu,
            Kind::Device(_, p) => *p,
        }
    }
}

/// The simulator, when the extension was built with it.
pub(crate) fn sim_device() -> PyResult<Device> {
    #[cfg(feature = "sim")]
    {
        Ok(Device::sim())
    }
    #[cfg(not(feature = "sim"))]
    {
        Err(pyo3::exceptions::PyRuntimeError::new_err(
            "aiec: this build has no simulator (built without the `sim` feature)",
        ))
    }
}

/// The element types and the device every buffer of one call must have:
/// the activation type (`x`, `y`, `dy`, `dx`) is the first tensor's, the
/// statistics type (`v`, logits, `W`, scales) float64 for float64 activations
/// (the reference only) and float32 otherwise.
#[derive(Clone, Copy)]
pub(crate) struct Roles {
    pub act: Elem,
    pub stat: Elem,
    pub place: Place,
}

impl Roles {
    /// The roles of a call whose activations are `x`'s, on `kind`.
    pub(crate) fn of(kind: &Kind, x: Arg) -> PyResult<Self> {
        let place = kind.place();
        x.on(place)?;
        let ok = match kind {
            Kind::Reference => matches!(x.elem, Elem::F32 | Elem::F64),
            Kind::Device(..) => matches!(x.elem, Elem::F32 | Elem::F16 | Elem::BF16),
        };
        if !ok {
            let supported = match kind {
                Kind::Reference => "float32 or float64 on the CPU reference",
                Kind::Device(..) => {
                    "float32, float16 or bfloat16 on the kernels (float64 on the CPU reference only)"
                }
            };
            return Err(PyTypeError::new_err(format!(
                "aiec: {} has element type {}; {supported}",
                x.name,
                x.elem.name()
            )));
        }
        let stat = if x.elem == Elem::F64 { Elem::F64 } else { Elem::F32 };
        Ok(Roles { act: x.elem, stat, place })
    }

    /// Of the activation type, on the call's device.
    pub(crate) fn act(&self, a: Arg<'_>) -> PyResult<()> {
        a.of(self.act)?.on(self.place).map(|_| ())
    }
    /// Of the statistics type, on the call's device.
    pub(crate) fn stat(&self, a: Arg<'_>) -> PyResult<()> {
        a.of(self.stat)?.on(self.place).map(|_| ())
    }
    /// Of `elem`, on the call's device.
    pub(crate) fn int(&self, a: Arg<'_>, elem: Elem) -> PyResult<()> {
        a.of(elem)?.on(self.place).map(|_| ())
    }

    fn device_dtype(&self) -> DType {
        match self.act {
            Elem::F16 => DType::F16,
            Elem::BF16 => DType::BF16,
            _ => DType::F32,
        }
    }
}

/// The written buffers must share no byte with any other buffer of the call
/// (the reference turns them into `&mut` slices).
fn check_disjoint(written: &[Arg], read: &[Arg]) -> PyResult<()> {
    let span = |a: &Arg| (a.ptr, a.ptr + (a.numel * a.elem_size()) as u64);
    for (i, w) in written.iter().enumerate() {
        let (ws, we) = span(w);
        for o in written[i + 1..].iter().chain(read) {
            let (os, oe) = span(o);
            if ws < oe && os < we && w.numel > 0 && o.numel > 0 {
                return Err(PyValueError::new_err(format!(
                    "aiec: {} and {} share memory; {} is written by the op",
                    w.name, o.name, w.name
                )));
            }
        }
    }
    Ok(())
}

/// A scratch buffer the reference does not use must still have the size the
/// kernels' would (`expected`): one contract for every backend.
fn unused_scratch(a: Arg, expected: usize) -> PyResult<()> {
    if a.numel != expected {
        return Err(PyValueError::new_err(format!(
            "aiec: {} takes {expected} values on the CPU reference, got {}",
            a.name, a.numel
        )));
    }
    Ok(())
}

/// The host memory of a checked CPU argument.
///
/// # Safety
/// `a` was read from a live CPU tensor of `a.numel` values of `T` that the
/// call holds, not written elsewhere for the returned lifetime.
unsafe fn host<'a, T>(a: Arg<'_>) -> &'a [T] {
    if a.numel == 0 {
        return &[];
    }
    // SAFETY: forwarded from the caller; `tensor::read` checked non-null and aligned.
    unsafe { std::slice::from_raw_parts(a.ptr as *const T, a.numel) }
}

/// # Safety
/// As [`host`], and nothing else reads or writes it meanwhile ([`check_disjoint`]).
unsafe fn host_mut<'a, T>(a: Arg<'_>) -> &'a mut [T] {
    if a.numel == 0 {
        return &mut [];
    }
    // SAFETY: forwarded from the caller; non-null and aligned (checked).
    unsafe { std::slice::from_raw_parts_mut(a.ptr as *mut T, a.numel) }
}

/// # Safety (of every view constructor below)
/// `a` was read from a live contiguous tensor on the backend's device, of
/// the element type the view takes (checked by [`Roles`]), which the call
/// holds until it returns; the kernels it queues run on the device's stream,
/// which orders them with PyTorch's later work on the same stream.
unsafe fn tref<'a>(dev: &Device, a: Arg, dt: DType, shape: &[usize]) -> PyResult<TensorRef<'a>> {
    // SAFETY: see above.
    unsafe { TensorRef::from_raw(dev, a.ptr, a.numel, dt, shape) }.map_err(to_py)
}
unsafe fn tmut<'a>(dev: &Device, a: Arg, dt: DType, shape: &[usize]) -> PyResult<TensorMut<'a>> {
    // SAFETY: see `tref`.
    unsafe { TensorMut::from_raw(dev, a.ptr, a.numel, dt, shape) }.map_err(to_py)
}
unsafe fn sref<'a, T: bytemuck::Pod>(dev: &Device, a: Arg) -> PyResult<SliceRef<'a, T>> {
    // SAFETY: see `tref`.
    unsafe { SliceRef::from_raw(dev, a.ptr, a.numel) }.map_err(to_py)
}
unsafe fn smut<'a, T: bytemuck::Pod>(dev: &Device, a: Arg) -> PyResult<SliceMut<'a, T>> {
    // SAFETY: see `tref`.
    unsafe { SliceMut::from_raw(dev, a.ptr, a.numel) }.map_err(to_py)
}

/// Runs `$body` with `$F` the reference's float type of the call.
macro_rules! on_reference_float {
    ($roles:expr, $F:ident => $body:expr) => {
        match $roles.act {
            Elem::F64 => {
                type $F = f64;
                $body
            }
            _ => {
                type $F = f32;
                $body
            }
        }
    };
}

/// The pass over `x`: `y`, the keep bits and, when given, the pooled `v`.
pub(crate) fn fwd_x(
    kind: &Kind,
    cfg: &AiecConfig,
    shape: &[usize],
    x: Arg,
    y: Arg,
    keep: Arg,
    v: Option<Arg>,
) -> PyResult<()> {
    let r = Roles::of(kind, x)?;
    r.act(y)?;
    r.int(keep, Elem::I32)?;
    if let Some(v) = v {
        r.stat(v)?;
    }
    let written: Vec<Arg> = [Some(y), Some(keep), v].into_iter().flatten().collect();
    check_disjoint(&written, &[x])?;
    match kind {
        Kind::Reference => on_reference_float!(r, F => {
            // SAFETY: checked CPU tensors of these types, held by the call, disjoint.
            unsafe {
                let vs = v.map(|v| host_mut::<F>(v));
                reference::fwd_x(cfg, shape, host::<F>(x), host_mut::<F>(y), host_mut::<u32>(keep), vs)
            }
            .map(|_| ())
            .map_err(to_py)
        }),
        Kind::Device(dev, _) => {
            let d = r.device_dtype();
            // SAFETY: see `tref`.
            unsafe {
                let xv = tref(dev, x, d, shape)?;
                let mut yv = tmut(dev, y, d, shape)?;
                let mut kv = smut::<u32>(dev, keep)?;
                match v {
                    Some(v) => fused::fwd_x(cfg, &xv, &mut yv, &mut kv, Some(&mut smut::<f32>(dev, v)?)),
                    None => fused::fwd_x(cfg, &xv, &mut yv, &mut kv, None),
                }
            }
            .map(|_| ())
            .map_err(to_py)
        }
    }
}

/// The pass over `dy`: `dx = keep ? dy + unpool(dv) : 0`.
pub(crate) fn bwd_x(
    kind: &Kind,
    cfg: &AiecConfig,
    shape: &[usize],
    keep: Arg,
    dv: Option<Arg>,
    dy: Arg,
    dx: Arg,
) -> PyResult<()> {
    let r = Roles::of(kind, dy)?;
    r.act(dx)?;
    r.int(keep, Elem::I32)?;
    if let Some(dv) = dv {
        r.stat(dv)?;
    }
    let plan = cfg.plan_input(shape).map_err(to_py)?;
    let read: Vec<Arg> = [Some(keep), Some(dy), dv].into_iter().flatten().collect();
    check_disjoint(&[dx], &read)?;
    match kind {
        Kind::Reference => on_reference_float!(r, F => {
            // SAFETY: checked CPU tensors of these types, held by the call, disjoint.
            unsafe {
                let dvs = dv.map(|dv| host::<F>(dv));
                reference::bwd_x(cfg, &plan, host::<u32>(keep), dvs, host::<F>(dy), host_mut::<F>(dx))
            }
            .map_err(to_py)
        }),
        Kind::Device(dev, _) => {
            let d = r.device_dtype();
            // SAFETY: see `tref`.
            unsafe {
                let kv = sref::<u32>(dev, keep)?;
                let dyv = tref(dev, dy, d, shape)?;
                let mut dxv = tmut(dev, dx, d, shape)?;
                let dx = Dx::Into { dy: &dyv, dx: &mut dxv };
                match dv {
                    Some(dv) => fused::bwd_x(cfg, &plan, &kv, &sref::<f32>(dev, dv)?, dx),
                    None => fused::backward(cfg, &plan, &kv, None, dx),
                }
            }
            .map_err(to_py)
        }
    }
}

/// Checks targets (`int64 [B]`, CPU) against `K`.
pub(crate) fn check_targets(cfg: &AiecConfig, targets: Arg, batch: usize) -> PyResult<()> {
    targets.of(Elem::I64)?.on(Place::Cpu)?;
    // SAFETY: a checked int64 CPU tensor, held by the call, only read.
    let t = unsafe { host::<i64>(targets) };
    aiec::config::check_targets(t, batch, cfg.classes()).map(|_| ()).map_err(to_py)
}

/// The buffers of launches 1 to 3.
pub(crate) struct CountArgs<'a> {
    pub x: Arg<'a>,
    pub w: Arg<'a>,
    pub targets: Arg<'a>,
    pub device_targets: bool,
    /// `act`, `inh`, `total`.
    pub counters: [Arg<'a>; 3],
    pub update: bool,
    /// The step counter (`int64 [1]`), when the update is decided where it lives.
    pub step: Option<Arg<'a>>,
    /// `y`, `keep`, `v`, `logits`, `ce`, `g`.
    pub outputs: [Arg<'a>; 6],
    pub scratch: Arg<'a>,
}

pub(crate) fn fwd_x_logits(kind: &Kind, cfg: &AiecConfig, shape: &[usize], a: CountArgs) -> PyResult<()> {
    let r = Roles::of(kind, a.x)?;
    let [act, inh, total] = a.counters;
    let [y, keep, v, logits, ce, g] = a.outputs;
    r.stat(a.w)?;
    r.int(a.targets, Elem::I64)?;
    for c in a.counters {
        r.int(c, Elem::I64)?;
    }
    if let Some(s) = a.step {
        r.int(s, Elem::I64)?;
        if s.numel != 1 {
            return Err(PyValueError::new_err(format!("aiec: step takes 1 int64, got {}", s.numel)));
        }
    }
    r.act(y)?;
    r.int(keep, Elem::I32)?;
    for o in [v, logits, ce, g] {
        r.stat(o)?;
    }
    r.int(a.scratch, Elem::U8)?;
    let mut read = vec![a.x, a.w, a.targets];
    read.extend(a.step);
    check_disjoint(&[act, inh, total, y, keep, v, logits, ce, g, a.scratch], &read)?;
    match kind {
        Kind::Reference => on_reference_float!(r, F => {
            let plan = cfg.plan_input(shape).map_err(to_py)?;
            unused_scratch(a.scratch, Sizes::of(&plan, cfg.classes()).scratch_bytes)?;
            // SAFETY: checked CPU tensors of these types, held by the call, disjoint.
            unsafe {
                let update = match a.step {
                    Some(s) => {
                        let step = host::<i64>(s).first().copied().unwrap_or(0);
                        step.rem_euclid(cfg.update_interval() as i64) == 0
                    }
                    None => a.update,
                };
                let mut counters = CountersSlices { act: host_mut(act), inh: host_mut(inh), total: host_mut(total) };
                let mut aux =
                    AuxSlices::<F> { v: host_mut(v), logits: host_mut(logits), ce: host_mut(ce), g: host_mut(g) };
                reference::fwd_x_logits(cfg, shape, TrainInSlices { x: host::<F>(a.x), w: host::<F>(a.w), targets: host::<i64>(a.targets) }, &mut counters, update, TrainOutSlices { y: host_mut::<F>(y), keep: host_mut::<u32>(keep), aux: &mut aux })
            }
            .map(|_| ())
            .map_err(to_py)
        }),
        Kind::Device(dev, _) => {
            let d = r.device_dtype();
            // SAFETY: see `tref`.
            unsafe {
                let step = match a.step {
                    Some(s) => Some(sref::<i64>(dev, s)?),
                    None => None,
                };
                let update = match &step {
                    Some(s) => Update::OnStep { step: s, interval: cfg.update_interval() },
                    None => Update::Now(a.update),
                };
                let mut counters =
                    CountersMut { act: smut(dev, act)?, inh: smut(dev, inh)?, total: smut(dev, total)? };
                // The gate's buffers are not used by launches 1 to 3: empty views.
                let mut aux = AuxMut {
                    v: smut(dev, v)?,
                    logits: smut(dev, logits)?,
                    ce: smut(dev, ce)?,
                    g: smut(dev, g)?,
                    mask: SliceMut::from_raw(dev, 0, 0).map_err(to_py)?,
                    stats: SliceMut::from_raw(dev, 0, 0).map_err(to_py)?,
                    scratch: smut(dev, a.scratch)?,
                };
                let check = if a.device_targets { TargetCheck::Device } else { TargetCheck::Host };
                fused::fwd_x_logits(
                    cfg,
                    TrainIn {
                        x: &tref(dev, a.x, d, shape)?,
                        w: &sref(dev, a.w)?,
                        targets: &sref(dev, a.targets)?,
                        check,
                    },
                    &mut counters,
                    update,
                    TrainOut { y: &mut tmut(dev, y, d, shape)?, keep: &mut smut(dev, keep)?, aux: &mut aux },
                )
            }
            .map(|_| ())
            .map_err(to_py)
        }
    }
}

/// The buffers of launch 4.
pub(crate) struct GateArgs<'a> {
    pub v: Arg<'a>,
    pub w: Arg<'a>,
    pub targets: Arg<'a>,
    pub act: Arg<'a>,
    pub inh: Arg<'a>,
    pub mask: Arg<'a>,
    /// `int64 [2]`: `S` at byte 0 (the step's float type), `N` at byte 8.
    pub stats: Arg<'a>,
    pub scratch: Arg<'a>,
}

pub(crate) fn fwd_gate(kind: &Kind, cfg: &AiecConfig, shape: &[usize], a: GateArgs) -> PyResult<()> {
    // `v` carries the statistics type; the activations' own type is not needed.
    let r = Roles::of(kind, a.v).map_err(|_| {
        PyTypeError::new_err(format!(
            "aiec: v must be float32 (float64 on the CPU reference) on {}, got {} on {}",
            kind.place(),
            a.v.elem.name(),
            a.v.place
        ))
    })?;
    if r.act == Elem::F16 || r.act == Elem::BF16 {
        return Err(PyTypeError::new_err(format!("aiec: v must be float32, got {}", r.act.name())));
    }
    r.stat(a.w)?;
    r.int(a.targets, Elem::I64)?;
    r.int(a.act, Elem::I64)?;
    r.int(a.inh, Elem::I64)?;
    r.int(a.mask, Elem::U8)?;
    r.int(a.stats, Elem::I64)?;
    r.int(a.scratch, Elem::U8)?;
    if a.stats.numel != STATS_WORDS {
        return Err(PyValueError::new_err(format!(
            "aiec: gate stats take {STATS_WORDS} int64, got {}",
            a.stats.numel
        )));
    }
    let plan = cfg.plan_input(shape).map_err(to_py)?;
    check_disjoint(&[a.mask, a.stats, a.scratch], &[a.v, a.w, a.targets, a.act, a.inh])?;
    match kind {
        Kind::Reference => on_reference_float!(r, F => {
            unused_scratch(a.scratch, Sizes::of(&plan, cfg.classes()).scratch_bytes)?;
            // SAFETY: checked CPU tensors of these types, held by the call, disjoint.
            unsafe {
                let (s, n) = reference::fwd_gate::<F>(cfg, &plan, GateInSlices { v: host(a.v), w: host(a.w), targets: host(a.targets), act: host(a.act), inh: host(a.inh) }, host_mut(a.mask))
                .map_err(to_py)?;
                write_stats::<F>(host_mut::<u64>(a.stats), s, n);
                Ok(())
            }
        }),
        Kind::Device(dev, _) => {
            // SAFETY: see `tref`; `stats` is 16 bytes (checked), one AiecGateStats.
            unsafe {
                debug_assert_eq!(std::mem::size_of::<AiecGateStats>(), 16);
                fused::fwd_gate(
                    cfg,
                    &plan,
                    GateIn {
                        v: &sref(dev, a.v)?,
                        w: &sref(dev, a.w)?,
                        targets: &sref(dev, a.targets)?,
                        act: &sref(dev, a.act)?,
                        inh: &sref(dev, a.inh)?,
                    },
                    GateOut {
                        mask: &mut smut(dev, a.mask)?,
                        stats: &mut SliceMut::from_raw(dev, a.stats.ptr, 1).map_err(to_py)?,
                        scratch: &mut smut(dev, a.scratch)?,
                    },
                )
            }
            .map_err(to_py)
        }
    }
}

/// The byte offset of each field of `AiecLosses` (Python builds the backward's
/// scales from these: `aiec._aiec.LOSSES_FIELDS`).
pub(crate) const LOSSES_FIELDS: [(&str, usize); 6] = [
    ("aux", offset_of!(AiecLosses, aux)),
    ("gate", offset_of!(AiecLosses, gate)),
    ("sum_sq", offset_of!(AiecLosses, sum_sq)),
    ("aux_scale", offset_of!(AiecLosses, aux_scale)),
    ("gate_scale", offset_of!(AiecLosses, gate_scale)),
    ("count", offset_of!(AiecLosses, count)),
];
/// The byte offset of each field of `AiecGateStats` (Python reads the gate's
/// stats through these: `aiec._aiec.GATE_STATS_FIELDS`).
pub(crate) const GATE_STATS_FIELDS: [(&str, usize); 2] =
    [("sum_sq", offset_of!(AiecGateStats, sum_sq)), ("count", offset_of!(AiecGateStats, count))];

/// The CPU reference's scales: the `AiecLosses` words as elements of `F`, a
/// field at element `offset / 4` (its own place for `F = f32`; float64 keeps
/// the indices, each element widened).
const LOSSES_WORDS: usize = size_of::<AiecLosses>() / 4;
const AUX_SCALE: usize = offset_of!(AiecLosses, aux_scale) / 4;
const GATE_SCALE: usize = offset_of!(AiecLosses, gate_scale) / 4;

/// `AiecGateStats` as `u64` words.
const STATS_WORDS: usize = size_of::<AiecGateStats>() / 8;

/// `S` (type `F`) and `N` where the kernels' `AiecGateStats` holds them (an
/// f32 `S` is followed by 4 zero bytes; a float64 `S` fills the word).
fn write_stats<F: Float>(words: &mut [u64], s: F, n: u64) {
    const S: usize = offset_of!(AiecGateStats, sum_sq) / 8;
    const N: usize = offset_of!(AiecGateStats, count) / 8;
    words[S] = if std::mem::size_of::<F>() == 4 {
        (s.to_f64() as f32).to_bits() as u64
    } else {
        s.to_f64().to_bits()
    };
    words[N] = n;
}

/// The buffers of a training backward.
pub(crate) struct BackwardArgs<'a> {
    /// `keep`, `v`, `g`, `mask`.
    pub saved: [Arg<'a>; 4],
    pub w: Arg<'a>,
    /// `[B]`, or the uniform `aux_scale` of `scales`.
    pub row_scale: Option<Arg<'a>>,
    /// One `AiecLosses`, a value of the statistics type per 4-byte word
    /// ([`LOSSES_FIELDS`]); the backward reads `aux_scale` and `gate_scale`.
    pub scales: Arg<'a>,
    pub dy: Arg<'a>,
    pub dx: Arg<'a>,
    pub dw: Arg<'a>,
    /// `f32 [B, C]` (the kernels' scratch; empty on the reference).
    pub dv_scratch: Arg<'a>,
    pub accumulate: bool,
}

pub(crate) fn backward_train(
    kind: &Kind,
    cfg: &AiecConfig,
    shape: &[usize],
    a: BackwardArgs,
) -> PyResult<()> {
    let r = Roles::of(kind, a.dy)?;
    let [keep, v, g, mask] = a.saved;
    r.act(a.dx)?;
    r.int(keep, Elem::I32)?;
    r.stat(v)?;
    r.stat(g)?;
    r.int(mask, Elem::U8)?;
    r.stat(a.w)?;
    if let Some(rs) = a.row_scale {
        r.stat(rs)?;
    }
    r.stat(a.scales)?;
    r.stat(a.dw)?;
    r.int(a.dv_scratch, Elem::F32)?;
    if a.scales.numel != LOSSES_WORDS {
        return Err(PyValueError::new_err(format!(
            "aiec: the loss scales take {LOSSES_WORDS} values, got {}",
            a.scales.numel
        )));
    }
    let plan = cfg.plan_input(shape).map_err(to_py)?;
    let mut read = vec![keep, v, g, mask, a.w, a.scales, a.dy];
    read.extend(a.row_scale);
    check_disjoint(&[a.dx, a.dw, a.dv_scratch], &read)?;
    match kind {
        Kind::Reference => on_reference_float!(r, F => {
            unused_scratch(a.dv_scratch, 0)?;
            // SAFETY: checked CPU tensors of these types, held by the call, disjoint.
            unsafe {
                let scales = host::<F>(a.scales);
                let rows = match a.row_scale {
                    Some(rs) => RowScale::PerRow(host::<F>(rs)),
                    None => RowScale::Uniform(scales[AUX_SCALE]),
                };
                let saved = SavedSlices::<F> { keep: host(keep), v: host(v), g: host(g), mask: host(mask) };
                reference::backward_train(cfg, &plan, &saved, TrainBackwardSlices { w: host(a.w), rows, gate_scale: scales[GATE_SCALE], dw: host_mut(a.dw), mode: if a.accumulate { DwMode::Accumulate } else { DwMode::Write } }, host(a.dy), host_mut(a.dx))
            }
            .map_err(to_py)
        }),
        Kind::Device(dev, _) => {
            let d = r.device_dtype();
            // SAFETY: see `tref`; `scales` is 8 float32 (checked), one AiecLosses.
            unsafe {
                debug_assert_eq!(std::mem::size_of::<AiecLosses>(), 32);
                let row_scale = match a.row_scale {
                    Some(rs) => Some(sref::<f32>(dev, rs)?),
                    None => None,
                };
                let scales = Scales {
                    losses: SliceRef::<AiecLosses>::from_raw(dev, a.scales.ptr, 1).map_err(to_py)?,
                    row_scale,
                };
                let saved = SavedRef { v: sref(dev, v)?, g: sref(dev, g)?, mask: sref(dev, mask)? };
                let mode = if a.accumulate { DwMode::Accumulate } else { DwMode::Write };
                let train = TrainBackward {
                    w: &sref(dev, a.w)?,
                    saved: &saved,
                    scales: &scales,
                    dv: &mut smut(dev, a.dv_scratch)?,
                    dw: &mut smut(dev, a.dw)?,
                    mode,
                };
                let dx = Dx::Into { dy: &tref(dev, a.dy, d, shape)?, dx: &mut tmut(dev, a.dx, d, shape)? };
                fused::backward(cfg, &plan, &sref(dev, keep)?, Some(train), dx)
            }
            .map_err(to_py)
        }
    }
}
