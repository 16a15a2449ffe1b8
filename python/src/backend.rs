//! The translation from Python's `(data_ptr, numel)` buffers to the crate:
//! slices for the CPU reference ([`aiec::cpu::buffers`]), views for the
//! simulator and CUDA ([`aiec::gpu::fused`]). Every length, type, device and
//! overlap check is the crate's.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::{PyErr, PyResult};

use aiec::cpu::buffers::{self as reference, AuxSlices, CountersSlices, SavedSlices};
use aiec::cpu::parts::RowScale;
use aiec::cpu::Float;
use aiec::gpu::fused::{self, AuxMut, CountersMut, DwMode, SavedRef, Scales, TargetCheck, Update};
use aiec::params::{AiecGateStats, AiecLosses};
use aiec::{AiecConfig, DType, Device, SliceMut, SliceRef, TensorMut, TensorRef};

use crate::to_py;

/// A contiguous buffer as Python hands it over: `(data_ptr, numel)`.
pub(crate) type Buf = (u64, usize);

/// Where the op runs.
pub(crate) enum Kind {
    /// The CPU reference, on host memory.
    Reference,
    /// The simulator (host memory) or a CUDA device (device memory).
    Device(Device),
}

/// A tensor's element type, by PyTorch's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dt {
    F32,
    F64,
    F16,
    BF16,
}

