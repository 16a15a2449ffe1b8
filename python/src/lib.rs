//! `aiec._aiec`: the Python bindings of the crate, for `aiec.torch`.
//!
//! Thin by design: the extension links no libtorch. Python passes the torch
//! tensors themselves (never bare addresses, so what is read lives for the
//! call); [`tensor`] reads and checks each one's element type, device,
//! contiguity and alignment, [`backend`] checks them against the buffer's
//! role and turns them into the crate's views (CUDA, the simulator) or slices
//! (the CPU reference), calls the crate, and turns its typed errors into
//! Python exceptions with the same message. No AIEC rule is written here.

mod backend;
mod tensor;

use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::IntoPyDict;

use aiec::{AiecConfig, AiecError, Pool};

use backend::Kind;
use tensor::{read, read_opt, Place};

/// The crate's error as a Python exception: a wrong element type is a
/// `TypeError`, a failed host allocation a `MemoryError`, a missing GPU,
/// driver or compiler and device failures are a `RuntimeError`, every other
/// bad input a `ValueError`.
pub(crate) fn to_py(e: AiecError) -> PyErr {
    let msg = format!("aiec: {e}");
    match e {
        AiecError::DTypeMismatch { .. } => PyTypeError::new_err(msg),
        AiecError::OutOfMemory { .. } => PyMemoryError::new_err(msg),
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
    /// sizes of the buffers of a step on it, by name ([`Plan`]).
    fn plan(&self, shape: Vec<usize>) -> PyResult<Plan> {
        let dims = self.cfg.plan_input(&shape).map_err(to_py)?;
        let s = aiec::layout::Sizes::of(&dims, self.cfg.classes());
        Ok(Plan {
            batch: dims.batch,
            channels: dims.channels,
            positions: dims.positions,
            keep_words: s.keep,
            scratch_bytes: s.scratch_bytes,
            scratch_zero_bytes: s.scratch_zero_bytes,
        })
    }

    /// Checks targets (a contiguous `int64 [B]` CPU tensor) against `K`.
    fn check_targets(&self, targets: &Bound<'_, PyAny>, batch: usize) -> PyResult<()> {
        backend::check_targets(&self.cfg, read(targets, "targets")?, batch)
    }
}

/// The sizes of a step on one input shape ([`Config::plan`]), read by name:
/// `batch` (`B`), `channels` (`C`), `positions` (`P`), `keep_words` (the keep
/// bits' int32 words), `scratch_bytes` (the forward's scratch) and
/// `scratch_zero_bytes` (its first bytes, which must be zero; the rest needs no
/// content).
#[pyclass(frozen, get_all, module = "aiec._aiec")]
struct Plan {
    batch: usize,
    channels: usize,
    positions: usize,
    keep_words: usize,
    scratch_bytes: usize,
    scratch_zero_bytes: usize,
}

#[pymethods]
impl Plan {
    fn __repr__(&self) -> String {
        format!(
            "Plan(batch={}, channels={}, positions={}, keep_words={}, scratch_bytes={}, scratch_zero_bytes={})",
            self.batch,
            self.channels,
            self.positions,
            self.keep_words,
            self.scratch_bytes,
            self.scratch_zero_bytes
        )
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
        backend::sim_device().map(|d| Backend { kind: Kind::Device(d, Place::Cpu) })
    }

    /// GPU `ordinal` on the raw `CUstream` `stream` (PyTorch's
    /// `torch.cuda.current_stream(device).cuda_stream`; 0 is the legacy
    /// default stream), on the device's primary context.
    #[staticmethod]
    fn cuda(ordinal: usize, stream: u64) -> PyResult<Self> {
        // SAFETY: PyTorch's streams live for the process (its stream pool is
        // never freed), and PyTorch uses the primary context of each device.
        let dev = unsafe { aiec::Device::from_raw_stream(ordinal, stream as _) }.map_err(to_py)?;
        Ok(Backend { kind: Kind::Device(dev, Place::Cuda(ordinal)) })
    }

    /// `reference`, `sim` or `cuda`.
    #[getter]
    fn kind(&self) -> &'static str {
        match &self.kind {
            Kind::Reference => "reference",
            Kind::Device(d, _) if d.kind() == aiec::DeviceKind::Sim => "sim",
            Kind::Device(..) => "cuda",
        }
    }

    /// A human-readable name.
    #[getter]
    fn label(&self) -> String {
        match &self.kind {
            Kind::Reference => "cpu reference".into(),
            Kind::Device(d, _) => d.label().to_string(),
        }
    }

    /// The `float32` values of the `dv` scratch a training backward of an input
    /// of `shape` under `config` takes here: 0 on the reference, else `B C`
    /// per slice this device splits `dv`'s sums into, then `K C` per slice of
    /// `dW`'s past the first (`aiec::gpu::fused::dv_scratch_len`).
    fn dv_scratch_len(&self, config: &Config, shape: Vec<usize>) -> PyResult<usize> {
        let dims = config.cfg.plan_input(&shape).map_err(to_py)?;
        Ok(match &self.kind {
            Kind::Reference => 0,
            Kind::Device(d, _) => aiec::gpu::fused::dv_scratch_len(&config.cfg, &dims, d),
        })
    }

    /// Waits for the device and reports a bad device-side target seen since
    /// the last check (a `ValueError` naming it), once.
    fn synchronize(&self, py: Python<'_>) -> PyResult<()> {
        match &self.kind {
            Kind::Reference => Ok(()),
            Kind::Device(d, _) => py.detach(|| d.synchronize()).map_err(to_py),
        }
    }
}

