//! Run-time kernel compilation with NVRTC, and its on-disk cache.
//!
//! The kernels (`kernels/*.cu`, embedded by `build.rs`) include no CUDA toolkit
//! header: `common.cuh` is handed to NVRTC in memory. A device gets a CUBIN for
//! its own `sm_XY` (so a driver older than the NVRTC library still loads it) and
//! falls back to PTX when this NVRTC cannot target that architecture. Results
//! are cached on disk, keyed by source hash, NVRTC version, target and options.
//!
//! The library is found in one search order, shared with the Python package
//! and described in README.md, section "Diagnostics": `AIEC_NVRTC_LIB`; a
//! libnvrtc already loaded in the process; the directories given to
//! [`add_search_dirs`] and their pip `nvidia/*/lib` folders; the CUDA toolkit;
//! the loader path (see [`search`]). [`found`] says which library was chosen
//! and at which step, or why none was. It is loaded by this module directly,
//! so any NVRTC major version works with any driver binding.

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::dtype::DType;
use crate::error::{AiecError, Result};

pub mod search;
pub use search::{add_search_dirs, search_dirs, Origin};

/// The kernel sources embedded at build time.
pub mod sources {
    include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));
}

const HINT: &str = "Install PyTorch's NVRTC package (`pip install nvidia-cuda-nvrtc-cu12`, or \
                    `nvidia-cuda-nvrtc` for CUDA 13) into this Python environment, or the CUDA toolkit, \
                    or set AIEC_NVRTC_LIB to a libnvrtc.so.* (README.md, section Diagnostics)";

/// A GPU architecture, `sm_<major><minor>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    /// Compute capability major.
    pub major: u32,
    /// Compute capability minor.
    pub minor: u32,
}

impl Arch {
    /// `sm_75`, `sm_80`, `sm_90`: what the tests compile for.
    pub const TESTED: [Arch; 3] =
        [Arch { major: 7, minor: 5 }, Arch { major: 8, minor: 0 }, Arch { major: 9, minor: 0 }];
}

impl Arch {
    /// `sm_90`, `sm_86`, `compute_80`, `90` or `9.0`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Arch> {
        let s = s.trim();
        let digits = s.strip_prefix("sm_").or_else(|| s.strip_prefix("compute_")).unwrap_or(s);
        let (major, minor) = match digits.split_once('.') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None if digits.len() >= 2 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                let (a, b) = digits.split_at(digits.len() - 1);
                (a.parse().ok()?, b.parse().ok()?)
            }
            None => return None,
        };
        (major >= 1 && minor <= 9).then_some(Arch { major, minor })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// What NVRTC produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// Machine code for one architecture.
    Cubin(Vec<u8>),
    /// PTX, JIT-compiled by the driver.
    Ptx(String),
}

impl Image {
    /// Size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Image::Cubin(b) => b.len(),
            Image::Ptx(s) => s.len(),
        }
    }
    /// True for an empty image (never produced by a successful compile).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The NVRTC entry points this crate uses, resolved from one library.
struct Api {
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    log: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    cubin_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    cubin: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    ptx_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    ptx: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut Program) -> c_int,
    major: i32,
    minor: i32,
    path: String,
    origin: Origin,
}

type Program = *mut c_void;

/// The CUDA driver's version (`cuDriverGetVersion`, e.g. 12080), 0 when unknown.
static DRIVER_VERSION: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Tells the loader which CUDA driver will load its output (`cuDriverGetVersion`,
/// e.g. `12080` for 12.8). A CUDA 12 driver cannot load what NVRTC 13 emits
/// (CUBIN or PTX), so once this is known, and before NVRTC is first loaded,
/// every step of the search but `AIEC_NVRTC_LIB` passes over a library of a
/// newer major version, and the loader path tries the sonames of the
/// driver's major version and older ones first. A CUDA device calls this
/// when it opens, as does [`crate::device::cuda_driver`].
pub fn set_driver_version(version: i32) {
    DRIVER_VERSION.store(version, std::sync::atomic::Ordering::Relaxed);
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load)
        .as_ref()
        .map_err(|reason| AiecError::NvrtcUnavailable { reason: reason.clone(), hint: HINT })
}

