//! Devices: a CUDA stream (the crate's own, or the caller's) or, with the
//! `sim` feature, the CPU simulator running the same kernel source. Both
//! execute the same [`LaunchPlan`]s through [`Device::launch`]; only the final
//! call differs.
//!
//! Each device counts what it was asked to do ([`DeviceStats`]: launches, host
//! synchronisations, copies each way, allocations), so tests can assert what a
//! step costs: a steady training step with a workspace, device targets and
//! caller outputs makes launches only, which is what lets a CUDA graph capture
//! it.

mod cuda;
#[cfg(feature = "sim")]
mod sim;

#[cfg(feature = "sim")]
pub use sim::kernel_names as sim_kernel_names;

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaStream};

use crate::dtype::DType;
use crate::error::{AiecError, Result};
use crate::launch::{DeviceLimits, GemmTile, LaunchPlan, Projection, SplitK};
use crate::params::AiecTargetStatus;

/// Which kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// An NVIDIA GPU through the CUDA driver.
    Cuda,
    /// The CPU simulator of the CUDA execution model (feature `sim`).
    Sim,
}

/// Counters of what a device was asked to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Kernel launches.
    pub launches: u64,
    /// Host waits for the device (stream synchronisations).
    pub host_syncs: u64,
    /// Device-to-host copies.
    pub device_to_host: u64,
    /// Host-to-device copies (uploads, and writes of host data into device memory).
    pub host_to_device: u64,
    /// Device memory allocations made by the crate.
    pub allocations: u64,
}

impl std::ops::Sub for DeviceStats {
    type Output = DeviceStats;
    fn sub(self, o: DeviceStats) -> DeviceStats {
        DeviceStats {
            launches: self.launches - o.launches,
            host_syncs: self.host_syncs - o.host_syncs,
            device_to_host: self.device_to_host - o.device_to_host,
            host_to_device: self.host_to_device - o.host_to_device,
            allocations: self.allocations - o.allocations,
        }
    }
}

enum Backend {
    Cuda(cuda::CudaBackend),
    #[cfg(feature = "sim")]
    Sim(sim::SimBackend),
}

#[derive(Default)]
struct Counts {
    launches: AtomicU64,
    host_syncs: AtomicU64,
    device_to_host: AtomicU64,
    host_to_device: AtomicU64,
    allocations: AtomicU64,
}

/// The device-wide record of the first bad device-side target since the host
/// last looked (see [`Device::target_error_record`]).
#[derive(Default)]
struct TargetErrors {
    record: Mutex<Option<Storage>>,
    pending: AtomicBool,
}

struct Inner {
    id: u64,
    label: String,
    limits: DeviceLimits,
    /// The projection path the plans use ([`Device::set_projection`]): a [`Projection`] as u8.
    projection: std::sync::atomic::AtomicU8,
    /// The projection GEMMs' tile the plans ask for ([`Device::set_gemm_tile`]): a [`GemmTile`] as u8.
    gemm_tile: std::sync::atomic::AtomicU8,
    /// Whether the logits' sums split ([`Device::set_split_k`]): a [`SplitK`] as u8.
    split_k: std::sync::atomic::AtomicU8,
    backend: Backend,
    counts: Counts,
    target_errors: TargetErrors,
}

/// A device that runs the kernels. Cheap to clone (shared handle); every
/// clone is the same device (same stream).
#[derive(Clone)]
pub struct Device(Arc<Inner>);

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.0.label)
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

/// `n` of the `n`-th simulator device made in this process (from 0): each
/// simulator is its own device, so an error about mixing two names two labels.
#[cfg(feature = "sim")]
fn next_sim_index() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The byte the simulator fills unwritten memory with.
#[cfg(feature = "sim")]
pub(crate) const UNWRITTEN: u8 = 0xFF;

/// How new memory starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Init {
    /// All zero bytes.
    Zero,
    /// Whatever was there: for memory a kernel writes in full before anything
    /// reads it. On CUDA it is not cleared (a clear costs one more pass over the
    /// memory and one more stream operation); in the simulator it is filled
    /// with [`UNWRITTEN`] bytes (NaN in every float type, all bits set in
    /// integers), so that any element a kernel fails to write shows up in the
    /// tests.
    Unwritten,
}

enum Mem {
    Cuda(cuda::CudaMem),
    #[cfg(feature = "sim")]
    Host(sim::HostBuf),
}