type Obj<'py> = Bound<'py, PyAny>;

/// The pass over `x`: `y`, the keep bits and, when `v` is given, the
/// pooled `v [B, C]`.
#[pyfunction]
#[pyo3(signature = (backend, config, x, y, keep, v=None))]
fn fwd_x(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    x: &Obj<'_>,
    y: &Obj<'_>,
    keep: &Obj<'_>,
    v: Option<&Obj<'_>>,
) -> PyResult<()> {
    let cfg = config.cfg;
    let shape = tensor::shape(x, "x")?;
    let (x, y, keep, v) = (read(x, "x")?, read(y, "y")?, read(keep, "keep")?, read_opt(v, "v")?);
    py.detach(|| backend::fwd_x(&backend.kind, &cfg, &shape, x, y, keep, v))
}

/// The pass over `dy`: `dx = keep ? dy + unpool(dv) : 0` (`dv` may be `None`: `dx = keep ? dy : 0`).
#[pyfunction]
fn bwd_x(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    keep: &Obj<'_>,
    dv: Option<&Obj<'_>>,
    dy: &Obj<'_>,
    dx: &Obj<'_>,
) -> PyResult<()> {
    let cfg = config.cfg;
    let shape = tensor::shape(dy, "dy")?;
    let (keep, dv, dy, dx) = (read(keep, "keep")?, read_opt(dv, "dv")?, read(dy, "dy")?, read(dx, "dx")?);
    py.detach(|| backend::bwd_x(&backend.kind, &cfg, &shape, keep, dv, dy, dx))
}

