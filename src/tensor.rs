//! A tensor in device memory owned by the crate: element type known at run
//! time (`f32`, `f16`, `bf16`), a shape, and the device it lives on. Upload and
//! download check lengths and types. Memory the caller owns is used through
//! views instead ([`crate::view`]).

use crate::config::{checked_bytes, checked_len};
use crate::device::{Device, Init, Storage};
use crate::dtype::{DType, Element};
use crate::error::{AiecError, Result};

/// A contiguous, row-major tensor on a [`Device`].
pub struct Tensor {
    device: Device,
    storage: Storage,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({}, {:?}, {})", self.dtype, self.shape, self.device.label())
    }
}

impl Tensor {
    /// Uploads `data` as a tensor of shape `shape` (its element count must be `data.len()`).
    pub fn from_slice<T: Element>(device: &Device, data: &[T], shape: &[usize]) -> Result<Tensor> {
        let n = checked_len(shape)?;
        if n != data.len() {
            return Err(AiecError::LengthMismatch { what: "tensor data", expected: n, got: data.len() });
        }
        let storage = device.upload(bytemuck::cast_slice(data))?;
        Ok(Tensor { device: device.clone(), storage, shape: shape.to_vec(), dtype: T::DTYPE })
    }

    /// A zero-filled tensor. A shape whose bytes exceed `isize::MAX` is
    /// [`AiecError::ShapeOverflow`]; memory the device does not have is a typed
    /// error too ([`AiecError::OutOfMemory`] on the simulator, [`AiecError::Driver`] on CUDA).
    pub fn zeros(device: &Device, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        Self::alloc(device, dtype, shape, Init::Zero)
    }

    /// A tensor whose every element a kernel writes before it is read or handed
    /// out (no clear on CUDA; NaN bytes in the simulator).
    pub(crate) fn unwritten(device: &Device, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        Self::alloc(device, dtype, shape, Init::Unwritten)
    }

    fn alloc(device: &Device, dtype: DType, shape: &[usize], init: Init) -> Result<Tensor> {
        // A size no allocation can hold is refused here; one the device has
        // no room for is the device's typed error.
        let bytes = checked_bytes(shape, dtype.size())?;
        let storage = device.alloc(bytes, init)?;
        Ok(Tensor { device: device.clone(), storage, shape: shape.to_vec(), dtype })
    }

    /// Downloads the elements (waits for the device). `T` must be the tensor's type.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.expect_dtype("tensor", T::DTYPE)?;
        let mut out = vec![T::zeroed(); self.len()];
        // SAFETY: the storage holds `len` elements of `T` and is live.
        unsafe { self.device.read(self.address(), bytemuck::cast_slice_mut(&mut out)) }?;
        Ok(out)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The device it lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.len() * self.dtype.size()
    }

    /// The device address of the first element (for launch plans).
    pub fn address(&self) -> u64 {
        self.storage.address()
    }

    /// Errors unless the tensor has element type `dtype`.
    pub fn expect_dtype(&self, what: &'static str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(AiecError::DTypeMismatch { what, expected: dtype, got: self.dtype });
        }
        Ok(())
    }

    /// Errors unless the tensor lives on `device`.
    pub fn expect_device(&self, what: &'static str, device: &Device) -> Result<()> {
        if &self.device != device {
            return Err(AiecError::DeviceMismatch {
                what,
                expected: device.label().to_string(),
                got: self.device.label().to_string(),
            });
        }
        Ok(())
    }

    /// Errors unless the tensor has shape `shape`.
    pub fn expect_shape(&self, what: &'static str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(AiecError::ShapeMismatch { what, expected: shape.to_vec(), got: self.shape.clone() });
        }
        Ok(())
    }

    /// Errors unless `other` matches this tensor's device, type and shape.
    pub fn expect_like(&self, what: &'static str, other: &Tensor) -> Result<()> {
        other.expect_device(what, &self.device)?;
        other.expect_dtype(what, self.dtype)?;
        other.expect_shape(what, &self.shape)
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn unwritten_memory_reads_as_nan_in_the_simulator() {
        // What lets the kernel tests catch an element a kernel forgot to write.
        let dev = Device::sim();
        let t = Tensor::unwritten(&dev, DType::F32, &[3, 5]).unwrap();
        assert!(t.to_vec::<f32>().unwrap().iter().all(|v| v.is_nan()));
        let t = Tensor::unwritten(&dev, DType::BF16, &[7]).unwrap();
        assert!(t.to_vec::<bf16>().unwrap().iter().all(|v| v.is_nan()));
        let z = Tensor::zeros(&dev, DType::F32, &[4]).unwrap();
        assert_eq!(z.to_vec::<f32>().unwrap(), [0.0; 4]);
    }
}
