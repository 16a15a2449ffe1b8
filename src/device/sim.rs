//! The simulator backend: the kernels of `kernels/*.cu`, compiled for the host
//! by `build.rs` with `kernels/sim/cuda_sim.h`, launched through the C ABI of
//! `kernels/sim/sim_abi.h`. Memory is host memory; a "device address" is a host
//! address.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::Mutex;

use crate::error::{AiecError, Result};
use crate::launch::LaunchPlan;

/// The SM count the simulator reports to launch plans: small grids keep the
/// simulation fast while still exercising grid-stride loops over many blocks.
pub(crate) const SIM_SM_COUNT: u32 = 2;

/// The compute capability the simulator reports: sm_80, so that the launch
/// plans take the tensor-core paths by default (the simulator executes
/// `mma.sync` exactly as `kernels/mma.cuh` documents); tests also run the f32
/// path through `Device::set_projection`.
pub(crate) const SIM_ARCH: crate::nvrtc::Arch = crate::nvrtc::Arch { major: 8, minor: 0 };

extern "C" {
    fn aiec_sim_launch(
        kernel_name: *const c_char,
        gx: c_uint,
        gy: c_uint,
        gz: c_uint,
        bx: c_uint,
        by: c_uint,
        bz: c_uint,
        dyn_smem: usize,
        args: *mut *mut c_void,
        nargs: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn aiec_sim_set_seed(seed: u64);
    fn aiec_sim_set_workers(workers: c_uint);
    fn aiec_sim_kernel_count() -> usize;
    fn aiec_sim_kernel_name(i: usize) -> *const c_char;
}

/// The simulator's schedule settings are process-wide: launches take this lock
/// and set their device's schedule first, so devices with different seeds can
/// be used from parallel tests.
static LAUNCH_LOCK: Mutex<()> = Mutex::new(());

/// Every kernel entry point compiled into the simulator.
pub fn kernel_names() -> Vec<String> {
    // SAFETY: the ABI returns valid NUL-terminated names that live for the
    // whole process, for every index below the count.
    unsafe {
        (0..aiec_sim_kernel_count())
            .map(|i| CStr::from_ptr(aiec_sim_kernel_name(i)).to_string_lossy().into_owned())
            .collect()
    }
}

pub(crate) struct SimBackend {
    seed: u64,
    workers: u32,
}

impl SimBackend {
    pub(crate) fn new(seed: u64, workers: u32) -> Self {
        SimBackend { seed, workers }
    }

    /// # Safety
    /// As [`super::Device::launch`]; `params` has one pointer per plan argument.
    pub(crate) unsafe fn launch(&self, plan: &LaunchPlan, params: &mut [*mut c_void]) -> Result<()> {
        let name = CString::new(plan.kernel.as_str()).expect("kernel names have no NUL byte");
        let mut err = vec![0 as c_char; 1024];
        let [gx, gy, gz] = plan.grid;
        let [bx, by, bz] = plan.block;
        let _guard = LAUNCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the name and error buffer outlive the call; `params` and the
        // memory they address are the caller's promise (see Device::launch).
        let code = unsafe {
            aiec_sim_set_seed(self.seed);
            aiec_sim_set_workers(self.workers);
            aiec_sim_launch(
                name.as_ptr(),
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                plan.shared_bytes as usize,
                params.as_mut_ptr(),
                params.len(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if code == 0 {
            return Ok(());
        }
        // SAFETY: the ABI NUL-terminates the message within `err`.
        let message = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        Err(AiecError::Sim { kernel: plan.kernel.clone(), code, message })
    }
}

/// Host memory standing in for device memory, 16-byte aligned like the vector
/// accesses of the kernels need (CUDA allocations are 256-byte aligned). It is
/// a raw allocation, like device memory: kernels write through its address.
pub(crate) struct HostBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: HostBuf owns its allocation; access is synchronised by the tensor
// API (`&mut` for buffers a kernel writes) like a CUDA allocation's.
unsafe impl Send for HostBuf {}
unsafe impl Sync for HostBuf {}

const HOST_ALIGN: usize = 256;

impl HostBuf {
    /// `None` for a size no layout can describe (over `isize::MAX` once aligned).
    fn layout(len: usize) -> Option<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(len.max(1), HOST_ALIGN).ok()
    }

    /// `len` zero bytes, or `None` when the host cannot hold them (like a
    /// failed device allocation: an error for the caller, not an abort).
    pub(crate) fn zeros(len: usize) -> Option<Self> {
        let layout = Self::layout(len)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(HostBuf { ptr, len })
    }

    /// `len` bytes of `byte`, or `None` as [`HostBuf::zeros`].
    pub(crate) fn filled(len: usize, byte: u8) -> Option<Self> {
        let b = Self::zeros(len)?;
        // SAFETY: `b` owns `len` writable bytes.
        unsafe { std::ptr::write_bytes(b.ptr, byte, len) };
        Some(b)
    }

    pub(crate) fn len(&self) -> usize {
        self.len.max(1)
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `zeros` with this layout (which existed then), freed once.
            unsafe { std::alloc::dealloc(self.ptr, layout) };
        }
    }
}
