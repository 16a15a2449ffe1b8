//! Views: the op's inputs and outputs as memory the caller owns, without a
//! copy. A view is a device address, an element type, a shape and the
//! [`Device`] whose kernels may use it; its type says whether it may be
//! written ([`TensorRef`] / [`TensorMut`] for activations, whose element type
//! is known at run time; [`SliceRef`] / [`SliceMut`] for typed state such as
//! `W`, `dW`, targets and counters).
//!
//! Where a view comes from:
//! * the crate's own [`crate::Tensor`] and [`crate::Buffer`] (`view`, `view_mut`);
//! * cudarc memory: `&CudaSlice<T>` / `CudaView<T>` for reading and
//!   `&mut CudaSlice<T>` / `CudaViewMut<T>` for writing (`TensorRef::cuda`,
//!   ...). The view holds cudarc's read or write guard until it is dropped: the
//!   device's stream first waits for the memory's last write (when the
//!   caller's context tracks events), and the guard records this use for the
//!   caller's other streams. Keep the view alive across the call, drop it after;
//! * the simulator's host memory, `&[T]` / `&mut [T]` (`TensorRef::host`, ...),
//!   so that every view path runs in CI;
//! * a raw address of memory another library owns (`from_raw`, `unsafe`): a
//!   device address on CUDA, a host address on the simulator. The crate never
//!   frees borrowed memory.
//!
//! Every constructor checks what it can and returns a typed error naming the
//! values: length against shape, element alignment (a view need not be 16-byte
//! aligned: the kernels then take their narrower path), and the device: the
//! memory's context must be the device's.

use std::marker::PhantomData;

use bytemuck::Pod;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop};

use crate::buffer::Buffer;
use crate::config::checked_len;
use crate::device::{Device, DeviceKind};
use crate::dtype::{DType, Element};
use crate::error::{AiecError, Result};
use crate::tensor::Tensor;

/// What keeps a view's memory borrowed (and, for cudarc memory, records the
/// use on the device's stream when dropped).
enum Guard<'a> {
    Borrowed(PhantomData<&'a ()>),
    // Held only for its drop, which records cudarc's read/write event.
    Cuda(#[allow(dead_code)] SyncOnDrop<'a>),
}

/// A span of device memory, for overlap checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) addr: u64,
    pub(crate) bytes: usize,
}

impl Span {
    /// Whether the two spans share a byte (empty spans share none).
    pub(crate) fn overlaps(self, o: Span) -> bool {
        self.bytes > 0
            && o.bytes > 0
            && self.addr < o.addr + o.bytes as u64
            && o.addr < self.addr + self.bytes as u64
    }
}

/// Errors unless no two of `spans` overlap (named in the error).
pub(crate) fn check_disjoint(spans: &[(&'static str, Span)]) -> Result<()> {
    for (i, &(a, sa)) in spans.iter().enumerate() {
        for &(b, sb) in &spans[i + 1..] {
            if sa.overlaps(sb) {
                return Err(AiecError::Overlap {
                    what: a,
                    other: b,
                    at: (sa.addr, sa.bytes),
                    other_at: (sb.addr, sb.bytes),
                });
            }
        }
    }
    Ok(())
}

fn check_address(what: &'static str, addr: u64, elems: usize, align: usize) -> Result<()> {
    if addr % align as u64 != 0 {
        return Err(AiecError::Misaligned { what, address: addr, align });
    }
    if addr == 0 && elems > 0 {
        return Err(AiecError::Misaligned { what, address: 0, align });
    }
    Ok(())
}

fn check_len(what: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let n = checked_len(shape)?;
    if n != len {
        return Err(AiecError::LengthMismatch { what, expected: n, got: len });
    }
    Ok(())
}

fn expect_sim(what: &'static str, device: &Device) -> Result<()> {
    if device.kind() != DeviceKind::Sim {
        return Err(AiecError::DeviceMismatch {
            what,
            expected: "a simulator device (host memory is device memory only there)".into(),
            got: device.label().to_string(),
        });
    }
    Ok(())
}

/// Checks that `slice`'s memory belongs to `device`'s CUDA context and returns
/// the device's stream.
fn cuda_stream_for<'a, T, S: DeviceSlice<T>>(
    what: &'static str,
    device: &'a Device,
    slice: &S,
) -> Result<&'a cudarc::driver::CudaStream> {
    let Some(stream) = device.cuda_stream() else {
        return Err(AiecError::DeviceMismatch {
            what,
            expected: "a CUDA device (cudarc memory)".into(),
            got: device.label().to_string(),
        });
    };
    if slice.stream().context().cu_ctx() != stream.context().cu_ctx() {
        return Err(AiecError::DeviceMismatch {
            what,
            expected: device.label().to_string(),
            got: format!("cudarc memory of another context (GPU {})", slice.stream().context().ordinal()),
        });
    }
    Ok(stream)
}

