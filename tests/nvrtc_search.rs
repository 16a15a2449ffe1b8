//! The NVRTC search order with a real library, each case in a fresh process
//! (the library loads once per process): this test binary runs itself again
//! with `AIEC_SEARCH_CASE` set, `AIEC_NVRTC_LIB`, `LD_LIBRARY_PATH` and the
//! toolkit variables removed.
//!
//! * `dirs`: the wheel's root given to `add_search_dirs` is searched in its
//!   `nvidia/*/lib` layout, and a kernel compiles (the builtins beside it);
//! * `loaded`: a libnvrtc someone else loaded is the one used;
//! * `nothing`: no library anywhere is `NvrtcUnavailable` saying where it looked.
//!
//! Needs `AIEC_NVRTC_LIB` pointing into a pip layout (`.../nvidia/*/lib/libnvrtc.so.*`,
//! as scripts/ensure-nvrtc.sh fetches it); skips with the reason otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use aiec::nvrtc::{self, Arch, Module, Origin, Target};
use aiec::AiecError;

/// `AIEC_NVRTC_LIB` and the folder holding its `nvidia/` (a site-packages).
fn wheel() -> Option<(PathBuf, PathBuf)> {
    let lib = PathBuf::from(std::env::var_os("AIEC_NVRTC_LIB").filter(|v| !v.is_empty())?);
    // <root>/nvidia/<package>/lib/libnvrtc.so.N
    let root = lib.ancestors().nth(4)?.to_path_buf();
    if lib.ancestors().nth(3)?.file_name()? != "nvidia" {
        return None;
    }
    Some((lib, root))
}

fn run_case(case: &str, lib: &Path, root: &Path) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "case", "--nocapture", "--test-threads=1"])
        .env_remove("AIEC_NVRTC_LIB")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("CUDA_HOME")
        .env_remove("CUDA_PATH")
        .env("AIEC_SEARCH_CASE", case)
        .env("AIEC_SEARCH_LIB", lib)
        .env("AIEC_SEARCH_ROOT", root)
        .env("AIEC_CACHE_DIR", std::env::temp_dir().join(format!("aiec-search-cache-{}", std::process::id())))
        .output()
        .expect("the test binary runs itself");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("--- case {case}:\n{text}");
    assert!(out.status.success(), "case {case} failed");
    assert!(text.contains(&format!("case {case}: ok")), "case {case} did not run");
}

#[test]
fn the_search_finds_pip_dirs_and_loaded_libraries_or_says_where_it_looked() {
    let Some((lib, root)) = wheel() else {
        // Not a failure under AIEC_REQUIRE_NVRTC: a system NVRTC (no
        // AIEC_NVRTC_LIB) is covered by tests/nvrtc.rs.
        println!("nvrtc search: skipped: AIEC_NVRTC_LIB does not point into a pip layout (.../nvidia/*/lib/libnvrtc.so.*)");
        return;
    };
    for case in ["dirs", "loaded", "nothing"] {
        run_case(case, &lib, &root);
    }
}

/// One case, in the child process.
#[test]
fn case() {
    let Some(case) = std::env::var_os("AIEC_SEARCH_CASE") else { return };
    let lib = PathBuf::from(std::env::var_os("AIEC_SEARCH_LIB").unwrap());
    let root = PathBuf::from(std::env::var_os("AIEC_SEARCH_ROOT").unwrap());
    let case = case.to_str().unwrap();
    match case {
        "dirs" => {
            nvrtc::add_search_dirs([PathBuf::from("/nonexistent/aiec"), root]);
            let f = nvrtc::found().unwrap_or_else(|e| panic!("{e}"));
            println!("found {} {:?} ({})", f.path, f.version, f.origin);
            assert_eq!(f.origin, Origin::SearchDir);
            assert_eq!(Path::new(f.path), lib, "the pip layout's library");
            let image =
                nvrtc::compile(Module::all("aiec_loss.cu"), Target::Cubin(Arch { major: 8, minor: 0 }))
                    .unwrap_or_else(|e| panic!("{e}"));
            assert!(!image.is_empty());
        }
        "loaded" => {
            // SAFETY: NVRTC's initialisers have no preconditions; kept loaded.
            std::mem::forget(unsafe { libloading::Library::new(&lib) }.unwrap());
            let f = nvrtc::found().unwrap_or_else(|e| panic!("{e}"));
            println!("found {} {:?} ({})", f.path, f.version, f.origin);
            assert_eq!(f.origin, Origin::Loaded);
            assert_eq!(Path::new(f.path).canonicalize().unwrap(), lib.canonicalize().unwrap());
        }
        "nothing" => match nvrtc::found() {
            Ok(f) if f.origin == Origin::LoaderPath || f.origin == Origin::Toolkit => {
                println!("a system NVRTC is installed ({}): nothing to check", f.path)
            }
            Ok(f) => panic!("found {f:?} with nothing to find"),
            Err(e @ AiecError::NvrtcUnavailable { .. }) => {
                let msg = e.to_string();
                println!("{msg}");
                for want in [
                    "AIEC_NVRTC_LIB is not set",
                    "no libnvrtc is loaded",
                    "the CUDA toolkit",
                    "libnvrtc.so.12",
                ] {
                    assert!(msg.contains(want), "{want:?} not in {msg}");
                }
            }
            Err(e) => panic!("not NvrtcUnavailable: {e}"),
        },
        other => panic!("unknown case {other}"),
    }
    println!("case {case}: ok");
}