/// Device memory the crate owns (a CUDA allocation, or 256-byte aligned host
/// memory in the simulator), shared by the handles that use it: a workspace
/// reuses a buffer once no record holds it any more.
#[derive(Clone)]
pub(crate) struct Storage(Arc<Mem>);

impl Storage {
    /// Whether this handle is the only one (nothing else uses the memory).
    pub(crate) fn is_unique(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// Size in bytes (at least 1).
    pub(crate) fn bytes(&self) -> usize {
        match &*self.0 {
            Mem::Cuda(m) => m.bytes(),
            #[cfg(feature = "sim")]
            Mem::Host(h) => h.len(),
        }
    }

    /// The device address (a host address in the simulator).
    pub(crate) fn address(&self) -> u64 {
        match &*self.0 {
            Mem::Cuda(m) => m.address(),
            #[cfg(feature = "sim")]
            Mem::Host(h) => h.as_ptr() as u64,
        }
    }
}

impl Device {
    /// The CUDA GPU `ordinal` on its primary context, with a new non-blocking
    /// stream of the crate's own. Without the NVIDIA driver library, or without
    /// a GPU, this is [`AiecError::CudaUnavailable`] saying what is missing; it
    /// never panics.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        let (backend, label, limits) = cuda::CudaBackend::new(ordinal)?;
        Ok(Self::wrap(Backend::Cuda(backend), label, limits))
    }

    /// A device that launches on the caller's cudarc `stream` (and allocates
    /// stream-ordered on it). Nothing else is synchronised: work the caller
    /// queues on that stream before and after is ordered with the crate's by
    /// the stream itself. Devices on one context share their compiled modules.
    pub fn from_cuda_stream(stream: Arc<CudaStream>) -> Result<Device> {
        let (backend, label, limits) = cuda::CudaBackend::on_stream(stream)?;
        Ok(Self::wrap(Backend::Cuda(backend), label, limits))
    }

    /// A device that launches on a raw `CUstream` owned by another library
    /// (PyTorch's `torch.cuda.current_stream().cuda_stream`, candle's stream),
    /// on the primary context of GPU `ordinal`.
    ///
    /// # Safety
    /// `stream` must be a valid stream of the primary context of GPU `ordinal`
    /// (or null, the legacy default stream), and must stay valid for as long as
    /// the returned device, any clone of it, and any buffer or tensor it
    /// allocated are alive. The crate never destroys it.
    pub unsafe fn from_raw_stream(ordinal: usize, stream: sys::CUstream) -> Result<Device> {
        let ctx = cuda::primary_context(ordinal)?;
        // SAFETY: forwarded from the caller.
        let stream = unsafe { ctx.wrap_borrowed_stream(stream) };
        Self::from_cuda_stream(stream)
    }

    /// The CPU simulator, with the schedule from `CUDA_SIM_SEED` and
    /// `CUDA_SIM_WORKERS` (defaults: seed 0 = index order, 1 worker).
    #[cfg(feature = "sim")]
    pub fn sim() -> Device {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Self::sim_with(env("CUDA_SIM_SEED").unwrap_or(0), env("CUDA_SIM_WORKERS").unwrap_or(1) as u32)
    }

    /// The CPU simulator with an explicit schedule: `seed` 0 runs threads and
    /// blocks in index order, any other seed in a seeded random order; blocks
    /// run on `workers` OS threads.
    #[cfg(feature = "sim")]
    pub fn sim_with(seed: u64, workers: u32) -> Device {
        let backend = sim::SimBackend::new(seed, workers);
        let label = format!("sim:{} (seed {seed}, workers {workers})", next_sim_index());
        Self::wrap(Backend::Sim(backend), label, DeviceLimits::new(sim::SIM_SM_COUNT, sim::SIM_ARCH))
    }

    fn wrap(backend: Backend, label: String, limits: DeviceLimits) -> Device {
        Device(Arc::new(Inner {
            id: next_id(),
            label,
            projection: std::sync::atomic::AtomicU8::new(limits.projection as u8),
            gemm_tile: std::sync::atomic::AtomicU8::new(limits.gemm_tile as u8),
            split_k: std::sync::atomic::AtomicU8::new(limits.split_k as u8),
            limits,
            backend,
            counts: Counts::default(),
            target_errors: TargetErrors::default(),
        }))
    }

    /// CUDA or simulator.
    pub fn kind(&self) -> DeviceKind {
        match &self.0.backend {
            Backend::Cuda(_) => DeviceKind::Cuda,
            #[cfg(feature = "sim")]
            Backend::Sim(_) => DeviceKind::Sim,
        }
    }