pub(crate) fn dtype(name: &str) -> PyResult<Dt> {
    Ok(match name {
        "float32" => Dt::F32,
        "float64" => Dt::F64,
        "float16" => Dt::F16,
        "bfloat16" => Dt::BF16,
        other => {
            return Err(PyTypeError::new_err(format!(
                "aiec: activations of type {other} are not supported (float32, float16, bfloat16; float64 on the CPU reference)"
            )))
        }
    })
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

/// The element type on a device (the kernels' types).
fn device_dtype(dt: Dt) -> PyResult<DType> {
    match dt {
        Dt::F32 => Ok(DType::F32),
        Dt::F16 => Ok(DType::F16),
        Dt::BF16 => Ok(DType::BF16),
        Dt::F64 => Err(PyTypeError::new_err(
            "aiec: float64 runs on the CPU reference only (CPU tensors without AIEC_TORCH_BACKEND=sim)",
        )),
    }
}

fn reference_only(dt: Dt) -> PyErr {
    PyTypeError::new_err(format!(
        "aiec: the CPU reference runs float32 and float64, not {dt:?}; for float16 or bfloat16 CPU tensors set \
         AIEC_TORCH_BACKEND=sim (the kernels in the simulator)"
    ))
}

/// The host memory of a buffer.
///
/// # Safety
/// `b.0` must address `b.1` values of `T` of host memory, live and not
/// written elsewhere for the returned lifetime.
pub(crate) unsafe fn host_slice<'a, T>(b: Buf) -> PyResult<&'a [T]> {
    if b.1 == 0 {
        return Ok(&[]);
    }
    check_host(b, std::mem::align_of::<T>())?;
    // SAFETY: forwarded from the caller; non-null and aligned (checked).
    Ok(unsafe { std::slice::from_raw_parts(b.0 as *const T, b.1) })
}

/// # Safety
/// As [`host_slice`], and nothing else reads or writes it meanwhile.
unsafe fn host_slice_mut<'a, T>(b: Buf) -> PyResult<&'a mut [T]> {
    if b.1 == 0 {
        return Ok(&mut []);
    }
    check_host(b, std::mem::align_of::<T>())?;
    // SAFETY: forwarded from the caller; non-null and aligned (checked).
    Ok(unsafe { std::slice::from_raw_parts_mut(b.0 as *mut T, b.1) })
}

fn check_host(b: Buf, align: usize) -> PyResult<()> {
    if b.0 == 0 || b.0 % align as u64 != 0 {
        return Err(PyValueError::new_err(format!(
            "aiec: a buffer of {} values at {:#x} is null or not aligned to {align} bytes",
            b.1, b.0
        )));
    }
    Ok(())
}

/// # Safety (of every view constructor below)
/// The Python caller passes the `data_ptr()` and `numel()` of contiguous
/// tensors of the named type on the backend's device, which it keeps alive
/// until the call returns; the kernels it queues run on the device's stream,
/// which orders them with PyTorch's later work on the same stream.
unsafe fn tref<'a>(dev: &Device, b: Buf, dt: DType, shape: &[usize]) -> PyResult<TensorRef<'a>> {
    // SAFETY: see above.
    unsafe { TensorRef::from_raw(dev, b.0, b.1, dt, shape) }.map_err(to_py)
}
unsafe fn tmut<'a>(dev: &Device, b: Buf, dt: DType, shape: &[usize]) -> PyResult<TensorMut<'a>> {
    // SAFETY: see `tref`.
    unsafe { TensorMut::from_raw(dev, b.0, b.1, dt, shape) }.map_err(to_py)
}
unsafe fn sref<'a, T: bytemuck::Pod>(dev: &Device, b: Buf) -> PyResult<SliceRef<'a, T>> {
    // SAFETY: see `tref`.
    unsafe { SliceRef::from_raw(dev, b.0, b.1) }.map_err(to_py)
}
unsafe fn smut<'a, T: bytemuck::Pod>(dev: &Device, b: Buf) -> PyResult<SliceMut<'a, T>> {
    // SAFETY: see `tref`.
    unsafe { SliceMut::from_raw(dev, b.0, b.1) }.map_err(to_py)
}

macro_rules! on_reference_float {
    ($dt:expr, $F:ident => $body:expr) => {
        match $dt {
            Dt::F32 => {
                type $F = f32;
                $body
            }
            Dt::F64 => {
                type $F = f64;
                $body
            }
            other => Err(reference_only(other)),
        }
    };
}

#[allow(clippy::too_many_arguments)] // one buffer per argument
pub(crate) fn activation_forward(
    kind: &Kind,
    cfg: &AiecConfig,
    dt: Dt,
    shape: &[usize],
    x: Buf,
    y: Buf,
    keep: Buf,
    v: Option<Buf>,
) -> PyResult<()> {
    match kind {
        Kind::Reference => on_reference_float!(dt, F => {
            // SAFETY: contiguous host tensors of the named type (the Python side's contract).
            let (xs, ys, ks) = unsafe { (host_slice::<F>(x)?, host_slice_mut::<F>(y)?, host_slice_mut::<u32>(keep)?) };
            // SAFETY: as above.
            let vs = match v { Some(v) => Some(unsafe { host_slice_mut::<F>(v) }?), None => None };
            reference::activation_forward(cfg, shape, xs, ys, ks, vs).map(|_| ()).map_err(to_py)
        }),
        Kind::Device(dev) => {
            let d = device_dtype(dt)?;
            // SAFETY: see `tref`.
            unsafe {
                let xv = tref(dev, x, d, shape)?;
                let mut yv = tmut(dev, y, d, shape)?;
                let mut kv = smut::<u32>(dev, keep)?;
                match v {
                    Some(v) => {
                        fused::activation_forward(cfg, &xv, &mut yv, &mut kv, &mut smut::<f32>(dev, v)?)
                    }
                    None => fused::forward_infer(cfg, &xv, &mut yv, &mut kv),
                }
            }
            .map(|_| ())
            .map_err(to_py)
        }
    }
}

#[allow(clippy::too_many_arguments)] // one buffer per argument
pub(crate) fn activation_backward(
    kind: &Kind,
    cfg: &AiecConfig,
    dt: Dt,
    shape: &[usize],
    keep: Buf,
    dv: Option<Buf>,
    dy: Buf,
    dx: Buf,
) -> PyResult<()> {
    let plan = cfg.plan_input(shape).map_err(to_py)?;
    match kind {
        Kind::Reference => on_reference_float!(dt, F => {
            // SAFETY: contiguous host tensors of the named type.
            let (ks, dys, dxs) = unsafe { (host_slice::<u32>(keep)?, host_slice::<F>(dy)?, host_slice_mut::<F>(dx)?) };
            // SAFETY: as above.
            let dvs = match dv { Some(dv) => Some(unsafe { host_slice::<F>(dv) }?), None => None };
            reference::activation_backward(cfg, &plan, ks, dvs, dys, dxs).map_err(to_py)
        }),
        Kind::Device(dev) => {
            let d = device_dtype(dt)?;
            // SAFETY: see `tref`.
            unsafe {
                let kv = sref::<u32>(dev, keep)?;
                let dyv = tref(dev, dy, d, shape)?;
                let mut dxv = tmut(dev, dx, d, shape)?;
                match dv {
                    Some(dv) => {
                        fused::activation_backward(cfg, &plan, &kv, &sref::<f32>(dev, dv)?, &dyv, &mut dxv)
                    }
                    None => fused::backward_infer(cfg, &plan, &kv, &dyv, &mut dxv),
                }
            }
            .map_err(to_py)
        }
    }
}

/// The buffers of launches 1 and 2.
pub(crate) struct CountArgs {
    pub x: Buf,
    pub w: Buf,
    pub targets: Buf,
    pub device_targets: bool,
    /// `act`, `inh`, `total`.
    pub counters: (Buf, Buf, Buf),
    pub update: bool,
    /// The step counter (`int64 [1]`), when the update is decided where it lives.
    pub step: Option<Buf>,
    /// `y`, `keep`, `v`, `logits`, `ce`, `g`.
    pub outputs: (Buf, Buf, Buf, Buf, Buf, Buf),
    pub scratch: Buf,
}

pub(crate) fn fused_count(
    kind: &Kind,
    cfg: &AiecConfig,
    dt: Dt,
    shape: &[usize],
    a: CountArgs,
) -> PyResult<()> {
    let (y, keep, v, logits, ce, g) = a.outputs;
    match kind {
        Kind::Reference => on_reference_float!(dt, F => {
            // SAFETY: contiguous host tensors of the named types, distinct (the Python side allocates each).
            unsafe {
                let update = match a.step {
                    Some(s) => {
                        let step = host_slice::<i64>(s)?.first().copied().unwrap_or(0);
                        step % cfg.update_interval() as i64 == 0
                    }
                    None => a.update,
                };
                let mut counters = CountersSlices {
                    act: host_slice_mut(a.counters.0)?,
                    inh: host_slice_mut(a.counters.1)?,
                    total: host_slice_mut(a.counters.2)?,
                };
                let mut aux = AuxSlices::<F> {
                    v: host_slice_mut(v)?,
                    logits: host_slice_mut(logits)?,
                    ce: host_slice_mut(ce)?,
                    g: host_slice_mut(g)?,
                };
                reference::forward_count(
                    cfg,
                    shape,
                    host_slice::<F>(a.x)?,
                    host_slice::<F>(a.w)?,
                    host_slice::<i64>(a.targets)?,
                    &mut counters,
                    update,
                    host_slice_mut::<F>(y)?,
                    host_slice_mut::<u32>(keep)?,
                    &mut aux,
                )
            }
            .map(|_| ())
            .map_err(to_py)
        }),
        Kind::Device(dev) => {
            let d = device_dtype(dt)?;
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
                let mut counters = CountersMut {
                    act: smut(dev, a.counters.0)?,
                    inh: smut(dev, a.counters.1)?,
                    total: smut(dev, a.counters.2)?,
                };
                // The gate's buffers are not used by launches 1 and 2: empty views.
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
                fused::forward_count(
                    cfg,
                    &tref(dev, a.x, d, shape)?,
                    &sref(dev, a.w)?,
                    &sref(dev, a.targets)?,
                    check,
                    &mut counters,
                    update,
                    &mut tmut(dev, y, d, shape)?,
                    &mut smut(dev, keep)?,
                    &mut aux,
                )
            }
            .map(|_| ())
            .map_err(to_py)
        }
    }
}