fn load() -> std::result::Result<Api, String> {
    let driver = DRIVER_VERSION.load(std::sync::atomic::Ordering::Relaxed);
    let mut notes = Vec::new();
    let tries = search::candidates_here((driver > 0).then_some(driver / 1000), &mut notes);
    let mut errors = Vec::new();
    for c in &tries {
        let shown = PathBuf::from(&c.name).display().to_string();
        // SAFETY: loading NVRTC runs its initialisers, which have no
        // preconditions.
        match unsafe { libloading::Library::new(&c.name) } {
            Ok(lib) => {
                // The library stays loaded for the life of the process: the
                // function pointers below point into it.
                let lib: &'static libloading::Library = Box::leak(Box::new(lib));
                let mut api = match resolve(lib, &shown) {
                    Ok(api) => api,
                    Err(e) if c.origin == Origin::Env => return Err(format!("AIEC_NVRTC_LIB={shown}: {e}")),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                if let Some(m) = c.max_major {
                    if api.major > m {
                        errors.push(format!(
                            "{shown}: NVRTC {}.{} is newer than the CUDA {m} driver can load",
                            api.major, api.minor
                        ));
                        continue;
                    }
                }
                let path = search::real_path(Path::new(&c.name), api.major);
                preload_builtins(&path, &api);
                api.path = path.display().to_string();
                api.origin = c.origin;
                return Ok(api);
            }
            Err(e) => errors.push(describe(&e, &shown)),
        }
    }
    Err(match tries.first() {
        Some(c) if c.origin == Origin::Env => {
            format!("AIEC_NVRTC_LIB={}: {}", PathBuf::from(&c.name).display(), errors.join("; "))
        }
        _ => format!("{}; and nothing could be loaded ({})", notes.join("; "), errors.join("; ")),
    })
}

/// A failed load with the loader's own reason (`dlerror`), which libloading
/// keeps as the error's source, and the name when that reason lacks it.
fn describe(e: &libloading::Error, name: &str) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    if msg.contains(name) {
        msg
    } else {
        format!("{name}: {msg}")
    }
}

/// NVRTC opens `libnvrtc-builtins.so.<major>.<minor>` by name when it
/// compiles. CUDA 12's library finds it beside itself (its run path is
/// `$ORIGIN`); CUDA 13's has no run path, so a library outside the loader's
/// search path (a pip wheel's folder) would fail every compile. Loading the
/// builtins from the same folder first makes NVRTC's later open find the
/// already-loaded library by its soname. Missing or unloadable builtins are
/// left for the compile to report, with NVRTC's own message.
fn preload_builtins(lib: &Path, api: &Api) {
    let Some(dir) = lib.parent().filter(|d| !d.as_os_str().is_empty()) else { return };
    let builtins = dir.join(format!("libnvrtc-builtins.so.{}.{}", api.major, api.minor));
    if builtins.is_file() {
        // SAFETY: as for NVRTC itself: its initialisers have no preconditions.
        if let Ok(b) = unsafe { libloading::Library::new(&builtins) } {
            // Stays loaded with NVRTC, which opens it on every compile.
            std::mem::forget(b);
        }
    }
}

fn resolve(lib: &'static libloading::Library, path: &str) -> std::result::Result<Api, String> {
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol is NVRTC's documented C function of that name,
            // and the field it is stored in has its C signature.
            *unsafe { lib.get($name) }.map_err(|e| format!("{path}: {e}"))?
        };
    }
    let mut api = Api {
        version: sym!(b"nvrtcVersion\0"),
        create: sym!(b"nvrtcCreateProgram\0"),
        compile: sym!(b"nvrtcCompileProgram\0"),
        log_size: sym!(b"nvrtcGetProgramLogSize\0"),
        log: sym!(b"nvrtcGetProgramLog\0"),
        cubin_size: sym!(b"nvrtcGetCUBINSize\0"),
        cubin: sym!(b"nvrtcGetCUBIN\0"),
        ptx_size: sym!(b"nvrtcGetPTXSize\0"),
        ptx: sym!(b"nvrtcGetPTX\0"),
        destroy: sym!(b"nvrtcDestroyProgram\0"),
        major: 0,
        minor: 0,
        path: path.to_string(),
        origin: Origin::Env,
    };
    let (mut major, mut minor) = (0, 0);
    // SAFETY: valid out-pointers.
    let rc = unsafe { (api.version)(&mut major, &mut minor) };
    if rc != 0 {
        return Err(format!("{path}: nvrtcVersion returned {rc}"));
    }
    (api.major, api.minor) = (major, minor);
    Ok(api)
}