/// Launches 1 to 3 of a training forward (pass over `x`, logits, CE, `g`,
/// counting into `act`, `inh`, `total`). The update: `update` when `step` is
/// `None`, else `step % interval == 0` read where `step` lives (the device).
/// `device_targets`: the targets have not been checked on the host.
#[pyfunction]
// A struct is not possible here: the torch custom ops (python/aiec/_ops.py) pass each tensor
// as its own positional argument, and pyo3 converts each; the Rust side regroups them at once
// (backend::*Args).
#[allow(clippy::too_many_arguments)] // one tensor per argument, as the torch op hands them over
fn fwd_x_logits(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    x: &Obj<'_>,
    w: &Obj<'_>,
    targets: &Obj<'_>,
    device_targets: bool,
    counters: (Obj<'_>, Obj<'_>, Obj<'_>),
    update: bool,
    step: Option<&Obj<'_>>,
    outputs: (Obj<'_>, Obj<'_>, Obj<'_>, Obj<'_>, Obj<'_>, Obj<'_>),
    scratch: &Obj<'_>,
) -> PyResult<()> {
    let cfg = config.cfg;
    let shape = tensor::shape(x, "x")?;
    let (act, inh, total) = &counters;
    let (y, keep, v, logits, ce, g) = &outputs;
    let args = backend::CountArgs {
        x: read(x, "x")?,
        w: read(w, "W")?,
        targets: read(targets, "targets")?,
        device_targets,
        counters: [
            read(act, "activation_counts")?,
            read(inh, "inhibition_counts")?,
            read(total, "total_counts")?,
        ],
        update,
        step: read_opt(step, "step")?,
        outputs: [
            read(y, "y")?,
            read(keep, "keep")?,
            read(v, "v")?,
            read(logits, "logits")?,
            read(ce, "ce")?,
            read(g, "g")?,
        ],
        scratch: read(scratch, "scratch")?,
    };
    py.detach(|| backend::fwd_x_logits(&backend.kind, &cfg, &shape, args))
}

/// Launch 4: the gate (`mask`, the stats `(S, N)` as 2 int64: `S` in the
/// float type of `v` at byte 0, `N` at byte 8). `shape` is the input's.
#[pyfunction]
// A struct is not possible here: the torch custom ops (python/aiec/_ops.py) pass each tensor
// as its own positional argument, and pyo3 converts each; the Rust side regroups them at once
// (backend::*Args).
#[allow(clippy::too_many_arguments)] // one tensor per argument, as the torch op hands them over
fn fwd_gate(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    shape: Vec<usize>,
    v: &Obj<'_>,
    w: &Obj<'_>,
    targets: &Obj<'_>,
    act: &Obj<'_>,
    inh: &Obj<'_>,
    mask: &Obj<'_>,
    stats: &Obj<'_>,
    scratch: &Obj<'_>,
) -> PyResult<()> {
    let cfg = config.cfg;
    let args = backend::GateArgs {
        v: read(v, "v")?,
        w: read(w, "W")?,
        targets: read(targets, "targets")?,
        act: read(act, "activation_counts")?,
        inh: read(inh, "inhibition_counts")?,
        mask: read(mask, "mask")?,
        stats: read(stats, "stats")?,
        scratch: read(scratch, "scratch")?,
    };
    py.detach(|| backend::fwd_gate(&backend.kind, &cfg, &shape, args))
}

/// A training backward: `dx` and `dW` (written, or added with `accumulate`);
/// `row_scale [B]` is the gradient of the loss with respect to each row's CE,
/// `scales` one `AiecLosses` as values of the statistics type, one per 4-byte
/// word (`LOSSES_FIELDS` / 4 gives each field's index), of which the backward
/// reads `aux_scale` and the gate scale (`2 * dLoss/dS`).
#[pyfunction]
// A struct is not possible here: the torch custom ops (python/aiec/_ops.py) pass each tensor
// as its own positional argument, and pyo3 converts each; the Rust side regroups them at once
// (backend::*Args).
#[allow(clippy::too_many_arguments)] // one tensor per argument, as the torch op hands them over
fn backward_train(
    py: Python<'_>,
    backend: &Backend,
    config: &Config,
    saved: (Obj<'_>, Obj<'_>, Obj<'_>, Obj<'_>),
    w: &Obj<'_>,
    row_scale: Option<&Obj<'_>>,
    scales: &Obj<'_>,
    dy: &Obj<'_>,
    dx: &Obj<'_>,
    dw: &Obj<'_>,
    dv_scratch: &Obj<'_>,
    accumulate: bool,
) -> PyResult<()> {
    let cfg = config.cfg;
    let shape = tensor::shape(dy, "dy")?;
    let (keep, v, g, mask) = &saved;
    let args = backend::BackwardArgs {
        saved: [read(keep, "keep")?, read(v, "v")?, read(g, "g")?, read(mask, "mask")?],
        w: read(w, "W")?,
        row_scale: read_opt(row_scale, "row_scale")?,
        scales: read(scales, "scales")?,
        dy: read(dy, "dy")?,
        dx: read(dx, "dx")?,
        dw: read(dw, "dW")?,
        dv_scratch: read(dv_scratch, "dv_scratch")?,
        accumulate,
    };
    py.detach(|| backend::backward_train(&backend.kind, &cfg, &shape, args))
}

/// The NVRTC library in use: `(path, major, minor, origin)`, loading it if
/// not yet loaded; a `RuntimeError` saying where the search looked when none
/// loads. The search order: README.md, section Diagnostics.
#[pyfunction]
fn nvrtc(py: Python<'_>) -> PyResult<(String, i32, i32, String)> {
    let f = py.detach(aiec::nvrtc::found).map_err(to_py)?;
    Ok((f.path.to_string(), f.version.0, f.version.1, f.origin.to_string()))
}

/// The directories searched for NVRTC after `AIEC_NVRTC_LIB` and the
/// libraries already loaded (each one and its `nvidia/*/lib`).
#[pyfunction]
fn nvrtc_search_dirs() -> Vec<String> {
    aiec::nvrtc::search_dirs().iter().map(|d| d.display().to_string()).collect()
}

/// The CUDA driver, without opening a context: `(version, [(name, arch)])`,
/// e.g. `(12080, [("NVIDIA H200", "sm_90")])`; a `RuntimeError` saying why
/// there is none.
#[pyfunction]
fn cuda_driver(py: Python<'_>) -> PyResult<(i32, Vec<(String, String)>)> {
    let d = py.detach(aiec::cuda_driver).map_err(to_py)?;
    Ok((d.version, d.gpus.into_iter().map(|(n, a)| (n, a.to_string())).collect()))
}

/// Where compiled kernels are cached (`AIEC_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/aiec`, else `~/.cache/aiec`).
#[pyfunction]
fn cache_dir() -> String {
    aiec::nvrtc::cache_dir().display().to_string()
}

fn dtype(name: &str) -> PyResult<aiec::DType> {
    aiec::DType::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
        PyValueError::new_err(format!("aiec: unknown dtype {name:?}; expected f32, f16 or bf16"))
    })
}