macro_rules! tensor_view {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<'a> {
            device: Device,
            addr: u64,
            shape: Vec<usize>,
            dtype: DType,
            _guard: Guard<'a>,
        }

        impl std::fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({}, {:?}, {:#x}, {})", stringify!($name), self.dtype, self.shape, self.addr, self.device.label())
            }
        }

        impl<'a> $name<'a> {
            /// A view of `len` elements of `dtype` at `addr`, shape `shape`:
            /// memory another library owns, never freed by the crate. `addr` is a
            /// device address on CUDA and a host address on the simulator.
            ///
            /// # Safety
            /// `addr` must address `len` elements of `dtype` of `device`'s memory
            /// (its CUDA context, or host memory for the simulator) that stay
            /// allocated while the view and any launch using it run, and that
            /// no one else writes meanwhile (nor reads, for a writable view).
            pub unsafe fn from_raw(device: &Device, addr: u64, len: usize, dtype: DType, shape: &[usize]) -> Result<Self> {
                check_len(stringify!($name), len, shape)?;
                check_address(stringify!($name), addr, len, dtype.size())?;
                Ok($name { device: device.clone(), addr, shape: shape.to_vec(), dtype, _guard: Guard::Borrowed(PhantomData) })
            }

            /// The device whose kernels may use the view.
            pub fn device(&self) -> &Device {
                &self.device
            }
            /// The element type.
            pub fn dtype(&self) -> DType {
                self.dtype
            }
            /// The shape.
            pub fn shape(&self) -> &[usize] {
                &self.shape
            }
            /// Number of elements.
            pub fn len(&self) -> usize {
                self.shape.iter().product()
            }
            /// True when the view has no element.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }
            /// Size in bytes.
            pub fn byte_len(&self) -> usize {
                self.len() * self.dtype.size()
            }
            /// The address of the first element.
            pub fn address(&self) -> u64 {
                self.addr
            }
            pub(crate) fn span(&self) -> Span {
                Span { addr: self.addr, bytes: self.byte_len() }
            }
            /// Errors unless the view is for `device`.
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
            /// Errors unless the view has element type `dtype`.
            pub fn expect_dtype(&self, what: &'static str, dtype: DType) -> Result<()> {
                if self.dtype != dtype {
                    return Err(AiecError::DTypeMismatch { what, expected: dtype, got: self.dtype });
                }
                Ok(())
            }
            /// Errors unless the view has shape `shape`.
            pub fn expect_shape(&self, what: &'static str, shape: &[usize]) -> Result<()> {
                if self.shape != shape {
                    return Err(AiecError::ShapeMismatch { what, expected: shape.to_vec(), got: self.shape.clone() });
                }
                Ok(())
            }
        }
    };
}

tensor_view! {
    /// A read-only view of an activation tensor (contiguous, row-major, element
    /// type known at run time).
    TensorRef
}
tensor_view! {
    /// A writable view of an activation tensor (contiguous, row-major).
    TensorMut
}

impl<'a> TensorRef<'a> {
    /// A view of cudarc memory (`&CudaSlice<T>`, `&CudaView<T>`) for reading,
    /// on `device`'s stream; holds cudarc's read guard until dropped.
    pub fn cuda<T: Element, S: DevicePtr<T>>(
        device: &'a Device,
        src: &'a S,
        shape: &[usize],
    ) -> Result<Self> {
        let stream = cuda_stream_for("tensor view", device, src)?;
        check_len("tensor view", src.len(), shape)?;
        let (addr, guard) = src.device_ptr(stream);
        check_address("tensor view", addr, src.len(), T::DTYPE.size())?;
        Ok(TensorRef {
            device: device.clone(),
            addr,
            shape: shape.to_vec(),
            dtype: T::DTYPE,
            _guard: Guard::Cuda(guard),
        })
    }

