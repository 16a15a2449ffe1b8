//! The CUDA backend: one context, one stream, kernels compiled by NVRTC for the
//! device's own architecture and loaded on first use.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext, CudaSlice, CudaStream, DevicePtr};

use crate::error::{AiecError, Result};
use crate::launch::{DeviceLimits, LaunchPlan};
use crate::nvrtc::{self, Arch, Image};

const DRIVER_HINT: &str =
    "Install the NVIDIA driver (it provides libcuda.so.1) on a machine with an NVIDIA GPU; \
                           without one, build with the `sim` feature and use Device::sim()";

fn driver_err(call: &'static str) -> impl Fn(result::DriverError) -> AiecError {
    move |e| AiecError::Driver { call, message: format!("{e:?}") }
}

/// A loaded module; unloaded on drop.
struct LoadedModule(sys::CUmodule);

// SAFETY: a CUmodule handle may be used from any thread of its context.
unsafe impl Send for LoadedModule {}

/// Buffers come from the stream-ordered allocator (`cuMemAllocAsync`, the
/// device's default memory pool). By default that pool hands freed memory back
/// to the system at every synchronisation, so a training loop that reads its
/// loss each step would map its activations (`y`, `dx`: hundreds of MB) afresh
/// every step. Raising the pool's release threshold keeps freed memory for
/// reuse, as PyTorch's caching allocator does. Best effort: on a device without
/// memory pools (allocations are then synchronous) it changes nothing.
fn keep_freed_memory(ctx: &CudaContext) {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: the context is live; `pool` is a valid out-pointer, and the
    // threshold a u64 as the attribute requires.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
            let mut threshold = u64::MAX;
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            );
        }
    }
}

pub(crate) struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    modules: Mutex<HashMap<nvrtc::Module, LoadedModule>>,
    functions: Mutex<HashMap<String, usize>>, // CUfunction stored as an address (Send)
}

