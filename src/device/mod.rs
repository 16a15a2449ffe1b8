//! Devices: a CUDA GPU (cudarc context + one stream) or, with the `sim`
//! feature, the CPU simulator running the same kernel source. Both execute the
//! same [`LaunchPlan`]s through [`Device::launch`]; only the final call differs.
//!
//! Each device counts its launches, host synchronisations and device-to-host
//! copies ([`DeviceStats`]), so tests can assert how many of each a step costs.

mod cuda;
#[cfg(feature = "sim")]
mod sim;

#[cfg(feature = "sim")]
pub use sim::kernel_names as sim_kernel_names;

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::{AiecError, Result};
use crate::launch::{DeviceLimits, LaunchPlan};

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
}

impl std::ops::Sub for DeviceStats {
    type Output = DeviceStats;
    fn sub(self, o: DeviceStats) -> DeviceStats {
        DeviceStats {
            launches: self.launches - o.launches,
            host_syncs: self.host_syncs - o.host_syncs,
            device_to_host: self.device_to_host - o.device_to_host,
        }
    }
}

enum Backend {
    Cuda(cuda::CudaBackend),
    #[cfg(feature = "sim")]
    Sim(sim::SimBackend),
}

struct Inner {
    id: u64,
    label: String,
    limits: DeviceLimits,
    backend: Backend,
    launches: AtomicU64,
    host_syncs: AtomicU64,
    device_to_host: AtomicU64,
}

/// A device that runs the kernels. Cheap to clone (shared handle).
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

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The byte the simulator fills [`Device::alloc_unwritten`] memory with.
#[cfg(feature = "sim")]
pub(crate) const UNWRITTEN: u8 = 0xFF;

/// Device memory: a CUDA allocation or (simulator) 16-byte aligned host memory.
pub(crate) enum Storage {
    Cuda(cudarc::driver::CudaSlice<u8>),
    #[cfg(feature = "sim")]
    Host(sim::HostBuf),
}

impl Device {
    /// The CUDA GPU `ordinal`. Without the NVIDIA driver library, or without a
    /// GPU, this is [`AiecError::CudaUnavailable`] saying what is missing; it
    /// never panics.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        let (backend, label, limits) = cuda::CudaBackend::new(ordinal)?;
        Ok(Self::wrap(Backend::Cuda(backend), label, limits))
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
        let label = format!("sim (seed {seed}, workers {workers})");
        Self::wrap(Backend::Sim(backend), label, DeviceLimits { sm_count: sim::SIM_SM_COUNT })
    }

    fn wrap(backend: Backend, label: String, limits: DeviceLimits) -> Device {
        Device(Arc::new(Inner {
            id: next_id(),
            label,
            limits,
            backend,
            launches: AtomicU64::new(0),
            host_syncs: AtomicU64::new(0),
            device_to_host: AtomicU64::new(0),
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

    /// A human-readable name, e.g. `cuda:0 (NVIDIA H200, sm_90)`.
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// What launch plans need to know about this device.
    pub fn limits(&self) -> DeviceLimits {
        self.0.limits
    }

    /// Launches, host syncs and device-to-host copies so far.
    pub fn stats(&self) -> DeviceStats {
        DeviceStats {
            launches: self.0.launches.load(Ordering::Relaxed),
            host_syncs: self.0.host_syncs.load(Ordering::Relaxed),
            device_to_host: self.0.device_to_host.load(Ordering::Relaxed),
        }
    }

    /// Waits until all work queued on this device has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.0.host_syncs.fetch_add(1, Ordering::Relaxed);
        match &self.0.backend {
            Backend::Cuda(c) => c.synchronize(),
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
        self.0.launches.fetch_add(1, Ordering::Relaxed);
        match &self.0.backend {
            // SAFETY: forwarded from the caller; `params` point into `values`,
            // which outlives the call.
            Backend::Cuda(c) => c.launch(plan, &mut params),
            #[cfg(feature = "sim")]
            Backend::Sim(s) => s.launch(plan, &mut params),
        }
    }

    /// Copies `bytes` from `src` to `dst`, both on this device (asynchronous on
    /// CUDA: `cuMemcpyDtoDAsync` on the device's stream).
    ///
    /// # Safety
    /// Both addresses must point at `bytes` live bytes of this device, not
    /// overlapping, and `dst` must not be in use elsewhere until the copy ends.
    pub(crate) unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
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

    pub(crate) fn alloc_zeros(&self, bytes: usize) -> Result<Storage> {
        match &self.0.backend {
            Backend::Cuda(c) => c.alloc_zeros(bytes).map(Storage::Cuda),
            #[cfg(feature = "sim")]
            Backend::Sim(_) => Ok(Storage::Host(sim::HostBuf::zeros(bytes))),
        }
    }

    /// Memory that a kernel writes in full before anything reads it. On CUDA it
    /// is not cleared: a clear costs one more pass over the memory (as much as
    /// a third of the pass over `x`) and one more stream operation. In the
    /// simulator it is filled with [`UNWRITTEN`] bytes (NaN in every float type,
    /// all bits set in integers), so that any element a kernel fails to write
    /// shows up in the tests.
    pub(crate) fn alloc_unwritten(&self, bytes: usize) -> Result<Storage> {
        match &self.0.backend {
            Backend::Cuda(c) => c.alloc_unwritten(bytes).map(Storage::Cuda),
            #[cfg(feature = "sim")]
            Backend::Sim(_) => Ok(Storage::Host(sim::HostBuf::filled(bytes, UNWRITTEN))),
        }
    }

    pub(crate) fn upload(&self, bytes: &[u8]) -> Result<Storage> {
        match &self.0.backend {
            Backend::Cuda(c) => c.upload(bytes).map(Storage::Cuda),
            #[cfg(feature = "sim")]
            Backend::Sim(_) => Ok(Storage::Host(sim::HostBuf::from_bytes(bytes))),
        }
    }

    /// Copies `storage` into `out` (the full length of `out`); waits for the
    /// device, so it counts one host sync and one device-to-host copy.
    pub(crate) fn download(&self, storage: &Storage, out: &mut [u8]) -> Result<()> {
        self.0.host_syncs.fetch_add(1, Ordering::Relaxed);
        self.0.device_to_host.fetch_add(1, Ordering::Relaxed);
        match (&self.0.backend, storage) {
            (Backend::Cuda(c), Storage::Cuda(s)) => c.download(s, out),
            #[cfg(feature = "sim")]
            (Backend::Sim(_), Storage::Host(h)) => {
                out.copy_from_slice(&h.as_bytes()[..out.len()]);
                Ok(())
            }
            #[cfg(feature = "sim")]
            _ => Err(AiecError::DeviceMismatch {
                what: "buffer",
                expected: self.label().to_string(),
                got: "another kind of device".into(),
            }),
        }
    }

    /// The device address of `storage` (a host address in the simulator).
    pub(crate) fn address(&self, storage: &Storage) -> u64 {
        match (&self.0.backend, storage) {
            (Backend::Cuda(c), Storage::Cuda(s)) => c.address(s),
            #[cfg(feature = "sim")]
            (_, Storage::Host(h)) => h.as_ptr() as u64,
            #[cfg(feature = "sim")]
            (_, Storage::Cuda(_)) => 0,
        }
    }
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
