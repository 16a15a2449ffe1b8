//! The CUDA backend: a stream (the crate's own non-blocking one, or the
//! caller's) on a context whose compiled modules and memory pool every device
//! of that context shares.
//!
//! * **Modules** are compiled by NVRTC for the device's own architecture and
//!   loaded once per context ([`ContextShared`], found through a process-wide
//!   registry keyed by the `CUcontext`), so two devices on one context compile
//!   and load once.
//! * **Memory** comes from a memory pool of the crate's own (`cuMemPoolCreate`),
//!   allocated and freed stream-ordered on the device's stream. The pool keeps
//!   freed memory for reuse (release threshold `u64::MAX`, as PyTorch's caching
//!   allocator does) without touching the device's default pool, which other
//!   libraries in the process use; when an allocation fails, the pool is
//!   trimmed and the allocation retried once. [`CudaMem`] binds its context
//!   before freeing, so dropping a buffer on any thread is safe.
//! * **Loading** never panics: a missing driver library or GPU is
//!   [`AiecError::CudaUnavailable`]. The driver library is probed here rather
//!   than through cudarc's loader, so the crate compiles whether cudarc loads
//!   the driver at run time or links it (another crate in the build may turn
//!   on cudarc's `dynamic-linking`).

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, Weak};

use cudarc::driver::{result, sys, CudaContext, CudaStream};

use crate::error::{AiecError, Result};
use crate::launch::{DeviceLimits, LaunchPlan};
use crate::nvrtc::{self, Arch, Image, Target};

const DRIVER_HINT: &str =
    "Install the NVIDIA driver (it provides libcuda.so.1) on a machine with an NVIDIA GPU; \
                           without one, build with the `sim` feature and use Device::sim()";

fn driver_err(call: &'static str) -> impl Fn(result::DriverError) -> AiecError {
    move |e| AiecError::Driver { call, message: format!("{e:?}") }
}

fn check(call: &'static str, r: sys::CUresult) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(AiecError::Driver { call, message: format!("{r:?}") })
    }
}

/// Whether the NVIDIA driver library can be loaded (the names cudarc's loader
/// tries first). Probed with `libloading`, so that this works whether cudarc
/// loads the driver at run time or links it.
fn driver_library_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading the driver library runs its initialisers, which have
        // no preconditions; the handle is dropped at once (cudarc loads it again).
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

/// A loaded module; unloaded by [`ContextShared`]'s drop.
struct LoadedModule(sys::CUmodule);

// SAFETY: a CUmodule handle may be used from any thread of its context.
unsafe impl Send for LoadedModule {}

/// A memory pool handle.
#[derive(Clone, Copy)]
struct Pool(sys::CUmemoryPool);

// SAFETY: memory pool handles may be used from any thread.
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

/// What every device of one CUDA context shares: the context, its compiled and
/// loaded modules, and the crate's memory pool on it.
pub(crate) struct ContextShared {
    ctx: Arc<CudaContext>,
    arch: Arch,
    sm_count: u32,
    name: String,
    /// `None` where the device has no memory pools (allocations are then
    /// synchronous `cuMemAlloc` / `cuMemFree`).
    pool: Option<Pool>,
    modules: Mutex<HashMap<nvrtc::Module, LoadedModule>>,
    functions: Mutex<HashMap<String, usize>>, // CUfunction stored as an address (Send)
}

/// The registry of live [`ContextShared`]s, keyed by `CUcontext` address.
static REGISTRY: Mutex<Vec<(usize, Weak<ContextShared>)>> = Mutex::new(Vec::new());