impl CudaBackend {
    pub(crate) fn new(ordinal: usize) -> Result<(Self, String, DeviceLimits)> {
        // SAFETY: only probes the loader for the driver library's names.
        if !unsafe { sys::is_culib_present() } {
            return Err(AiecError::CudaUnavailable {
                reason: "the NVIDIA driver library (libcuda.so) was not found".into(),
                hint: DRIVER_HINT,
            });
        }
        // cudarc panics if the driver lacks a symbol of its bindings; turn that
        // into an error too.
        let opened = std::panic::catch_unwind(|| -> std::result::Result<_, result::DriverError> {
            let count = CudaContext::device_count()?;
            if ordinal as i64 >= count as i64 {
                return Ok(Err(count));
            }
            Ok(Ok(CudaContext::new(ordinal)?))
        });
        let ctx = match opened {
            Err(_) => {
                return Err(AiecError::CudaUnavailable {
                    reason: "the NVIDIA driver library is too old for this build (missing entry point)"
                        .into(),
                    hint: DRIVER_HINT,
                })
            }
            Ok(Err(e)) => {
                let reason = if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
                    "the driver found no CUDA GPU".to_string()
                } else {
                    format!("the driver failed to initialise: {e:?}")
                };
                return Err(AiecError::CudaUnavailable { reason, hint: DRIVER_HINT });
            }
            Ok(Ok(Err(count))) => {
                return Err(AiecError::CudaUnavailable {
                    reason: format!("GPU {ordinal} requested, {count} present"),
                    hint: DRIVER_HINT,
                })
            }
            Ok(Ok(Ok(ctx))) => ctx,
        };
        // SAFETY: this backend uses a single stream, so cross-stream event
        // tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        keep_freed_memory(&ctx);
        let (major, minor) = ctx.compute_capability().map_err(driver_err("cuDeviceGetAttribute"))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("cuDeviceGetAttribute"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let arch = Arch { major: major as u32, minor: minor as u32 };
        let label = format!("cuda:{ordinal} ({name}, {arch})");
        let stream = ctx.default_stream();
        let me = CudaBackend {
            ctx,
            stream,
            arch,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        };
        Ok((me, label, DeviceLimits { sm_count: sms.max(1) as u32 }))
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("cuStreamSynchronize"))
    }

    pub(crate) fn alloc_zeros(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        self.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(driver_err("cuMemAlloc"))
    }

    /// Uncleared memory, for a kernel to write in full.
    pub(crate) fn alloc_unwritten(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: the bytes are unset; the callers (`Device::alloc_unwritten`)
        // have a kernel write every byte they later read. Any byte pattern is a
        // valid u8, so even a read of an unwritten byte is no undefined behaviour.
        unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(driver_err("cuMemAlloc"))
    }

    pub(crate) fn upload(&self, bytes: &[u8]) -> Result<CudaSlice<u8>> {
        if bytes.is_empty() {
            return self.alloc_zeros(0);
        }
        self.stream.clone_htod(bytes).map_err(driver_err("cuMemcpyHtoD"))
    }

    pub(crate) fn download(&self, s: &CudaSlice<u8>, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return self.synchronize();
        }
        let view = s.slice(..out.len());
        self.stream.memcpy_dtoh(&view, out).map_err(driver_err("cuMemcpyDtoH"))?;
        self.synchronize()
    }

    /// # Safety
    /// `dst` and `src` must address `bytes` live bytes of this device each.
    pub(crate) unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // A raw driver call: cudarc binds the context only in its own methods.
        self.ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))?;
        // SAFETY: forwarded from the caller.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("cuMemcpyDtoDAsync"))
    }

    pub(crate) fn address(&self, s: &CudaSlice<u8>) -> u64 {
        let (ptr, _sync) = s.device_ptr(&self.stream);
        ptr
    }

    /// Compiles (in parallel, through the cache) and loads every module of
    /// `modules` not loaded yet.
    pub(crate) fn prepare(&self, modules: &[nvrtc::Module]) -> Result<()> {
        let mut loaded = self.modules.lock().expect("no poisoned lock");
        let mut missing: Vec<nvrtc::Module> = Vec::new();
        for &m in modules {
            if !loaded.contains_key(&m) && !missing.contains(&m) {
                missing.push(m);
            }
        }
        let images = nvrtc::compile_for_device_parallel(&nvrtc::cache_dir(), &missing, self.arch)?;
        for (m, (image, _)) in missing.into_iter().zip(images) {
            let module = self.load(&image)?;
            loaded.insert(m, module);
        }
        Ok(())
    }

    /// Loads a compiled image into this context.
    fn load(&self, image: &Image) -> Result<LoadedModule> {
        self.ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))?;
        // SAFETY: the image is a complete CUBIN, or PTX made NUL-terminated
        // here; both outlive the call, which copies them.
        let module = unsafe {
            match image {
                Image::Cubin(b) => result::module::load_data(b.as_ptr().cast::<c_void>()),
                Image::Ptx(s) => {
                    let c = CString::new(s.as_str()).expect("PTX has no NUL byte");
                    result::module::load_data(c.as_ptr().cast::<c_void>())
                }
            }
        }
        .map_err(driver_err("cuModuleLoadData"))?;
        Ok(LoadedModule(module))
    }

    /// The function `plan.kernel` of module `plan.module`, compiling and loading
    /// the module on first use.
    fn function(&self, plan: &LaunchPlan) -> Result<sys::CUfunction> {
        if let Some(&f) = self.functions.lock().expect("no poisoned lock").get(&plan.kernel) {
            return Ok(f as sys::CUfunction);
        }
        self.prepare(&[plan.module])?;
        let module = self.modules.lock().expect("no poisoned lock")[&plan.module].0;
        let name = CString::new(plan.kernel.as_str()).expect("kernel names have no NUL byte");
        // SAFETY: `module` is loaded and stays loaded while `self` lives.
        let f = unsafe { result::module::get_function(module, name) }
            .map_err(driver_err("cuModuleGetFunction"))?;
        self.functions.lock().expect("no poisoned lock").insert(plan.kernel.clone(), f as usize);
        Ok(f)
    }

    /// # Safety
    /// As [`super::Device::launch`]; `params` has one pointer per plan argument.
    pub(crate) unsafe fn launch(&self, plan: &LaunchPlan, params: &mut [*mut c_void]) -> Result<()> {
        let f = self.function(plan)?;
        self.ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))?;
        let [gx, gy, gz] = plan.grid;
        let [bx, by, bz] = plan.block;
        // SAFETY: forwarded from the caller.
        unsafe {
            result::launch_kernel(
                f,
                (gx, gy, gz),
                (bx, by, bz),
                plan.shared_bytes,
                self.stream.cu_stream(),
                params,
            )
        }
        .map_err(driver_err("cuLaunchKernel"))
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        // The last handle may be dropped on a thread where this context is not current.
        let _ = self.ctx.bind_to_thread();
        if let Ok(modules) = self.modules.get_mut() {
            for (_, m) in modules.drain() {
                // SAFETY: each module was loaded once and is unloaded once.
                let _ = unsafe { result::module::unload(m.0) };
            }
        }
    }
}