/// Every module a device may load for activations of each of `dtypes`
/// (`f32`, `f16`, `bf16`), once each: `(file, dtype or None)`.
#[pyfunction]
fn kernel_modules(dtypes: Vec<String>) -> PyResult<Vec<(String, Option<String>)>> {
    let mut out: Vec<aiec::nvrtc::Module> = Vec::new();
    for d in dtypes {
        for m in aiec::nvrtc::modules(dtype(&d)?) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    Ok(out.into_iter().map(|m| (m.file.to_string(), m.only.map(|d| d.name().to_string()))).collect())
}

fn arch(s: &str) -> PyResult<aiec::nvrtc::Arch> {
    aiec::nvrtc::Arch::parse(s).ok_or_else(|| {
        PyValueError::new_err(format!("aiec: unknown architecture {s:?}; expected e.g. sm_90"))
    })
}

/// `s` (`sm_90`, `90`, `9.0`) as `sm_90`; a `ValueError` for anything else.
#[pyfunction]
fn parse_arch(s: &str) -> PyResult<String> {
    arch(s).map(|a| a.to_string())
}

/// Compiles one module of [`kernel_modules`] for `arch` (`sm_90`) into the
/// cache (`cache_dir()`): `(path, what it holds, whether it was there)`.
#[pyfunction]
#[pyo3(signature = (file, only, arch))]
fn prepare_module(
    py: Python<'_>,
    file: &str,
    only: Option<&str>,
    arch: &str,
) -> PyResult<(String, String, bool)> {
    use aiec::nvrtc::{self, CacheOutcome, Module};
    let a = self::arch(arch)?;
    let (file, _) = nvrtc::sources::SOURCES
        .iter()
        .find(|(f, _)| *f == file)
        .ok_or_else(|| PyValueError::new_err(format!("aiec: no kernel file {file:?}")))?;
    let module = match only {
        None => Module::all(file),
        Some(d) => Module::only(file, dtype(d)?),
    };
    let p = py.detach(|| nvrtc::prepare_in(&nvrtc::cache_dir(), module, a)).map_err(to_py)?;
    Ok((p.path.display().to_string(), p.target.to_string(), p.outcome == CacheOutcome::Hit))
}

/// Gives NVRTC's search the interpreter's package folders (`sys.path` and
/// `sysconfig`'s purelib and platlib), where PyTorch's wheels put NVIDIA's
/// pip packages (`nvidia/cu13/lib`, `nvidia/cuda_nvrtc/lib`). Nothing is read
/// from disk until NVRTC is first needed.
fn add_python_search_dirs(py: Python<'_>) -> PyResult<()> {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for entry in py.import("sys")?.getattr("path")?.try_iter()? {
        if let Ok(s) = entry?.extract::<String>() {
            if !s.is_empty() {
                dirs.push(s.into());
            }
        }
    }
    let paths = py.import("sysconfig")?.call_method0("get_paths")?;
    for key in ["purelib", "platlib"] {
        if let Ok(s) = paths.get_item(key).and_then(|v| v.extract::<String>()) {
            dirs.push(s.into());
        }
    }
    aiec::nvrtc::add_search_dirs(dirs);
    Ok(())
}

#[pymodule]
fn _aiec(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Best effort: a failure here leaves the other steps of the search.
    let _ = add_python_search_dirs(m.py());
    m.add_class::<Config>()?;
    m.add_class::<Plan>()?;
    m.add_class::<Backend>()?;
    m.add_function(wrap_pyfunction!(fwd_x, m)?)?;
    m.add_function(wrap_pyfunction!(bwd_x, m)?)?;
    m.add_function(wrap_pyfunction!(fwd_x_logits, m)?)?;
    m.add_function(wrap_pyfunction!(fwd_gate, m)?)?;
    m.add_function(wrap_pyfunction!(backward_train, m)?)?;
    m.add_function(wrap_pyfunction!(nvrtc, m)?)?;
    m.add_function(wrap_pyfunction!(nvrtc_search_dirs, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_driver, m)?)?;
    m.add_function(wrap_pyfunction!(cache_dir, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_modules, m)?)?;
    m.add_function(wrap_pyfunction!(parse_arch, m)?)?;
    m.add_function(wrap_pyfunction!(prepare_module, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CRATE_VERSION", aiec::VERSION)?;
    m.add("HAS_SIM", cfg!(feature = "sim"))?;
    // The two structs Python builds or reads, from their one definition (aiec::params, pinned to
    // kernels/aiec_params.cuh): byte offset of each field, and the size.
    m.add("LOSSES_FIELDS", backend::LOSSES_FIELDS.into_py_dict(m.py())?)?;
    m.add("LOSSES_SIZE", std::mem::size_of::<aiec::params::AiecLosses>())?;
    m.add("GATE_STATS_FIELDS", backend::GATE_STATS_FIELDS.into_py_dict(m.py())?)?;
    m.add("GATE_STATS_SIZE", std::mem::size_of::<aiec::params::AiecGateStats>())?;
    Ok(())
}