/// Loads the NVRTC library once (in the search order of [`search`]) and
/// returns its version, or a typed error saying what is missing; never panics.
pub fn version() -> Result<(i32, i32)> {
    api().map(|a| (a.major, a.minor))
}

/// The path the NVRTC library was loaded from (a bare soname when the loader
/// found it and its file could not be told).
pub fn library() -> Result<&'static str> {
    api().map(|a| a.path.as_str())
}

/// The NVRTC library in use, and where the search found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its path (see [`library`]).
    pub path: &'static str,
    /// Its version, `(major, minor)`.
    pub version: (i32, i32),
    /// The step of the search order it was found at.
    pub origin: Origin,
}

/// Loads NVRTC if not yet loaded and says which library is in use and why it
/// was chosen; [`AiecError::NvrtcUnavailable`] says where the search looked.
pub fn found() -> Result<Found> {
    api().map(|a| Found { path: a.path.as_str(), version: (a.major, a.minor), origin: a.origin })
}

/// A kernel file by name (`threshold.cu`), from the embedded sources.
pub fn source(file: &str) -> Option<&'static str> {
    sources::SOURCES.iter().find(|(f, _)| *f == file).map(|(_, s)| *s)
}

/// One compiled module: a kernel file, with every element type's entry points
/// or with one type's alone. The files whose entry points are per type
/// (`threshold`, `convert`, `aiec_fwd_x`, `aiec_bwd_x`) are compiled per type
/// for a device (`-DAIEC_ONLY_<TYPE>`, see `kernels/common.cuh`), so a program
/// that trains in bf16 never waits for the f32 and f16 instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Module {
    /// The kernel file, e.g. `aiec_fwd_x.cu`.
    pub file: &'static str,
    /// The one element type built, or `None` for all of them.
    pub only: Option<DType>,
}

impl Module {
    /// `file` with every element type's entry points.
    pub const fn all(file: &'static str) -> Module {
        Module { file, only: None }
    }

    /// `file` with the entry points of `dtype` alone.
    pub const fn only(file: &'static str, dtype: DType) -> Module {
        Module { file, only: Some(dtype) }
    }

    /// The preprocessor definition that selects [`Module::only`]'s type.
    fn define(self) -> Option<&'static str> {
        self.only.map(|d| match d {
            DType::F32 => "-DAIEC_ONLY_F32",
            DType::F16 => "-DAIEC_ONLY_F16",
            DType::BF16 => "-DAIEC_ONLY_BF16",
        })
    }
}

impl std::fmt::Display for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.only {
            None => f.write_str(self.file),
            Some(d) => write!(f, "{} [{d} only]", self.file),
        }
    }
}

/// What to compile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A CUBIN for this architecture.
    Cubin(Arch),
    /// PTX for this virtual architecture.
    Ptx(Arch),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Cubin(a) => write!(f, "{a} (cubin)"),
            Target::Ptx(a) => write!(f, "compute_{}{} (ptx)", a.major, a.minor),
        }
    }
}

/// The options `module` is compiled with, for `target`.
pub fn options(module: Module, target: Target) -> Vec<String> {
    let mut opts = target_options(target);
    opts.extend(module.define().map(String::from));
    opts
}

/// The options every kernel is compiled with, for `target`.
fn target_options(target: Target) -> Vec<String> {
    let arch = match target {
        Target::Cubin(a) => format!("--gpu-architecture=sm_{}{}", a.major, a.minor),
        Target::Ptx(a) => format!("--gpu-architecture=compute_{}{}", a.major, a.minor),
    };
    vec![arch, "--std=c++17".into(), "-lineinfo".into()]
}

/// Compiles the embedded kernel module `module` for `target`. An NVRTC failure
/// is [`AiecError::NvrtcCompile`] with the compiler log.
pub fn compile(module: Module, target: Target) -> Result<Image> {
    compile_logged(module, target, &[]).map(|(image, _)| image)
}

/// [`compile`] with `extra` options after the usual ones, returning the
/// compiler's log too (warnings, or what `--ptxas-options=-v` reports). Not
/// cached.
pub fn compile_logged(module: Module, target: Target, extra: &[&str]) -> Result<(Image, String)> {
    let src = source(module.file).ok_or_else(|| AiecError::NvrtcCompile {
        file: module.to_string(),
        target: target.to_string(),
        log: "no such embedded kernel file".into(),
    })?;
    let mut opts = options(module, target);
    opts.extend(extra.iter().map(|o| o.to_string()));
    compile_with(&module.to_string(), src, &opts, target)
}

