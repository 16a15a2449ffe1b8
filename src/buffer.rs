//! A typed, flat device buffer for the op's state and intermediates (weights,
//! counters, pooled values, bit masks, statistics). Activations use
//! [`crate::Tensor`], whose element type is known only at run time.

use std::marker::PhantomData;

use bytemuck::Pod;

use crate::device::{Device, Init, Storage};
use crate::error::{AiecError, Result};

/// `len` values of `T` on a device, owned by the crate (freed on drop,
/// stream-ordered on the device's stream).
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

fn bytes_of<T>(len: usize) -> Result<usize> {
    len.checked_mul(std::mem::size_of::<T>()).ok_or(AiecError::ShapeOverflow { dims: vec![len] })
}

impl<T: Pod> Buffer<T> {
    /// Uploads `data` (one allocation, one host-to-device copy).
    pub fn from_slice(device: &Device, data: &[T]) -> Result<Self> {
        let storage = device.upload(bytemuck::cast_slice(data))?;
        Ok(Buffer { device: device.clone(), storage, len: data.len(), _t: PhantomData })
    }

    /// `len` zero values.
    pub fn zeros(device: &Device, len: usize) -> Result<Self> {
        let storage = device.alloc(bytes_of::<T>(len)?, Init::Zero)?;
        Ok(Buffer { device: device.clone(), storage, len, _t: PhantomData })
    }

    /// `len` values that a kernel writes in full before they are read or handed
    /// out (no clear on CUDA; NaN-like bytes in the simulator).
    pub(crate) fn unwritten(device: &Device, len: usize) -> Result<Self> {
        let storage = device.alloc(bytes_of::<T>(len)?, Init::Unwritten)?;
        Ok(Buffer { device: device.clone(), storage, len, _t: PhantomData })
    }

    /// A buffer of `len` values over (the start of) `storage`, which must hold
    /// at least that many bytes (a workspace slot).
    pub(crate) fn over(device: &Device, storage: Storage, len: usize) -> Self {
        debug_assert!(storage.bytes() >= len * std::mem::size_of::<T>());
        Buffer { device: device.clone(), storage, len, _t: PhantomData }
    }

    /// Downloads the values (waits for the device).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); self.len];
        // SAFETY: the storage holds at least `len` values and is live.
        unsafe { self.device.read(self.address(), bytemuck::cast_slice_mut(&mut out)) }?;
        Ok(out)
    }

    /// Overwrites the values with `data` (same length), in place: one
    /// host-to-device copy, ordered after the kernels already queued.
    pub fn copy_from(&mut self, data: &[T]) -> Result<()> {
        if data.len() != self.len {
            return Err(AiecError::LengthMismatch {
                what: "buffer upload",
                expected: self.len,
                got: data.len(),
            });
        }
        // SAFETY: the buffer holds `len` values and is borrowed mutably.
        unsafe { self.device.write(self.address(), bytemuck::cast_slice(data)) }
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
        // `self` is borrowed mutably and `src` is another buffer (a buffer's
        // storage is shared only with the workspace that handed it out, never
        // with another live buffer).
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
        self.storage.address()
    }
}
