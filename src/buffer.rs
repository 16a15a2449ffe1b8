//! A typed, flat device buffer for the op's state and intermediates (weights,
//! counters, pooled values, bit masks, statistics). Activations use
//! [`crate::Tensor`], whose element type is known only at run time.

use std::marker::PhantomData;

use bytemuck::Pod;

use crate::device::{Device, Storage};
use crate::error::{AiecError, Result};

/// `len` values of `T` on a device.
pub struct Buffer<T: Pod> {
    device: Device,
    storage: Storage,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> std::fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer<{}>[{}] on {}", std::any::type_name::<T>(), self.len, self.device.label())
    }
}

impl<T: Pod> Buffer<T> {
    /// Uploads `data`.
    pub fn from_slice(device: &Device, data: &[T]) -> Result<Self> {
        let storage = device.upload(bytemuck::cast_slice(data))?;
        Ok(Buffer { device: device.clone(), storage, len: data.len(), _t: PhantomData })
    }

    /// `len` zero values.
    pub fn zeros(device: &Device, len: usize) -> Result<Self> {
        Self::alloc(device, len, Device::alloc_zeros)
    }

    /// `len` values that a kernel writes in full before they are read or handed
    /// out (see `Device::alloc_unwritten`): no clear on CUDA.
    pub(crate) fn unwritten(device: &Device, len: usize) -> Result<Self> {
        Self::alloc(device, len, Device::alloc_unwritten)
    }

    fn alloc(device: &Device, len: usize, alloc: fn(&Device, usize) -> Result<Storage>) -> Result<Self> {
        let bytes =
            len.checked_mul(std::mem::size_of::<T>()).ok_or(AiecError::ShapeOverflow { dims: vec![len] })?;
        let storage = alloc(device, bytes)?;
        Ok(Buffer { device: device.clone(), storage, len, _t: PhantomData })
    }

    /// Downloads the values (waits for the device).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); self.len];
        self.device.download(&self.storage, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    /// Overwrites the values with `data` (same length).
    pub fn copy_from(&mut self, data: &[T]) -> Result<()> {
        if data.len() != self.len {
            return Err(AiecError::LengthMismatch {
                what: "buffer upload",
                expected: self.len,
                got: data.len(),
            });
        }
        self.storage = self.device.upload(bytemuck::cast_slice(data))?;
        Ok(())
    }

    /// Copies `src` (same length, same device) into this buffer on the device,
    /// without going through the host.
    pub fn copy_from_buffer(&mut self, src: &Buffer<T>) -> Result<()> {
        if src.len != self.len {
            return Err(AiecError::LengthMismatch { what: "buffer copy", expected: self.len, got: src.len });
        }
        if src.device != self.device {
            return Err(AiecError::DeviceMismatch {
                what: "buffer copy source",
                expected: self.device.label().to_string(),
                got: src.device.label().to_string(),
            });
        }
        // SAFETY: both are live buffers of this device with `byte_len` bytes;
        // `self` is borrowed mutably and `src` is a different buffer (two
        // `Buffer`s never share storage).
        unsafe { self.device.copy_dtod(self.address(), src.address(), self.byte_len()) }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// The device it lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The device address of the first value.
    pub fn address(&self) -> u64 {
        self.device.address(&self.storage)
    }
}