impl ContextShared {
    /// The shared state of `ctx`'s context, created on first use.
    fn of(ctx: &Arc<CudaContext>) -> Result<Arc<ContextShared>> {
        let key = ctx.cu_ctx() as usize;
        let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        reg.retain(|(_, w)| w.strong_count() > 0);
        if let Some(shared) = reg.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
            return Ok(shared);
        }
        let shared = Arc::new(Self::new(ctx.clone())?);
        reg.push((key, Arc::downgrade(&shared)));
        Ok(shared)
    }

    fn new(ctx: Arc<CudaContext>) -> Result<Self> {
        ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err("cuDeviceGetAttribute"))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("cuDeviceGetAttribute"))?;
        let pools =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED).unwrap_or(0);
        let pool = if pools != 0 { Some(create_pool(ctx.ordinal())?) } else { None };
        Ok(ContextShared {
            arch: Arch { major: major as u32, minor: minor as u32 },
            sm_count: sms.max(1) as u32,
            name: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
            pool,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            ctx,
        })
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))
    }

    /// Compiles (in parallel, through the cache) and loads every module of
    /// `modules` not loaded yet.
    fn prepare(&self, modules: &[nvrtc::Module]) -> Result<()> {
        let mut loaded = self.modules.lock().expect("no poisoned lock");
        let mut missing: Vec<nvrtc::Module> = Vec::new();
        for &m in modules {
            if !loaded.contains_key(&m) && !missing.contains(&m) {
                missing.push(m);
            }
        }
        let images = nvrtc::compile_for_device_parallel(&nvrtc::cache_dir(), &missing, self.arch)?;
        for (m, (image, _)) in missing.into_iter().zip(images) {
            let module = self.load_or_fallback(m, &image)?;
            loaded.insert(m, module);
        }
        Ok(())
    }

    /// Loads `image`; when the driver refuses a CUBIN (e.g. NVRTC newer than
    /// the driver), compiles PTX for this architecture (or the newest tested
    /// one below it) and loads that instead.
    fn load_or_fallback(&self, module: nvrtc::Module, image: &Image) -> Result<LoadedModule> {
        match self.load(image) {
            Ok(m) => Ok(m),
            Err(cubin_err) if matches!(image, Image::Cubin(_)) => {
                let ptx_arch =
                    Arch::TESTED.iter().rev().copied().find(|a| *a <= self.arch).unwrap_or(self.arch);
                let ptx = nvrtc::compile_cached(module, Target::Ptx(ptx_arch))?.0;
                self.load(&ptx).map_err(|ptx_err| AiecError::Driver {
                    call: "cuModuleLoadData",
                    message: format!(
                        "{module}: the CUBIN for {} was refused ({cubin_err}), and so was PTX for {ptx_arch} \
                         ({ptx_err}); NVRTC {} may be newer than this driver supports",
                        self.arch,
                        nvrtc::version().map(|(a, b)| format!("{a}.{b}")).unwrap_or_else(|_| "?".into())
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Loads a compiled image into this context.
    fn load(&self, image: &Image) -> Result<LoadedModule> {
        self.bind()?;
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
}

impl Drop for ContextShared {
    fn drop(&mut self) {
        // The last handle may be dropped on a thread where this context is not current.
        let _ = self.ctx.bind_to_thread();
        if let Ok(modules) = self.modules.get_mut() {
            for (_, m) in modules.drain() {
                // SAFETY: each module was loaded once and is unloaded once.
                let _ = unsafe { result::module::unload(m.0) };
            }
        }
        if let Some(Pool(pool)) = self.pool {
            // SAFETY: every allocation from the pool holds an Arc of `self`, so
            // all of them have been freed (stream-ordered) by now; destroying the
            // pool waits for those frees.
            let _ = unsafe { sys::cuMemPoolDestroy(pool) };
        }
    }
}

/// The prefix of `CUmemPoolProps` that every CUDA version shares (the C
/// layout; later fields are zero = defaults). Written through this struct, not
/// cudarc's, whose field list depends on the CUDA version feature that the
/// whole build graph selects.
#[repr(C)]
struct PoolPropsPrefix {
    alloc_type: u32,    // CU_MEM_ALLOCATION_TYPE_PINNED = 1
    handle_types: u32,  // CU_MEM_HANDLE_TYPE_NONE = 0
    location_type: u32, // CU_MEM_LOCATION_TYPE_DEVICE = 1
    location_id: i32,   // the device ordinal
}

fn create_pool(ordinal: usize) -> Result<Pool> {
    // SAFETY: an all-zero CUmemPoolProps is a valid value (every field is an
    // integer, a null pointer or reserved bytes); the prefix written over its
    // start is its documented first four 32-bit fields.
    let mut props: sys::CUmemPoolProps = unsafe { std::mem::zeroed() };
    assert!(std::mem::size_of::<sys::CUmemPoolProps>() >= std::mem::size_of::<PoolPropsPrefix>());
    // SAFETY: `props` is at least as large as the prefix and suitably aligned (8).
    unsafe {
        std::ptr::write(
            (&mut props as *mut sys::CUmemPoolProps).cast::<PoolPropsPrefix>(),
            PoolPropsPrefix { alloc_type: 1, handle_types: 0, location_type: 1, location_id: ordinal as i32 },
        )
    };
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: valid out-pointer and properties.
    check("cuMemPoolCreate", unsafe { sys::cuMemPoolCreate(&mut pool, &props) })?;
    let mut threshold = u64::MAX;
    // SAFETY: the pool is live; the attribute takes a u64.
    check("cuMemPoolSetAttribute", unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    })?;
    Ok(Pool(pool))
}

/// Device memory the crate owns: freed on drop, stream-ordered on the stream
/// it was allocated on, after binding its context.
pub(crate) struct CudaMem {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    shared: Arc<ContextShared>,
    stream: Arc<CudaStream>,
}

impl CudaMem {
    pub(crate) fn address(&self) -> u64 {
        self.ptr
    }
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for CudaMem {
    fn drop(&mut self) {
        // cudarc's own slices free without binding; a drop on a thread where
        // the context is not current would leak and leave a stale error.
        if self.shared.bind().is_err() {
            return;
        }
        // SAFETY: `ptr` was allocated by `CudaBackend::alloc` (from the pool on
        // `stream`, or by cuMemAlloc) and is freed once; `Storage` keeps it alive
        // while any buffer or record refers to it.
        let _ = unsafe {
            match self.shared.pool {
                Some(_) => sys::cuMemFreeAsync(self.ptr, self.stream.cu_stream()),
                None => sys::cuMemFree_v2(self.ptr),
            }
        };
    }
}

// SAFETY: the pointer is device memory, usable from any thread once the
// context is bound (every use binds it).
unsafe impl Send for CudaMem {}
unsafe impl Sync for CudaMem {}

/// One device: a stream on a shared context.
pub(crate) struct CudaBackend {
    shared: Arc<ContextShared>,
    stream: Arc<CudaStream>,
}

/// Opens the primary context of GPU `ordinal`, turning every failure (no
/// driver library, a driver too old for cudarc's bindings, no GPU) into
/// [`AiecError::CudaUnavailable`].
pub(crate) fn primary_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !driver_library_present() {
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
    match opened {
        Err(_) => Err(AiecError::CudaUnavailable {
            reason: "the NVIDIA driver library is too old for this build (missing entry point)".into(),
            hint: DRIVER_HINT,
        }),
        Ok(Err(e)) => {
            let reason = if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
                "the driver found no CUDA GPU".to_string()
            } else {
                format!("the driver failed to initialise: {e:?}")
            };
            Err(AiecError::CudaUnavailable { reason, hint: DRIVER_HINT })
        }
        Ok(Ok(Err(count))) => Err(AiecError::CudaUnavailable {
            reason: format!("GPU {ordinal} requested, {count} present"),
            hint: DRIVER_HINT,
        }),
        Ok(Ok(Ok(ctx))) => {
            tell_nvrtc_the_driver_version();
            Ok(ctx)
        }
    }
}

/// The driver's version (`cuDriverGetVersion`) and each GPU's name and
/// architecture, without opening a context; tells NVRTC's loader the
/// driver's version. Every failure is [`AiecError::CudaUnavailable`].
pub(crate) fn driver_info() -> Result<(i32, Vec<(String, Arch)>)> {
    if !driver_library_present() {
        return Err(AiecError::CudaUnavailable {
            reason: "the NVIDIA driver library (libcuda.so) was not found".into(),
            hint: DRIVER_HINT,
        });
    }
    // cudarc panics if the driver lacks a symbol of its bindings.
    let read = std::panic::catch_unwind(|| -> std::result::Result<_, result::DriverError> {
        result::init()?;
        let mut version = 0;
        // SAFETY: the driver is initialised; valid out-pointer.
        unsafe { sys::cuDriverGetVersion(&mut version) }.result()?;
        let mut gpus = Vec::new();
        for ordinal in 0..result::device::get_count()? {
            let dev = result::device::get(ordinal)?;
            let attr = |a| {
                // SAFETY: `dev` is a valid device handle of the initialised driver.
                unsafe { result::device::get_attribute(dev, a) }
            };
            use sys::CUdevice_attribute::*;
            let major = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            gpus.push((result::device::get_name(dev)?, Arch { major: major as u32, minor: minor as u32 }));
        }
        Ok((version, gpus))
    });
    match read {
        Err(_) => Err(AiecError::CudaUnavailable {
            reason: "the NVIDIA driver library is too old for this build (missing entry point)".into(),
            hint: DRIVER_HINT,
        }),
        Ok(Err(e)) => Err(AiecError::CudaUnavailable {
            reason: if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
                "the driver found no CUDA GPU".to_string()
            } else {
                format!("the driver failed to initialise: {e:?}")
            },
            hint: DRIVER_HINT,
        }),
        Ok(Ok((version, gpus))) => {
            nvrtc::set_driver_version(version);
            Ok((version, gpus))
        }
    }
}

/// NVRTC output must be loadable by this driver: the loader prefers an NVRTC
/// whose major version the driver supports (see [`nvrtc::set_driver_version`]).
fn tell_nvrtc_the_driver_version() {
    let mut v = 0;
    // SAFETY: the driver is loaded and initialised (a context exists); valid out-pointer.
    if unsafe { sys::cuDriverGetVersion(&mut v) } == sys::CUresult::CUDA_SUCCESS {
        nvrtc::set_driver_version(v);
    }
}

impl CudaBackend {
    /// A backend on `stream`.
    pub(crate) fn on_stream(stream: Arc<CudaStream>) -> Result<(Self, String, DeviceLimits)> {
        tell_nvrtc_the_driver_version();
        let shared = ContextShared::of(stream.context())?;
        let label = format!("cuda:{} ({}, {})", stream.context().ordinal(), shared.name, shared.arch);
        let limits = DeviceLimits::new(shared.sm_count, shared.arch);
        Ok((CudaBackend { shared, stream }, label, limits))
    }

    /// GPU `ordinal` with a new non-blocking stream of the crate's own: it does
    /// not serialise with the legacy default stream (nor with PyTorch's, which
    /// is blocking), and it can be captured into a CUDA graph.
    pub(crate) fn new(ordinal: usize) -> Result<(Self, String, DeviceLimits)> {
        let ctx = primary_context(ordinal)?;
        let stream = ctx.new_stream().map_err(driver_err("cuStreamCreate"))?;
        Self::on_stream(stream)
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The `CUcontext` (for comparing devices' memory spaces).
    pub(crate) fn context_key(&self) -> usize {
        self.shared.ctx.cu_ctx() as usize
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("cuStreamSynchronize"))
    }

    /// `bytes` uncleared bytes (at least 1), stream-ordered on this stream.
    pub(crate) fn alloc(&self, bytes: usize) -> Result<CudaMem> {
        self.shared.bind()?;
        let n = bytes.max(1);
        let mut ptr: sys::CUdeviceptr = 0;
        let s = self.stream.cu_stream();
        // SAFETY: valid out-pointer, live pool and stream.
        let r = unsafe {
            match self.shared.pool {
                Some(Pool(p)) => {
                    let mut r = sys::cuMemAllocFromPoolAsync(&mut ptr, n, p, s);
                    if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                        // Memory this pool holds for reuse may be what is missing:
                        // wait for pending frees, give it back, try once more.
                        let _ = sys::cuStreamSynchronize(s);
                        let _ = sys::cuMemPoolTrimTo(p, 0);
                        r = sys::cuMemAllocFromPoolAsync(&mut ptr, n, p, s);
                    }
                    r
                }
                None => sys::cuMemAlloc_v2(&mut ptr, n),
            }
        };
        check("cuMemAllocFromPoolAsync", r).map_err(|e| AiecError::Driver {
            call: "cuMemAllocFromPoolAsync",
            message: format!("{n} bytes: {e}"),
        })?;
        Ok(CudaMem { ptr, bytes: n, shared: self.shared.clone(), stream: self.stream.clone() })
    }

    /// Gives the pool's cached (freed, unused) memory back to the system.
    pub(crate) fn release_cached_memory(&self) -> Result<()> {
        if let Some(Pool(p)) = self.shared.pool {
            self.shared.bind()?;
            self.synchronize()?;
            // SAFETY: live pool.
            check("cuMemPoolTrimTo", unsafe { sys::cuMemPoolTrimTo(p, 0) })?;
        }
        Ok(())
    }

    /// `bytes` bytes of `value` at `addr`, stream-ordered.
    ///
    /// # Safety
    /// `addr` must address `bytes` live bytes of this context that nothing
    /// else uses until the operation ends.
    pub(crate) unsafe fn memset(&self, addr: u64, value: u8, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.shared.bind()?;
        // SAFETY: forwarded from the caller.
        check("cuMemsetD8Async", unsafe { sys::cuMemsetD8Async(addr, value, bytes, self.stream.cu_stream()) })
    }

    /// Copies host bytes to `addr`.
    ///
    /// # Safety
    /// `addr` must address `src.len()` live bytes of this context.
    pub(crate) unsafe fn write(&self, addr: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.shared.bind()?;
        // SAFETY: forwarded from the caller; pageable `src` is staged before
        // the call returns, so it may be dropped afterwards.
        check("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(addr, src.as_ptr().cast(), src.len(), self.stream.cu_stream())
        })
    }

    /// Copies `out.len()` bytes from `addr` and waits for them.
    ///
    /// # Safety
    /// `addr` must address `out.len()` live bytes of this context.
    pub(crate) unsafe fn read(&self, addr: u64, out: &mut [u8]) -> Result<()> {
        if !out.is_empty() {
            self.shared.bind()?;
            // SAFETY: forwarded from the caller; `out` outlives the wait below.
            check("cuMemcpyDtoHAsync", unsafe {
                sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), addr, out.len(), self.stream.cu_stream())
            })?;
        }
        self.synchronize()
    }

    /// # Safety
    /// `dst` and `src` must address `bytes` live bytes of this device each.
    pub(crate) unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // A raw driver call: cudarc binds the context only in its own methods.
        self.shared.bind()?;
        // SAFETY: forwarded from the caller.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("cuMemcpyDtoDAsync"))
    }

    pub(crate) fn prepare(&self, modules: &[nvrtc::Module]) -> Result<()> {
        self.shared.prepare(modules)
    }

    pub(crate) fn loaded_modules(&self) -> usize {
        self.shared.modules.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// # Safety
    /// As [`super::Device::launch`]; `params` has one pointer per plan argument.
    pub(crate) unsafe fn launch(&self, plan: &LaunchPlan, params: &mut [*mut c_void]) -> Result<()> {
        let f = self.shared.function(plan)?;
        self.shared.bind()?;
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
        // Work queued by this device finishes before its handles go (the
        // stream, if it is the crate's own, is destroyed by cudarc after this).
        let _ = self.shared.bind();
        let _ = self.stream.synchronize();
    }
}
