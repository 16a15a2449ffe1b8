//! `aiec._aiec`: the Python bindings of the crate, for `aiec.torch`.
//!
//! Thin by design: the extension links no libtorch. Python passes every
//! tensor as `(data_ptr, numel)` of contiguous memory it allocated (PyTorch's
//! caching allocator on CUDA), the element type by name, and the shape; this
//! module turns them into the crate's views (CUDA, the simulator) or slices
//! (the CPU reference), calls the crate, and turns its typed errors into
//! Python exceptions with the same message. No AIEC rule is written here.

mod backend;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use aiec::{AiecConfig, AiecError, Pool};

use backend::{Buf, Kind};

/// The crate's error as a Python exception: a wrong element type is a
/// `TypeError`, a missing GPU, driver or compiler and device failures are a
/// `RuntimeError`, every other bad input a `ValueError`.
pub(crate) fn to_py(e: AiecError) -> PyErr {
    let msg = format!("aiec: {e}");
    match e {
        AiecError::DTypeMismatch { .. } => PyTypeError::new_err(msg),
        AiecError::CudaUnavailable { .. }
        | AiecError::NvrtcUnavailable { .. }
        | AiecError::NvrtcCompile { .. }
        | AiecError::Driver { .. }
        | AiecError::Sim { .. } => PyRuntimeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// A layer's configuration: `C`, `K`, `tau`, the pooling mode and the update
/// interval, checked by the crate.
#[pyclass(frozen, module = "aiec._aiec")]
struct Config {
    cfg: AiecConfig,
}

#[pymethods]
impl Config {
    #[new]
    fn new(channels: usize, classes: usize, tau: f64, pool: &str, update_interval: u64) -> PyResult<Self> {
        let p = Pool::from_name(pool).ok_or_else(|| {
            PyValueError::new_err(format!(
                "aiec: unknown pooling mode {pool:?}; expected one of token, avg_token, avg_hw, none"
            ))
        })?;
        let cfg = AiecConfig::with_interval(channels, classes, tau, update_interval, p).map_err(to_py)?;
        Ok(Config { cfg })
    }

    /// Checks an input shape against the pooling mode and `C`, and returns the
    /// sizes of the buffers of a step on it: `(B, C, P, keep_words, scratch_bytes)`.
    fn plan(&self, shape: Vec<usize>) -> PyResult<(usize, usize, usize, usize, usize)> {
        let dims = self.cfg.plan_input(&shape).map_err(to_py)?;
        let s = aiec::gpu::fused::Sizes::of(&dims, self.cfg.classes());
        Ok((dims.batch, dims.channels, dims.positions, s.keep, s.scratch_bytes))
    }

    /// Checks targets held in host memory (`int64 [B]`) against `K`.
    fn check_targets(&self, targets: (u64, usize), batch: usize) -> PyResult<()> {
        // SAFETY: the caller passes a contiguous int64 CPU tensor of `targets.1` values.
        let t = unsafe { backend::host_slice::<i64>(targets) }?;
        aiec::cpu::op::check_targets(t, batch, self.cfg.classes()).map(|_| ()).map_err(to_py)
    }
}

/// Where the op runs: the CPU reference, the simulator, or a CUDA GPU on a
/// borrowed stream.
#[pyclass(frozen, module = "aiec._aiec")]
struct Backend {
    kind: Kind,
}

#[pymethods]
impl Backend {
    /// The CPU reference (float32 and float64 host memory).
    #[staticmethod]
    fn reference() -> Self {
        Backend { kind: Kind::Reference }
    }

    /// The CPU simulator running the CUDA kernels on host memory (float32,
    /// float16, bfloat16).
    #[staticmethod]
    fn sim() -> PyResult<Self> {
        backend::sim_device().map(|d| Backend { kind: Kind::Device(d) })
    }

    /// GPU `ordinal` on the raw `CUstream` `stream` (PyTorch's
    /// `torch.cuda.current_stream(device).cuda_stream`; 0 is the legacy
    /// default stream), on the device's primary context.
    #[staticmethod]
    fn cuda(ordinal: usize, stream: u64) -> PyResult<Self> {
        // SAFETY: PyTorch's streams live for the process (its stream pool is
        // never freed), and PyTorch uses the primary context of each device.
        let dev = unsafe { aiec::Device::from_raw_stream(ordinal, stream as _) }.map_err(to_py)?;
        Ok(Backend { kind: Kind::Device(dev) })
    }

    /// `reference`, `sim` or `cuda`.
    #[getter]
    fn kind(&self) -> &'static str {
        match &self.kind {
            Kind::Reference => "reference",
            Kind::Device(d) if d.kind() == aiec::DeviceKind::Sim => "sim",
            Kind::Device(_) => "cuda",
        }
    }

    /// A human-readable name.
    #[getter]
    fn label(&self) -> String {
        match &self.kind {
            Kind::Reference => "cpu reference".into(),
            Kind::Device(d) => d.label().to_string(),
        }
    }

    /// Waits for the device and reports a bad device-side target seen since
    /// the last check (a `ValueError` naming it), once.
    fn synchronize(&self, py: Python<'_>) -> PyResult<()> {
        match &self.kind {
            Kind::Reference => Ok(()),
            Kind::Device(d) => py.detach(|| d.synchronize()).map_err(to_py),
        }
    }
}

/// The pass over `x`: `y`, the keep bits and, when `v` is given, the
/// pooled `v [B, C]`.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // one tensor per argument, as the Python side has them
fn activation_forward(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    dtype: &str,
    shape: Vec<usize>,
    x: Buf,
    y: Buf,
    keep: Buf,
    v: Option<Buf>,
) -> PyResult<()> {
    let cfg = config.cfg;
    let dt = backend::dtype(dtype)?;
    py.detach(|| backend::activation_forward(&backend.kind, &cfg, dt, &shape, x, y, keep, v))
}

/// The pass over `dy`: `dx = keep ? dy + unpool(dv) : 0` (`dv` may be `None`: `dx = keep ? dy : 0`).
#[pyfunction]
#[allow(clippy::too_many_arguments)] // one tensor per argument
fn activation_backward(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    dtype: &str,
    shape: Vec<usize>,
    keep: Buf,
    dv: Option<Buf>,
    dy: Buf,
    dx: Buf,
) -> PyResult<()> {
    let cfg = config.cfg;
    let dt = backend::dtype(dtype)?;
    py.detach(|| backend::activation_backward(&backend.kind, &cfg, dt, &shape, keep, dv, dy, dx))
}

/// Launches 1 and 2 of a training forward (pass over `x`, logits, CE, `g`,
/// counting into `act`, `inh`, `total`). The update: `update` when `step` is
/// `None`, else `step % interval == 0` read where `step` lives (the device).
/// `device_targets`: the targets have not been checked on the host.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // one tensor per argument
fn fused_count(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    dtype: &str,
    shape: Vec<usize>,
    x: Buf,
    w: Buf,
    targets: Buf,
    device_targets: bool,
    counters: (Buf, Buf, Buf),
    update: bool,
    step: Option<Buf>,
    outputs: (Buf, Buf, Buf, Buf, Buf, Buf),
    scratch: Buf,
) -> PyResult<()> {
    let cfg = config.cfg;
    let dt = backend::dtype(dtype)?;
    let args = backend::CountArgs { x, w, targets, device_targets, counters, update, step, outputs, scratch };
    py.detach(|| backend::fused_count(&backend.kind, &cfg, dt, &shape, args))
}

/// Launch 3: the gate (`mask`, the stats `(S, N)` as 16 bytes: `S` in the
/// float type of the step at byte 0, `N` as int64 at byte 8).
#[pyfunction]
#[allow(clippy::too_many_arguments)] // one tensor per argument
fn fused_gate(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    dtype: &str,
    shape: Vec<usize>,
    v: Buf,
    w: Buf,
    targets: Buf,
    act: Buf,
    inh: Buf,
    mask: Buf,
    stats: Buf,
    scratch: Buf,
) -> PyResult<()> {
    let cfg = config.cfg;
    let dt = backend::dtype(dtype)?;
    let args = backend::GateArgs { v, w, targets, act, inh, mask, stats, scratch };
    py.detach(|| backend::fused_gate(&backend.kind, &cfg, dt, &shape, args))
}

/// A training backward: `dx` and `dW` (written, or added with `accumulate`);
/// `row_scale [B]` is the gradient of the loss with respect to each row's CE,
/// `scales` 8 values of the step's float type whose element 4 is the gate
/// scale (`2 * dLoss/dS`), as `AiecLosses` holds it.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // one tensor per argument
fn fused_backward(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    dtype: &str,
    shape: Vec<usize>,
    saved: (Buf, Buf, Buf, Buf),
    w: Buf,
    row_scale: Option<Buf>,
    scales: Buf,
    dy: Buf,
    dx: Buf,
    dw: Buf,
    dv_scratch: Buf,
    accumulate: bool,
) -> PyResult<()> {
    let cfg = config.cfg;
    let dt = backend::dtype(dtype)?;
    let args = backend::BackwardArgs { saved, w, row_scale, scales, dy, dx, dw, dv_scratch, accumulate };
    py.detach(|| backend::fused_backward(&backend.kind, &cfg, dt, &shape, args))
}

#[pymodule]
fn _aiec(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Config>()?;
    m.add_class::<Backend>()?;
    m.add_function(wrap_pyfunction!(activation_forward, m)?)?;
    m.add_function(wrap_pyfunction!(activation_backward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_count, m)?)?;
    m.add_function(wrap_pyfunction!(fused_gate, m)?)?;
    m.add_function(wrap_pyfunction!(fused_backward, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("HAS_SIM", cfg!(feature = "sim"))?;
    Ok(())
}