/// The buffers of launch 3.
pub(crate) struct GateArgs {
    pub v: Buf,
    pub w: Buf,
    pub targets: Buf,
    pub act: Buf,
    pub inh: Buf,
    pub mask: Buf,
    /// 16 bytes: `S` at byte 0 (the step's float type), `N` (int64) at byte 8.
    pub stats: Buf,
    pub scratch: Buf,
}

pub(crate) fn fused_gate(
    kind: &Kind,
    cfg: &AiecConfig,
    dt: Dt,
    shape: &[usize],
    a: GateArgs,
) -> PyResult<()> {
    let plan = cfg.plan_input(shape).map_err(to_py)?;
    match kind {
        Kind::Reference => on_reference_float!(dt, F => {
            // SAFETY: contiguous host tensors of the named types; `stats` is 16 bytes (2 int64).
            unsafe {
                let (s, n) = reference::forward_gate::<F>(
                    cfg,
                    &plan,
                    host_slice(a.v)?,
                    host_slice(a.w)?,
                    host_slice(a.targets)?,
                    host_slice(a.act)?,
                    host_slice(a.inh)?,
                    host_slice_mut(a.mask)?,
                )
                .map_err(to_py)?;
                write_stats::<F>(a.stats, s, n)
            }
        }),
        Kind::Device(dev) => {
            device_dtype(dt)?;
            // SAFETY: see `tref`; `stats` is 16 bytes, one AiecGateStats.
            unsafe {
                let stats_bytes = a.stats.1 * 8;
                if stats_bytes != std::mem::size_of::<AiecGateStats>() {
                    return Err(PyValueError::new_err(format!(
                        "aiec: gate stats take 2 int64, got {}",
                        a.stats.1
                    )));
                }
                fused::forward_gate(
                    cfg,
                    &plan,
                    &sref(dev, a.v)?,
                    &sref(dev, a.w)?,
                    &sref(dev, a.targets)?,
                    &sref(dev, a.act)?,
                    &sref(dev, a.inh)?,
                    &mut smut(dev, a.mask)?,
                    &mut SliceMut::from_raw(dev, a.stats.0, 1).map_err(to_py)?,
                    &mut smut(dev, a.scratch)?,
                )
            }
            .map_err(to_py)
        }
    }
}