    /// A view of host memory for the simulator (any offset into a slice works).
    pub fn host<T: Element>(device: &Device, data: &'a [T], shape: &[usize]) -> Result<Self> {
        expect_sim("tensor view of host memory", device)?;
        check_len("tensor view", data.len(), shape)?;
        Ok(TensorRef {
            device: device.clone(),
            addr: data.as_ptr() as u64,
            shape: shape.to_vec(),
            dtype: T::DTYPE,
            _guard: Guard::Borrowed(PhantomData),
        })
    }
}

impl<'a> TensorMut<'a> {
    /// A view of cudarc memory (`&mut CudaSlice<T>`, `&mut CudaViewMut<T>`) for
    /// writing, on `device`'s stream; holds cudarc's write guard until dropped.
    pub fn cuda<T: Element, S: DevicePtrMut<T>>(
        device: &'a Device,
        dst: &'a mut S,
        shape: &[usize],
    ) -> Result<Self> {
        let stream = cuda_stream_for("tensor view", device, &*dst)?;
        let len = dst.len();
        check_len("tensor view", len, shape)?;
        let (addr, guard) = dst.device_ptr_mut(stream);
        check_address("tensor view", addr, len, T::DTYPE.size())?;
        Ok(TensorMut {
            device: device.clone(),
            addr,
            shape: shape.to_vec(),
            dtype: T::DTYPE,
            _guard: Guard::Cuda(guard),
        })
    }

    /// A writable view of host memory for the simulator.
    pub fn host<T: Element>(device: &Device, data: &'a mut [T], shape: &[usize]) -> Result<Self> {
        expect_sim("tensor view of host memory", device)?;
        check_len("tensor view", data.len(), shape)?;
        Ok(TensorMut {
            device: device.clone(),
            addr: data.as_mut_ptr() as u64,
            shape: shape.to_vec(),
            dtype: T::DTYPE,
            _guard: Guard::Borrowed(PhantomData),
        })
    }

    /// The same memory, read-only, for as long as this borrow.
    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef {
            device: self.device.clone(),
            addr: self.addr,
            shape: self.shape.clone(),
            dtype: self.dtype,
            _guard: Guard::Borrowed(PhantomData),
        }
    }
}

macro_rules! slice_view {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<'a, T: Pod> {
            device: Device,
            addr: u64,
            len: usize,
            _guard: Guard<'a>,
            _t: PhantomData<T>,
        }

        impl<T: Pod> std::fmt::Debug for $name<'_, T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}<{}>[{}] at {:#x} on {}", stringify!($name), std::any::type_name::<T>(), self.len, self.addr, self.device.label())
            }
        }

        impl<'a, T: Pod> $name<'a, T> {
            /// A view of `len` values of `T` at `addr`: memory another library
            /// owns, never freed by the crate (device address on CUDA, host
            /// address on the simulator).
            ///
            /// # Safety
            /// As [`TensorRef::from_raw`]: `len` values of `T` of `device`'s
            /// memory, allocated while the view and its launches live, not
            /// written by anyone else meanwhile (nor read, when writable).
            pub unsafe fn from_raw(device: &Device, addr: u64, len: usize) -> Result<Self> {
                check_address(stringify!($name), addr, len, std::mem::align_of::<T>())?;
                Ok($name { device: device.clone(), addr, len, _guard: Guard::Borrowed(PhantomData), _t: PhantomData })
            }

            /// The device whose kernels may use the view.
            pub fn device(&self) -> &Device {
                &self.device
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
            /// The address of the first value.
            pub fn address(&self) -> u64 {
                self.addr
            }
            pub(crate) fn span(&self) -> Span {
                Span { addr: self.addr, bytes: self.byte_len() }
            }
            /// Errors unless the view has `len` values and lives on `device`.
            pub(crate) fn expect(&self, what: &'static str, device: &Device, len: usize) -> Result<()> {
                if &self.device != device {
                    return Err(AiecError::DeviceMismatch {
                        what,
                        expected: device.label().to_string(),
                        got: self.device.label().to_string(),
                    });
                }
                if self.len != len {
                    return Err(AiecError::LengthMismatch { what, expected: len, got: self.len });
                }
                Ok(())
            }
        }
    };
}

slice_view! {
    /// A read-only view of typed device memory (`W`, targets, ...).
    SliceRef
}
slice_view! {
    /// A writable view of typed device memory (`dW`, counters, saved state, ...).
    SliceMut
}