    /// A human-readable name, e.g. `cuda:0 (NVIDIA H200, sm_90)` or
    /// `sim:1 (seed 0, workers 1)` (each simulator device has its own number).
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// What launch plans need to know about this device, with the projection
    /// path [`Device::set_projection`] and the GEMM tile [`Device::set_gemm_tile`] chose.
    pub fn limits(&self) -> DeviceLimits {
        DeviceLimits {
            projection: self.projection(),
            gemm_tile: self.gemm_tile(),
            split_k: self.split_k(),
            ..self.0.limits
        }
    }

    /// The path of the decision projection's products (logits, `dv`, `dW`):
    /// [`Projection::Tf32x3`] by default from sm_80 on (and on the simulator,
    /// which reports sm_80), [`Projection::F32`] before.
    pub fn projection(&self) -> Projection {
        match self.0.projection.load(Ordering::Relaxed) {
            1 => Projection::Tf32x3,
            2 => Projection::Tf32,
            _ => Projection::F32,
        }
    }

    /// Chooses the path of the decision projection for every later launch on
    /// this device (and its clones): [`Projection::F32`] anywhere, the tensor-core
    /// paths from sm_80 on ([`Projection::Tf32`] is opt-in: about 1e-3 relative
    /// error, as `torch.backends.cuda.matmul.allow_tf32`). A tensor-core path on
    /// a device without TF32 tensor cores (sm_75) is [`AiecError::Unsupported`]
    /// and changes nothing.
    pub fn set_projection(&self, projection: Projection) -> Result<()> {
        if projection.needs_tensor_cores() && !crate::launch::tensor_cores(self.0.limits.arch) {
            return Err(AiecError::Unsupported {
                what: format!("the {projection:?} projection on {} (it needs sm_80 or later)", self.0.label),
            });
        }
        self.0.projection.store(projection as u8, Ordering::Relaxed);
        Ok(())
    }

    /// The rows of the tensor-core projection GEMMs' block tile the plans ask for:
    /// [`GemmTile::Auto`] (the default) unless [`Device::set_gemm_tile`] chose one.
    pub fn gemm_tile(&self) -> GemmTile {
        match self.0.gemm_tile.load(Ordering::Relaxed) {
            1 => GemmTile::Rows64,
            2 => GemmTile::Rows128,
            _ => GemmTile::Auto,
        }
    }

    /// Chooses the tensor-core projection GEMMs' block tile for every later launch
    /// on this device (and its clones), for benchmarks and tests that want one tile;
    /// [`GemmTile::Auto`], the default, lets [`crate::launch::gemm_rows`] decide per
    /// launch. The f32 SIMT path ([`Projection::F32`]) keeps its 64 rows whatever is set.
    ///
    /// ```
    /// # #[cfg(feature = "sim")] {
    /// use aiec::launch::GemmTile;
    /// let dev = aiec::Device::sim();
    /// assert_eq!(dev.gemm_tile(), GemmTile::Auto);
    /// dev.set_gemm_tile(GemmTile::Rows128); // the `_m128` kernels from now on
    /// assert_eq!(dev.limits().gemm_tile, GemmTile::Rows128);
    /// # }
    /// ```
    pub fn set_gemm_tile(&self, tile: GemmTile) {
        self.0.gemm_tile.store(tile as u8, Ordering::Relaxed);
    }

    /// Whether the logits' sums over `C`, and `dv`'s over `K`, split into slices:
    /// [`SplitK::Auto`] (the default) unless [`Device::set_split_k`] chose.
    pub fn split_k(&self) -> SplitK {
        match self.0.split_k.load(Ordering::Relaxed) {
            1 => SplitK::Off,
            2 => SplitK::On,
            _ => SplitK::Auto,
        }
    }

    /// Chooses whether `aiec_fwd_logits` splits its sums over `C`, and `aiec_bwd_dv_dw` `dv`'s
    /// over `K` and `dW`'s over `B`, for every later launch on this device (and its clones).
    /// [`SplitK::Auto`], the default, decides by the SM count ([`crate::launch::logits_split`],
    /// [`crate::launch::bwd_slices`]), so devices with different SM counts may give different
    /// last bits; with the split and the tile ([`Device::set_gemm_tile`]) pinned, the order of
    /// the sums no longer depends on the SM count.
    ///
    /// ```
    /// # #[cfg(feature = "sim")] {
    /// use aiec::launch::{GemmTile, SplitK};
    /// let dev = aiec::Device::sim();
    /// assert_eq!(dev.split_k(), SplitK::Auto);
    /// dev.set_gemm_tile(GemmTile::Rows64); // sums in one order whatever the SM count
    /// dev.set_split_k(SplitK::Off);
    /// assert_eq!(dev.limits().split_k, SplitK::Off);
    /// # }
    /// ```
    pub fn set_split_k(&self, split: SplitK) {
        self.0.split_k.store(split as u8, Ordering::Relaxed);
    }