/// Compiles `src` (named `file` in messages) with the embedded headers and
/// every element type's entry points.
pub fn compile_source(file: &str, src: &str, target: Target) -> Result<Image> {
    compile_with(file, src, &target_options(target), target).map(|(image, _)| image)
}

fn compile_with(file: &str, src: &str, options: &[String], target: Target) -> Result<(Image, String)> {
    let api = api()?;
    let cstr = |s: &str| CString::new(s).expect("kernel sources contain no NUL byte");
    let (c_src, c_name) = (cstr(src), cstr(file));
    let header_src: Vec<CString> = sources::HEADERS.iter().map(|(_, s)| cstr(s)).collect();
    let header_names: Vec<CString> = sources::HEADERS.iter().map(|(n, _)| cstr(n)).collect();
    let hp: Vec<*const c_char> = header_src.iter().map(|s| s.as_ptr()).collect();
    let np: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
    let opts: Vec<CString> = options.iter().map(|o| cstr(o)).collect();
    let op: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
    let fail = |what: String, log: String| AiecError::NvrtcCompile {
        file: file.into(),
        target: target.to_string(),
        log: if log.is_empty() { what } else { log },
    };

    let mut prog: Program = std::ptr::null_mut();
    // SAFETY: every pointer refers to a NUL-terminated string that outlives the
    // call; the header arrays both have HEADERS.len() entries.
    let rc = unsafe {
        (api.create)(&mut prog, c_src.as_ptr(), c_name.as_ptr(), hp.len() as c_int, hp.as_ptr(), np.as_ptr())
    };
    if rc != 0 {
        return Err(fail(format!("nvrtcCreateProgram returned {rc}"), String::new()));
    }
    // SAFETY: `prog` is live until the destroy below; the option pointers
    // outlive the call; every output buffer is sized by the matching *Size call.
    unsafe {
        let rc = (api.compile)(prog, op.len() as c_int, op.as_ptr());
        let image = if rc != 0 {
            Err(fail(format!("nvrtcCompileProgram returned {rc}"), program_log(api, prog)))
        } else {
            let (size, get) = match target {
                Target::Cubin(_) => (api.cubin_size, api.cubin),
                Target::Ptx(_) => (api.ptx_size, api.ptx),
            };
            let mut n = 0usize;
            let mut buf = Vec::new();
            let rc = match size(prog, &mut n) {
                0 => {
                    buf.resize(n, 0u8);
                    get(prog, buf.as_mut_ptr().cast())
                }
                rc => rc,
            };
            if rc != 0 {
                Err(fail(format!("fetching the compiled image returned {rc}"), String::new()))
            } else {
                let image = match target {
                    Target::Cubin(_) => Image::Cubin(buf),
                    Target::Ptx(_) => {
                        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                        Image::Ptx(String::from_utf8_lossy(&buf[..end]).into_owned())
                    }
                };
                Ok((image, program_log(api, prog)))
            }
        };
        (api.destroy)(&mut prog);
        image
    }
}

/// # Safety
/// `prog` must be a live NVRTC program of `api`.
unsafe fn program_log(api: &Api, prog: Program) -> String {
    let mut n = 0usize;
    if (api.log_size)(prog, &mut n) != 0 || n == 0 {
        return String::new();
    }
    let mut buf = vec![0u8; n];
    if (api.log)(prog, buf.as_mut_ptr().cast()) != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_string()
}

/// Where compiled kernels are cached: `AIEC_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/aiec`, else `$HOME/.cache/aiec`, else the temp dir.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("AIEC_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("aiec")))
        .or_else(|| env("HOME").map(|p| p.join(".cache/aiec")))
        .unwrap_or_else(|| std::env::temp_dir().join("aiec-cache"))
}

/// 64-bit FNV-1a over length-prefixed parts: stable across Rust versions and
/// platforms, which `std`'s hasher does not promise.
pub fn cache_key(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for p in parts {
        eat(&(p.len() as u64).to_le_bytes());
        eat(p);
    }
    h
}

/// Whether [`compile_cached`] compiled or read the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Read from the cache.
    Hit,
    /// Compiled (and written to the cache when it was writable).
    Miss,
}

