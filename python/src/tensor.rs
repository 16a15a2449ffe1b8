//! Tensors at the boundary. The extension takes the torch tensors themselves,
//! never bare addresses: what it reads is held by the call's arguments for as
//! long as the call runs, and every property that memory safety rests on (the
//! element type, the device, contiguity, alignment, the element count) is read
//! from the tensor here, on the Rust side, and checked against what the role
//! of the buffer requires before anything runs. Lengths against the shapes
//! are then the crate's checks.
//!
//! The extension links no libtorch: the properties are read through the
//! tensor's Python attributes (`data_ptr()`, `numel()`, `dtype`, `device`,
//! `layout`, `is_contiguous()`), a handful of attribute reads per tensor.

use std::marker::PhantomData;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// A tensor's element type, by PyTorch's name (`torch.float32` is `F32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    U8,
}

impl Elem {
    fn from_torch(name: &str) -> Option<Self> {
        Some(match name {
            "torch.float32" => Elem::F32,
            "torch.float64" => Elem::F64,
            "torch.float16" => Elem::F16,
            "torch.bfloat16" => Elem::BF16,
            "torch.int64" => Elem::I64,
            "torch.int32" => Elem::I32,
            "torch.uint8" => Elem::U8,
            _ => return None,
        })
    }

    /// PyTorch's name without the `torch.` prefix.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Elem::F32 => "float32",
            Elem::F64 => "float64",
            Elem::F16 => "float16",
            Elem::BF16 => "bfloat16",
            Elem::I64 => "int64",
            Elem::I32 => "int32",
            Elem::U8 => "uint8",
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::F64 | Elem::I64 => 8,
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 | Elem::BF16 => 2,
            Elem::U8 => 1,
        }
    }
}

/// Where a tensor's memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Cpu => write!(f, "cpu"),
            Place::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// One tensor argument, read and checked: a contiguous, aligned, strided
/// tensor of `elem` on `place`. The lifetime ties it to the borrowed Python
/// object it was read from, so it cannot outlive the call that holds that
/// object; it is `Send`, so it can cross into code that runs without the GIL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arg<'a> {
    /// The argument's name, for error messages.
    pub name: &'static str,
    pub ptr: u64,
    pub numel: usize,
    pub elem: Elem,
    pub place: Place,
    _held: PhantomData<&'a ()>,
}

fn attr_err(name: &str, what: &str, e: PyErr) -> PyErr {
    PyTypeError::new_err(format!("aiec: {name} must be a torch.Tensor ({what}: {e})"))
}

/// Reads the tensor `obj` passed as argument `name`, and checks what holds
/// for every buffer: strided layout, a supported element type, contiguity,
/// a non-null address aligned to the element size (when it has elements).
pub(crate) fn read<'a>(obj: &'a Bound<'_, PyAny>, name: &'static str) -> PyResult<Arg<'a>> {
    let layout = obj.getattr("layout").map_err(|e| attr_err(name, "layout", e))?.str()?.to_string();
    if layout != "torch.strided" {
        return Err(PyTypeError::new_err(format!(
            "aiec: {name} must be a dense (strided) tensor, got {layout}"
        )));
    }
    let dtype = obj.getattr("dtype").map_err(|e| attr_err(name, "dtype", e))?.str()?.to_string();
    let elem = Elem::from_torch(&dtype).ok_or_else(|| {
        PyTypeError::new_err(format!("aiec: {name} has element type {dtype}, which no AIEC buffer has"))
    })?;
    let device = obj.getattr("device").map_err(|e| attr_err(name, "device", e))?;
    let kind: String = device.getattr("type")?.extract()?;
    let place = match kind.as_str() {
        "cpu" => Place::Cpu,
        "cuda" => {
            let index: Option<usize> = device.getattr("index")?.extract()?;
            Place::Cuda(index.unwrap_or(0))
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "aiec: {name} is on {other}; CPU or CUDA tensors only"
            )))
        }
    };
    let contiguous: bool = obj.call_method0("is_contiguous")?.extract()?;
    if !contiguous {
        return Err(PyValueError::new_err(format!("aiec: {name} must be contiguous")));
    }
    let numel: usize = obj.call_method0("numel")?.extract()?;
    let ptr: u64 = obj.call_method0("data_ptr")?.extract()?;
    if numel > 0 && (ptr == 0 || ptr % elem.size() as u64 != 0) {
        return Err(PyValueError::new_err(format!(
            "aiec: {name} ({numel} values of {}) at {ptr:#x} is null or not aligned to {} bytes",
            elem.name(),
            elem.size()
        )));
    }
    Ok(Arg { name, ptr, numel, elem, place, _held: PhantomData })
}

/// [`read`] of an optional argument.
pub(crate) fn read_opt<'a>(
    obj: Option<&'a Bound<'_, PyAny>>,
    name: &'static str,
) -> PyResult<Option<Arg<'a>>> {
    obj.map(|o| read(o, name)).transpose()
}

/// The shape of a tensor argument.
pub(crate) fn shape(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<usize>> {
    let s = obj.getattr("shape").map_err(|e| attr_err(name, "shape", e))?;
    let dims: Vec<i64> = s.extract()?;
    dims.iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| PyValueError::new_err(format!("aiec: {name} has a negative size in {dims:?}")))
}

impl Arg<'_> {
    /// The element type must be `want`.
    pub(crate) fn of(self, want: Elem) -> PyResult<Self> {
        if self.elem != want {
            return Err(PyTypeError::new_err(format!(
                "aiec: {} must be {}, got {}",
                self.name,
                want.name(),
                self.elem.name()
            )));
        }
        Ok(self)
    }

    /// The memory must be at `place`.
    pub(crate) fn on(self, place: Place) -> PyResult<Self> {
        if self.place != place {
            return Err(PyValueError::new_err(format!(
                "aiec: {} is on {}, the op runs on {place}",
                self.name, self.place
            )));
        }
        Ok(self)
    }

    /// Bytes per element.
    pub(crate) fn elem_size(&self) -> usize {
        self.elem.size()
    }
}