/// `S` (type `F`) at byte 0 and `N` at byte 8 of a 16-byte buffer, as the
/// kernels' `AiecGateStats` lays them out (an f32 `S` is followed by 4 zero bytes).
///
/// # Safety
/// `stats` must be 2 int64 of host memory, not used elsewhere meanwhile.
unsafe fn write_stats<F: Float>(stats: Buf, s: F, n: u64) -> PyResult<()> {
    // SAFETY: forwarded from the caller.
    let words = unsafe { host_slice_mut::<u64>(stats) }?;
    if words.len() != 2 {
        return Err(PyValueError::new_err(format!("aiec: gate stats take 2 int64, got {}", words.len())));
    }
    words[0] = if std::mem::size_of::<F>() == 4 {
        (s.to_f64() as f32).to_bits() as u64
    } else {
        s.to_f64().to_bits()
    };
    words[1] = n;
    Ok(())
}

/// The buffers of a training backward.
pub(crate) struct BackwardArgs {
    /// `keep`, `v`, `g`, `mask`.
    pub saved: (Buf, Buf, Buf, Buf),
    pub w: Buf,
    /// `[B]`, or the uniform `aux_scale` (element 3 of `scales`).
    pub row_scale: Option<Buf>,
    /// 8 values of the step's float type; element 4 is the gate scale.
    pub scales: Buf,
    pub dy: Buf,
    pub dx: Buf,
    pub dw: Buf,
    /// `f32 [B, C]` (the kernels' scratch; unused by the reference).
    pub dv_scratch: Buf,
    pub accumulate: bool,
}

pub(crate) fn fused_backward(
    kind: &Kind,
    cfg: &AiecConfig,
    dt: Dt,
    shape: &[usize],
    a: BackwardArgs,
) -> PyResult<()> {
    let plan = cfg.plan_input(shape).map_err(to_py)?;
    let (keep, v, g, mask) = a.saved;
    match kind {
        Kind::Reference => on_reference_float!(dt, F => {
            // SAFETY: contiguous host tensors of the named types.
            unsafe {
                let scales = host_slice::<F>(a.scales)?;
                if scales.len() != 8 {
                    return Err(PyValueError::new_err(format!("aiec: the loss scales take 8 values, got {}", scales.len())));
                }
                let rows = match a.row_scale {
                    Some(r) => RowScale::PerRow(host_slice::<F>(r)?),
                    None => RowScale::Uniform(scales[3]),
                };
                let saved = SavedSlices::<F> {
                    keep: host_slice(keep)?,
                    v: host_slice(v)?,
                    g: host_slice(g)?,
                    mask: host_slice(mask)?,
                };
                reference::backward_train(
                    cfg,
                    &plan,
                    &saved,
                    host_slice(a.w)?,
                    rows,
                    scales[4],
                    host_slice(a.dy)?,
                    host_slice_mut(a.dx)?,
                    host_slice_mut(a.dw)?,
                    a.accumulate,
                )
            }
            .map_err(to_py)
        }),
        Kind::Device(dev) => {
            let d = device_dtype(dt)?;
            // SAFETY: see `tref`; `scales` is 8 floats, one AiecLosses.
            unsafe {
                if a.scales.1 != 8 {
                    return Err(PyValueError::new_err(format!(
                        "aiec: the loss scales take 8 values, got {}",
                        a.scales.1
                    )));
                }
                let row_scale = match a.row_scale {
                    Some(r) => Some(sref::<f32>(dev, r)?),
                    None => None,
                };
                let scales = Scales {
                    losses: SliceRef::<AiecLosses>::from_raw(dev, a.scales.0, 1).map_err(to_py)?,
                    row_scale,
                };
                let saved = SavedRef { v: sref(dev, v)?, g: sref(dev, g)?, mask: sref(dev, mask)? };
                let mode = if a.accumulate { DwMode::Accumulate } else { DwMode::Write };
                fused::backward_train(
                    cfg,
                    &plan,
                    &sref(dev, a.w)?,
                    &sref(dev, keep)?,
                    &saved,
                    &scales,
                    &tref(dev, a.dy, d, shape)?,
                    &mut tmut(dev, a.dx, d, shape)?,
                    &mut smut(dev, a.dv_scratch)?,
                    &mut smut(dev, a.dw)?,
                    mode,
                )
            }
            .map_err(to_py)
        }
    }
}