/// The cache file of `module` for `target` in `dir`: its name carries the key
/// of the source, the headers, the NVRTC version, the target and the options.
pub fn cache_path(dir: &Path, module: Module, target: Target) -> Result<PathBuf> {
    let (maj, min) = version()?;
    let src = source(module.file).unwrap_or("");
    let opts = options(module, target).join(" ");
    let ver = format!("nvrtc {maj}.{min}");
    let tgt = target.to_string();
    let mut parts: Vec<&[u8]> = vec![src.as_bytes(), ver.as_bytes(), tgt.as_bytes(), opts.as_bytes()];
    for (n, s) in sources::HEADERS {
        parts.push(n.as_bytes());
        parts.push(s.as_bytes());
    }
    let key = cache_key(&parts);
    let stem = match module.only {
        None => module.file.trim_end_matches(".cu").to_string(),
        Some(d) => format!("{}-{d}", module.file.trim_end_matches(".cu")),
    };
    let (arch, ext) = match target {
        Target::Cubin(a) => (a, "cubin"),
        Target::Ptx(a) => (a, "ptx"),
    };
    Ok(dir.join(format!("{stem}-{arch}-{key:016x}.{ext}")))
}

/// [`compile`] through the on-disk cache in [`cache_dir`]. A cache that cannot
/// be read or written only costs a compile; it is never an error.
pub fn compile_cached(module: Module, target: Target) -> Result<(Image, CacheOutcome)> {
    compile_cached_in(&cache_dir(), module, target)
}

/// [`compile_cached`] with the cache in `dir`.
pub fn compile_cached_in(dir: &Path, module: Module, target: Target) -> Result<(Image, CacheOutcome)> {
    let path = cache_path(dir, module, target)?;
    if let Ok(bytes) = std::fs::read(&path) {
        if !bytes.is_empty() {
            let image = match target {
                Target::Cubin(_) => Image::Cubin(bytes),
                Target::Ptx(_) => Image::Ptx(String::from_utf8_lossy(&bytes).into_owned()),
            };
            return Ok((image, CacheOutcome::Hit));
        }
    }
    let image = compile(module, target)?;
    let bytes: &[u8] = match &image {
        Image::Cubin(b) => b,
        Image::Ptx(s) => s.as_bytes(),
    };
    if let Some(dir) = path.parent() {
        // Write to a unique temporary name, then rename: readers never see a partial file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok((image, CacheOutcome::Miss))
}

/// Compiles `module` for a device of architecture `arch`, through the cache in
/// [`cache_dir`]: a CUBIN when this NVRTC knows `arch`, else PTX for the newest
/// architecture it knows that is not newer than `arch` (the driver
/// JIT-compiles it).
pub fn compile_for_device(module: Module, arch: Arch) -> Result<(Image, CacheOutcome)> {
    compile_for_device_in(&cache_dir(), module, arch)
}

/// [`compile_for_device`] with the cache in `dir`.
pub fn compile_for_device_in(dir: &Path, module: Module, arch: Arch) -> Result<(Image, CacheOutcome)> {
    match compile_cached_in(dir, module, Target::Cubin(arch)) {
        Ok(r) => Ok(r),
        Err(cubin_err @ AiecError::NvrtcCompile { .. }) => {
            compile_cached_in(dir, module, Target::Ptx(ptx_fallback(arch))).map_err(|_| cubin_err)
        }
        Err(e) => Err(e),
    }
}

/// The PTX target of [`compile_for_device`] when this NVRTC cannot make a
/// CUBIN for `arch`: the newest tested architecture not newer than `arch`.
fn ptx_fallback(arch: Arch) -> Arch {
    Arch::TESTED.iter().rev().copied().find(|a| *a <= arch).unwrap_or(Arch::TESTED[0])
}

/// The kernel files whose entry points are per element type (compiled with
/// [`Module::only`] for a device).
pub const PER_TYPE_FILES: [&str; 4] = ["aiec_bwd_x.cu", "aiec_fwd_x.cu", "convert.cu", "threshold.cu"];

/// Every module a device may load for activations of `dtype`: each embedded
/// kernel file, the per-type ones ([`PER_TYPE_FILES`]) for `dtype` alone.
pub fn modules(dtype: DType) -> Vec<Module> {
    sources::SOURCES
        .iter()
        .map(|(f, _)| if PER_TYPE_FILES.contains(f) { Module::only(f, dtype) } else { Module::all(f) })
        .collect()
}

/// What [`prepare_in`] left in the cache for one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The cache file.
    pub path: PathBuf,
    /// What it holds: a CUBIN for the architecture asked for, or the PTX fallback.
    pub target: Target,
    /// Whether it was compiled now or already there.
    pub outcome: CacheOutcome,
}