    /// The cudarc stream this device launches on (CUDA only).
    pub fn cuda_stream(&self) -> Option<&Arc<CudaStream>> {
        match &self.0.backend {
            Backend::Cuda(c) => Some(c.stream()),
            #[cfg(feature = "sim")]
            Backend::Sim(_) => None,
        }
    }

    /// Modules compiled and loaded into this device's context so far (shared
    /// by every device of that context); 0 on the simulator, whose kernels are
    /// built in.
    pub fn loaded_modules(&self) -> usize {
        match &self.0.backend {
            Backend::Cuda(c) => c.loaded_modules(),
            #[cfg(feature = "sim")]
            Backend::Sim(_) => 0,
        }
    }

    /// Whether memory of `other` is addressable by this device's kernels: the
    /// same CUDA context, or both simulators (host memory).
    pub fn shares_memory_with(&self, other: &Device) -> bool {
        match (&self.0.backend, &other.0.backend) {
            (Backend::Cuda(a), Backend::Cuda(b)) => a.context_key() == b.context_key(),
            #[cfg(feature = "sim")]
            (Backend::Sim(_), Backend::Sim(_)) => true,
            #[cfg(feature = "sim")]
            _ => false,
        }
    }

    /// What this device was asked to do so far.
    pub fn stats(&self) -> DeviceStats {
        let c = &self.0.counts;
        DeviceStats {
            launches: c.launches.load(Ordering::Relaxed),
            host_syncs: c.host_syncs.load(Ordering::Relaxed),
            device_to_host: c.device_to_host.load(Ordering::Relaxed),
            host_to_device: c.host_to_device.load(Ordering::Relaxed),
            allocations: c.allocations.load(Ordering::Relaxed),
        }
    }

    /// Waits until all work queued on this device has finished. Then reports
    /// a bad device-side target seen since the last check (see
    /// [`AiecError::TargetOutOfRange`]), once.
    pub fn synchronize(&self) -> Result<()> {
        self.0.counts.host_syncs.fetch_add(1, Ordering::Relaxed);
        match &self.0.backend {
            Backend::Cuda(c) => c.synchronize()?,
            #[cfg(feature = "sim")]
            Backend::Sim(_) => {}
        }
        self.check_target_errors()
    }

    /// Gives memory the crate's pool holds for reuse back to the system (CUDA;
    /// waits for the device first). A no-op on the simulator.
    pub fn release_cached_memory(&self) -> Result<()> {
        match &self.0.backend {
            Backend::Cuda(c) => c.release_cached_memory(),
            #[cfg(feature = "sim")]
            Backend::Sim(_) => Ok(()),
        }
    }

    /// Compiles and loads, ahead of the first step, every kernel a training
    /// step in `dtype` launches. The modules compile in parallel (one thread
    /// each) and go through the on-disk cache, so the first step of a run pays
    /// no compile; without this, each module compiles when first launched. A
    /// no-op on the simulator, whose kernels are built with the crate.
    pub fn prepare(&self, dtype: DType) -> Result<()> {
        match &self.0.backend {
            Backend::Cuda(c) => c.prepare(&crate::launch::training_modules(dtype)),
            #[cfg(feature = "sim")]
            Backend::Sim(_) => Ok(()),
        }
    }