impl<'a, T: Pod> SliceRef<'a, T> {
    /// A view of cudarc memory for reading, on `device`'s stream.
    pub fn cuda<S: DevicePtr<T>>(device: &'a Device, src: &'a S) -> Result<Self> {
        let stream = cuda_stream_for("slice view", device, src)?;
        let len = src.len();
        let (addr, guard) = src.device_ptr(stream);
        check_address("slice view", addr, len, std::mem::align_of::<T>())?;
        Ok(SliceRef { device: device.clone(), addr, len, _guard: Guard::Cuda(guard), _t: PhantomData })
    }

    /// A view of host memory for the simulator.
    pub fn host(device: &Device, data: &'a [T]) -> Result<Self> {
        expect_sim("slice view of host memory", device)?;
        Ok(SliceRef {
            device: device.clone(),
            addr: data.as_ptr() as u64,
            len: data.len(),
            _guard: Guard::Borrowed(PhantomData),
            _t: PhantomData,
        })
    }
}

impl<'a, T: Pod> SliceMut<'a, T> {
    /// A view of cudarc memory for writing, on `device`'s stream.
    pub fn cuda<S: DevicePtrMut<T>>(device: &'a Device, dst: &'a mut S) -> Result<Self> {
        let stream = cuda_stream_for("slice view", device, &*dst)?;
        let len = dst.len();
        let (addr, guard) = dst.device_ptr_mut(stream);
        check_address("slice view", addr, len, std::mem::align_of::<T>())?;
        Ok(SliceMut { device: device.clone(), addr, len, _guard: Guard::Cuda(guard), _t: PhantomData })
    }

    /// A writable view of host memory for the simulator.
    pub fn host(device: &Device, data: &'a mut [T]) -> Result<Self> {
        expect_sim("slice view of host memory", device)?;
        Ok(SliceMut {
            device: device.clone(),
            addr: data.as_mut_ptr() as u64,
            len: data.len(),
            _guard: Guard::Borrowed(PhantomData),
            _t: PhantomData,
        })
    }

    /// The same memory, read-only, for as long as this borrow.
    pub fn as_ref(&self) -> SliceRef<'_, T> {
        SliceRef {
            device: self.device.clone(),
            addr: self.addr,
            len: self.len,
            _guard: Guard::Borrowed(PhantomData),
            _t: PhantomData,
        }
    }
}

impl Tensor {
    /// The tensor as a read-only view.
    pub fn view(&self) -> TensorRef<'_> {
        TensorRef {
            device: self.device().clone(),
            addr: self.address(),
            shape: self.shape().to_vec(),
            dtype: self.dtype(),
            _guard: Guard::Borrowed(PhantomData),
        }
    }

    /// The tensor as a writable view.
    pub fn view_mut(&mut self) -> TensorMut<'_> {
        TensorMut {
            device: self.device().clone(),
            addr: self.address(),
            shape: self.shape().to_vec(),
            dtype: self.dtype(),
            _guard: Guard::Borrowed(PhantomData),
        }
    }
}

impl<T: Pod> Buffer<T> {
    /// The buffer as a read-only view.
    pub fn view(&self) -> SliceRef<'_, T> {
        SliceRef {
            device: self.device().clone(),
            addr: self.address(),
            len: self.len(),
            _guard: Guard::Borrowed(PhantomData),
            _t: PhantomData,
        }
    }

    /// The buffer as a writable view.
    pub fn view_mut(&mut self) -> SliceMut<'_, T> {
        SliceMut {
            device: self.device().clone(),
            addr: self.address(),
            len: self.len(),
            _guard: Guard::Borrowed(PhantomData),
            _t: PhantomData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_overlap_only_when_they_share_a_byte() {
        let s = |addr, bytes| Span { addr, bytes };
        assert!(s(100, 8).overlaps(s(104, 8)));
        assert!(s(104, 8).overlaps(s(100, 8)));
        assert!(!s(100, 4).overlaps(s(104, 4)));
        assert!(!s(100, 0).overlaps(s(100, 8)));
        assert!(s(100, 16).overlaps(s(104, 4)));
        assert!(check_disjoint(&[("a", s(0, 4)), ("b", s(4, 4)), ("c", s(8, 4))]).is_ok());
        assert!(matches!(
            check_disjoint(&[("a", s(0, 4)), ("b", s(4, 4)), ("c", s(6, 4))]),
            Err(AiecError::Overlap { what: "b", other: "c", .. })
        ));
    }
}