/// [`compile_for_device_in`], saying which cache file the image is in: what a
/// job on a device of architecture `arch` will read instead of compiling
/// (with the same NVRTC version, which is part of the file's key).
pub fn prepare_in(dir: &Path, module: Module, arch: Arch) -> Result<Prepared> {
    let (image, outcome) = compile_for_device_in(dir, module, arch)?;
    let target = match image {
        Image::Cubin(_) => Target::Cubin(arch),
        Image::Ptx(_) => Target::Ptx(ptx_fallback(arch)),
    };
    Ok(Prepared { path: cache_path(dir, module, target)?, target, outcome })
}

/// [`compile_for_device_in`] for several modules at once, one thread each:
/// NVRTC compiles separate programs concurrently, so a cold start costs about
/// the slowest module rather than the sum. Results in the order of `modules`;
/// the first failure, in that order, is the error.
pub fn compile_for_device_parallel(
    dir: &Path,
    modules: &[Module],
    arch: Arch,
) -> Result<Vec<(Image, CacheOutcome)>> {
    std::thread::scope(|scope| {
        let jobs: Vec<_> =
            modules.iter().map(|&m| scope.spawn(move || compile_for_device_in(dir, m, arch))).collect();
        jobs.into_iter().map(|j| j.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_is_stable_and_length_prefixed() {
        // Pinned value: a change here would silently invalidate every cache.
        assert_eq!(cache_key(&[b"abc"]), cache_key(&[b"abc"]));
        assert_ne!(cache_key(&[b"ab", b"c"]), cache_key(&[b"a", b"bc"]));
        assert_eq!(cache_key(&[]), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn every_kernel_file_is_embedded() {
        assert!(source("threshold.cu").is_some());
        assert!(sources::HEADERS.iter().any(|(n, _)| *n == "common.cuh"));
        for (name, src) in sources::SOURCES {
            assert!(src.contains("#include \"common.cuh\""), "{name} must include common.cuh first");
            assert!(
                !src.contains("cuda_fp16.h") && !src.contains("cuda_bf16.h"),
                "{name} includes a toolkit header"
            );
        }
    }

    #[test]
    fn per_type_files_are_those_with_per_type_entry_points() {
        for (file, src) in sources::SOURCES {
            let per_type = src.contains("AIEC_EXPORT(") || src.contains("AIEC_EXPORT_LB(");
            assert_eq!(PER_TYPE_FILES.contains(file), per_type, "{file}");
        }
        let m = modules(DType::BF16);
        assert_eq!(m.len(), sources::SOURCES.len());
        assert!(m.contains(&Module::only("threshold.cu", DType::BF16)));
        assert!(m.contains(&Module::all("aiec_loss.cu")));
        for t in crate::launch::training_modules(DType::BF16) {
            assert!(m.contains(&t), "{t} is not prepared");
        }
    }

    #[test]
    fn options_name_the_target() {
        let a = Arch { major: 9, minor: 0 };
        let all = Module::all("threshold.cu");
        assert_eq!(options(all, Target::Cubin(a))[0], "--gpu-architecture=sm_90");
        assert_eq!(options(all, Target::Ptx(a))[0], "--gpu-architecture=compute_90");
        assert!(!options(all, Target::Cubin(a)).iter().any(|o| o.starts_with("-D")));
        let bf16 = Module::only("threshold.cu", DType::BF16);
        assert_eq!(options(bf16, Target::Cubin(a)).last().unwrap(), "-DAIEC_ONLY_BF16");
        assert_eq!(bf16.to_string(), "threshold.cu [bf16 only]");
        assert_eq!(a.to_string(), "sm_90");
        for s in ["sm_90", "compute_90", "90", "9.0"] {
            assert_eq!(Arch::parse(s), Some(a), "{s}");
        }
        assert_eq!(Arch::parse("sm_100"), Some(Arch { major: 10, minor: 0 }));
        for bad in ["", "sm_", "sm_9", "gfx90a", "9.x"] {
            assert_eq!(Arch::parse(bad), None, "{bad}");
        }
    }
}