    /// Runs `plan` on this device (asynchronously on CUDA). The arguments are
    /// packed once, here, for both kinds: `args[i]` points at the `i`-th value.
    ///
    /// # Safety
    /// Every `KernelArg::Ptr` of the plan must address memory of this device
    /// that is live and large enough for what the kernel reads and writes, and
    /// no buffer the kernel writes may be read or written elsewhere until the
    /// launch has finished.
    pub unsafe fn launch(&self, plan: &LaunchPlan) -> Result<()> {
        // Each value in its own 8-byte aligned slot (structs may be larger).
        let mut values: Vec<Vec<u64>> = plan
            .args
            .iter()
            .map(|a| {
                let bytes = a.to_bytes();
                let mut slot = vec![0u64; bytes.len().div_ceil(8).max(1)];
                bytemuck::cast_slice_mut::<u64, u8>(&mut slot)[..bytes.len()].copy_from_slice(&bytes);
                slot
            })
            .collect();
        let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| v.as_mut_ptr().cast()).collect();
        self.0.counts.launches.fetch_add(1, Ordering::Relaxed);
        match &self.0.backend {
            // SAFETY: forwarded from the caller; `params` point into `values`,
            // which outlives the call.
            Backend::Cuda(c) => unsafe { c.launch(plan, &mut params) },
            #[cfg(feature = "sim")]
            Backend::Sim(s) => unsafe { s.launch(plan, &mut params) },
        }
    }

    /// Copies `bytes` from `src` to `dst`, both on this device (asynchronous on
    /// CUDA: `cuMemcpyDtoDAsync` on the device's stream).
    ///
    /// # Safety
    /// Both addresses must point at `bytes` live bytes of this device, not
    /// overlapping, and `dst` must not be in use elsewhere until the copy ends.
    pub(crate) unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        match &self.0.backend {
            // SAFETY: forwarded from the caller.
            Backend::Cuda(c) => unsafe { c.copy_dtod(dst, src, bytes) },
            #[cfg(feature = "sim")]
            Backend::Sim(_) => {
                // SAFETY: forwarded from the caller; simulator addresses are host addresses.
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
                Ok(())
            }
        }
    }

    /// Sets `bytes` bytes at `addr` to `value` (stream-ordered on CUDA).
    ///
    /// # Safety
    /// `addr` must address `bytes` live bytes of this device that nothing else
    /// uses until the operation ends.
    pub(crate) unsafe fn memset(&self, addr: u64, value: u8, bytes: usize) -> Result<()> {
        match &self.0.backend {
            // SAFETY: forwarded from the caller.
            Backend::Cuda(c) => unsafe { c.memset(addr, value, bytes) },
            #[cfg(feature = "sim")]
            Backend::Sim(_) => {
                // SAFETY: forwarded from the caller; simulator addresses are host addresses.
                unsafe { std::ptr::write_bytes(addr as *mut u8, value, bytes) };
                Ok(())
            }
        }
    }

    /// `bytes` bytes of new memory; counts one allocation.
    pub(crate) fn alloc(&self, bytes: usize, init: Init) -> Result<Storage> {
        self.0.counts.allocations.fetch_add(1, Ordering::Relaxed);
        let mem = match &self.0.backend {
            Backend::Cuda(c) => {
                let m = c.alloc(bytes)?;
                if init == Init::Zero {
                    // SAFETY: `m` is fresh, `m.bytes()` long, and used by nothing else yet.
                    unsafe { c.memset(m.address(), 0, m.bytes()) }?;
                }
                Mem::Cuda(m)
            }
            #[cfg(feature = "sim")]
            Backend::Sim(_) => Mem::Host(
                match init {
                    Init::Zero => sim::HostBuf::zeros(bytes),
                    Init::Unwritten => sim::HostBuf::filled(bytes, UNWRITTEN),
                }
                .ok_or_else(|| AiecError::OutOfMemory {
                    what: format!("memory of {}", self.label()),
                    bytes,
                })?,
            ),
        };
        Ok(Storage(Arc::new(mem)))
    }

    /// New memory holding `bytes` (one allocation and one host-to-device copy).
    pub(crate) fn upload(&self, bytes: &[u8]) -> Result<Storage> {
        let s = self.alloc(bytes.len(), Init::Unwritten)?;
        // SAFETY: `s` is fresh and at least `bytes.len()` long.
        unsafe { self.write(s.address(), bytes) }?;
        Ok(s)
    }

    /// Copies host `bytes` to `addr` (one host-to-device copy; none when empty).
    ///
    /// # Safety
    /// `addr` must address `bytes.len()` live bytes of this device that no
    /// kernel uses concurrently (stream order covers the crate's own kernels).
    pub(crate) unsafe fn write(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.0.counts.host_to_device.fetch_add(1, Ordering::Relaxed);
        match &self.0.backend {
            // SAFETY: forwarded from the caller.
            Backend::Cuda(c) => unsafe { c.write(addr, bytes) },
            #[cfg(feature = "sim")]
            Backend::Sim(_) => {
                // SAFETY: forwarded; simulated launches are synchronous, so no kernel runs now.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
                Ok(())
            }
        }
    }

    /// Copies `out.len()` bytes from `addr` to the host, waiting for the
    /// device: one host sync and one device-to-host copy. Reports a pending
    /// bad device-side target like [`Device::synchronize`].
    ///
    /// # Safety
    /// `addr` must address `out.len()` live bytes of this device.
    pub(crate) unsafe fn read(&self, addr: u64, out: &mut [u8]) -> Result<()> {
        self.0.counts.host_syncs.fetch_add(1, Ordering::Relaxed);
        self.0.counts.device_to_host.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        unsafe { self.read_raw(addr, out) }?;
        self.check_target_errors()
    }

    /// # Safety
    /// As [`Device::read`].
    unsafe fn read_raw(&self, addr: u64, out: &mut [u8]) -> Result<()> {
        match &self.0.backend {
            // SAFETY: forwarded from the caller.
            Backend::Cuda(c) => unsafe { c.read(addr, out) },
            #[cfg(feature = "sim")]
            Backend::Sim(_) => {
                // SAFETY: forwarded from the caller; simulator addresses are host addresses.
                unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len()) };
                Ok(())
            }
        }
    }

    /// The device address of the device-wide record into which a forward on
    /// device-side targets copies its first bad target (allocated on first
    /// use, then reused; `index = -1` means none). Marks a check as pending:
    /// the next [`Device::synchronize`] or read reports the error, once.
    pub(crate) fn target_error_record(&self) -> Result<u64> {
        let te = &self.0.target_errors;
        let mut record = te.record.lock().unwrap_or_else(|p| p.into_inner());
        if record.is_none() {
            let s = self.alloc(std::mem::size_of::<AiecTargetStatus>(), Init::Zero)?;
            // All bytes 0xFF: index = -1, no error.
            // SAFETY: `s` is fresh and exactly one record long.
            unsafe { self.memset(s.address(), 0xFF, s.bytes()) }?;
            *record = Some(s);
        }
        te.pending.store(true, Ordering::Release);
        Ok(record.as_ref().map(Storage::address).unwrap_or(0))
    }

    /// After a synchronisation: reads the device-wide target record when a
    /// forward on device targets ran since the last check, clears it, and
    /// returns the error it holds.
    fn check_target_errors(&self) -> Result<()> {
        let te = &self.0.target_errors;
        if !te.pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let record = te.record.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = record.as_ref() else { return Ok(()) };
        let mut status = AiecTargetStatus::zeroed_none();
        self.0.counts.device_to_host.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `s` holds one AiecTargetStatus; the device is idle (just synchronised).
        unsafe { self.read_raw(s.address(), bytemuck::bytes_of_mut(&mut status)) }?;
        if status.index < 0 {
            return Ok(());
        }
        // SAFETY: as above; the device is idle.
        unsafe { self.memset(s.address(), 0xFF, s.bytes()) }?;
        Err(AiecError::TargetOutOfRange {
            index: status.index as usize,
            value: status.value,
            classes: status.classes as usize,
        })
    }
}

