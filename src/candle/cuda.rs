//! # On candle's CUDA tensors
//!
//! candle's `cuda` feature compiles its kernels with `nvcc` at build time, so
//! this crate does not turn it on (it builds on machines without a CUDA
//! toolkit, and [`super::Aiec`] on a CUDA tensor is candle's typed "no cuda
//! implementation for aiec" error). A candle CUDA user writes the `cuda_fwd`
//! of the two custom ops in their own crate, with `candle-core/cuda`, and
//! this crate's views take candle's memory and stream as they are, nothing
//! copied (aiec builds beside cudarc's `dynamic-linking`, which candle's CUDA
//! backend turns on):
//!
//! | candle | aiec |
//! | --- | --- |
//! | `storage.device().cuda_stream()`: `Arc<cudarc::driver::CudaStream>` | [`crate::Device::from_cuda_stream`]: launches on candle's stream (make it once per candle device and keep it: devices of one context share their compiled modules) |
//! | `storage.as_cuda_slice::<f32>()?` and `layout.contiguous_offsets()` | [`crate::TensorRef::cuda`] / [`crate::SliceRef::cuda`] over `slice.slice(start..end)` |
//! | `unsafe { cuda_dev.alloc::<f32>(n) }?` (the output) | [`crate::TensorMut::cuda`], written in full by the kernels |
//! | `CudaStorage::wrap_cuda_slice(y, cuda_dev.clone())` | what `cuda_fwd` returns |
//! | an error | [`super::to_candle`] |
//!
//! The views hold cudarc's read and write guards (`device_ptr`, as
//! candle-flash-attn does) until they are dropped: keep them alive across the
//! call. The candle-only lines look like this (not compiled here):
//!
//! ```ignore
//! fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout)
//!     -> candle_core::Result<(CudaStorage, Shape)> {
//!     let cuda_dev = x.device();
//!     let dev = self.devices.get_or_make(cuda_dev.cuda_stream())?; // aiec::Device::from_cuda_stream
//!     let (xs, xe) = xl.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("x"))?;
//!     let (ws, we) = wl.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("W"))?;
//!     let x_slice = x.as_cuda_slice::<f32>()?.slice(xs..xe);
//!     let w_slice = w.as_cuda_slice::<f32>()?.slice(ws..we);
//!     let mut y = unsafe { cuda_dev.alloc::<f32>(xe - xs) }?;
//!     let mut state = self.state.lock().unwrap();
//!     forward(&dev, &mut state, &x_slice, xl.dims(), &w_slice, &self.targets, &mut y)
//!         .map_err(aiec::candle::to_candle)?;                   // the function below
//!     Ok((CudaStorage::wrap_cuda_slice(y, cuda_dev.clone()), xl.shape().clone()))
//! }
//! ```
//!
//! and what runs there is plain cudarc and aiec, compiled and run below (on
//! a GPU; without one it returns at once). The forward keeps its saved state
//! in a [`crate::gpu::Workspace`] on candle's stream and the counters in
//! device memory; the terms' backward hands the two incoming gradients to
//! `fused::backward` as its loss scales (`aux_scale = d ce_sum`,
//! `gate_scale = 2 dS`), as [`super::Aiec`] does on the CPU:
//!
//! ```
//! use std::sync::Arc;
//! use aiec::gpu::fused::{self, Dx, DwMode, SavedRef, Scales, TrainBackward};
//! use aiec::gpu::{GpuCounters, GpuRecord, LayerStep, Targets, Workspace};
//! use aiec::params::AiecLosses;
//! use aiec::policy::LayerPolicy;
//! use aiec::{AiecConfig, Device, Pool, SliceMut, SliceRef, TensorMut, TensorRef};
//! use cudarc::driver::{CudaSlice, CudaView, DevicePtr};
//!
//! /// What the layer keeps on the device: the counters, the step, a workspace.
//! struct LayerState { cfg: AiecConfig, counters: GpuCounters, policy: LayerPolicy, ws: Workspace }
//!
//! /// The forward op's `cuda_fwd`: `y` into candle's memory, the record kept.
//! fn forward(dev: &Device, st: &mut LayerState, x: &CudaView<f32>, dims: &[usize],
//!            w: &CudaView<f32>, targets: &[i64], y: &mut CudaSlice<f32>) -> aiec::Result<GpuRecord> {
//!     let plan = st.policy.plan(true);
//!     let layer = LayerStep { w: &SliceRef::cuda(dev, w)?, counters: &mut st.counters, update: plan.update };
//!     let rec = aiec::gpu::forward_with(
//!         &st.cfg, layer, &TensorRef::cuda(dev, x, dims)?, Some(Targets::Host(targets)), &st.ws,
//!         &mut TensorMut::cuda(dev, y, dims)?)?;
//!     st.policy.commit(plan); // only after success: bad input changes nothing
//!     Ok(rec)
//! }
//!
//! /// The terms op's backward: `dx` and `dW` for the gradients of `sum_b CE_b` and `S`.
//! fn terms_backward(dev: &Device, st: &LayerState, rec: &GpuRecord, w: &CudaView<f32>,
//!                   d_ce: f32, d_s: f32, zeros: &CudaSlice<f32>, dx: &mut CudaSlice<f32>,
//!                   dw: &mut CudaSlice<f32>) -> aiec::Result<()> {
//!     let stream = dev.cuda_stream().expect("a CUDA device");
//!     let aux = rec.aux.as_ref().expect("a forward with targets");
//!     let scales = AiecLosses { aux_scale: d_ce, gate_scale: 2.0 * d_s, ..bytemuck::Zeroable::zeroed() };
//!     let bytes = stream.clone_htod(bytemuck::bytes_of(&scales)).expect("upload");
//!     let (addr, _guard) = bytes.device_ptr(stream);
//!     // SAFETY: `bytes` holds one AiecLosses on this device and outlives the call.
//!     let losses = unsafe { SliceRef::<AiecLosses>::from_raw(dev, addr, 1) }?;
//!     let mut dv = stream.alloc_zeros::<f32>(fused::dv_scratch_len(&st.cfg, &rec.dims, dev)).expect("alloc");
//!     let dims = rec.dims.dims.clone();
//!     let train = TrainBackward {
//!         w: &SliceRef::cuda(dev, w)?,
//!         saved: &SavedRef { v: aux.v.view(), g: aux.g.view(), mask: aux.mask.view() },
//!         scales: &Scales { losses, row_scale: None },
//!         dv: &mut SliceMut::cuda(dev, &mut dv)?, dw: &mut SliceMut::cuda(dev, dw)?, mode: DwMode::Write,
//!     };
//!     let dx = Dx::Into { dy: &TensorRef::cuda(dev, zeros, &dims)?, dx: &mut TensorMut::cuda(dev, dx, &dims)? };
//!     let done = fused::backward(&st.cfg, &rec.dims, &rec.keep.view(), Some(train), dx);
//!     done // the views (and cudarc's guards) drop before `dv`
//! }
//!
//! // Stand-ins for candle's stream and storage (a GPU is needed from here on).
//! let Ok(probe) = Device::cuda(0) else { return Ok(()) };
//! let stream = probe.cuda_stream().unwrap().context().new_stream().unwrap(); // candle's stream
//! let dev = Device::from_cuda_stream(stream.clone())?;
//! let (b, c, k) = (4, 16, 3);
//! let cfg = AiecConfig::new(c, k, 0.0, Pool::None)?;
//! let mut st = LayerState {
//!     cfg, counters: GpuCounters::new(&dev, k, c)?,
//!     policy: LayerPolicy::new(cfg.update_interval())?, ws: Workspace::new(&dev),
//! };
//! let x_storage = stream.clone_htod(&vec![0.5f32; 1 + b * c]).unwrap(); // offset 1, as a narrow
//! let w_storage = stream.clone_htod(&vec![-0.1f32; k * c]).unwrap();
//! let mut y = stream.alloc_zeros::<f32>(b * c).unwrap();
//! let rec = forward(&dev, &mut st, &x_storage.slice(1..), &[b, c], &w_storage.slice(..),
//!                   &[0, 1, 2, 0], &mut y)?;
//! let (zeros, mut dx) = (stream.alloc_zeros::<f32>(b * c).unwrap(), stream.alloc_zeros::<f32>(b * c).unwrap());
//! let mut dw = stream.alloc_zeros::<f32>(k * c).unwrap();
//! terms_backward(&dev, &st, &rec, &w_storage.slice(..), 0.25, 1.0 / 64.0, &zeros, &mut dx, &mut dw)?;
//! let dw = stream.clone_dtoh(&dw).unwrap();
//! assert!(dw.iter().all(|v| v.is_finite()) && dw.iter().any(|&v| v != 0.0));
//! # Ok::<(), aiec::AiecError>(())
//! ```