/// The CUDA driver and its GPUs, as [`cuda_driver`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDriver {
    /// `cuDriverGetVersion`, e.g. `12080` for CUDA 12.8.
    pub version: i32,
    /// Each GPU's name and architecture, by ordinal.
    pub gpus: Vec<(String, crate::nvrtc::Arch)>,
}

/// Reads the CUDA driver's version and its GPUs without opening a context
/// (for diagnostics, and before compiling for a GPU: it also tells NVRTC's
/// loader the driver's version, see [`crate::nvrtc::set_driver_version`]).
/// No driver, or a driver without GPUs, is [`AiecError::CudaUnavailable`]
/// saying which; never panics.
pub fn cuda_driver() -> Result<CudaDriver> {
    cuda::driver_info().map(|(version, gpus)| CudaDriver { version, gpus })
}

/// The devices present, for tests that run one body on every backend: the
/// simulator (when built with `sim`) and CUDA GPU 0 when it can be opened. The
/// second value says why CUDA is absent.
pub fn available_devices() -> (Vec<Device>, Option<AiecError>) {
    let mut out = Vec::new();
    #[cfg(feature = "sim")]
    out.push(Device::sim());
    match Device::cuda(0) {
        Ok(d) => {
            out.push(d);
            (out, None)
        }
        Err(e) => (out, Some(e)),
    }
}
