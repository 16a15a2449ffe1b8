//! Build script.
//!
//! 1. Embeds every `kernels/*.cu` and `kernels/*.cuh` into the crate
//!    (`$OUT_DIR/kernel_sources.rs`), so NVRTC compiles them at run time with no
//!    file on disk and no CUDA toolkit header.
//! 2. With the `sim` feature, compiles the same `.cu` files for the host with the
//!    CUDA simulator (`kernels/sim/cuda_sim.h`) and its C ABI
//!    (`kernels/sim/sim_abi.cpp`) into a static library, one object per kernel
//!    file, linked whole (each object registers its entry points from a static
//!    initialiser nothing references). `AIEC_SIM_SANITIZE=address` builds the
//!    simulator with AddressSanitizer and UBSan (run the tests with the ASan
//!    runtime preloaded; `scripts/test.sh` does).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=AIEC_SIM_SANITIZE");

    let (sources, headers) = kernel_files(&kernels);
    embed(&sources, &headers);

    if env::var_os("CARGO_FEATURE_SIM").is_some() {
        build_sim(&kernels, &sources);
    }
}

/// `kernels/*.cu` and `kernels/*.cuh`, sorted by name.
fn kernel_files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    let ext = |p: &Path, x: &str| p.extension().is_some_and(|e| e == x);
    let sources = files.iter().filter(|p| ext(p, "cu")).cloned().collect();
    let headers = files.iter().filter(|p| ext(p, "cuh")).cloned().collect();
    (sources, headers)
}

fn embed(sources: &[PathBuf], headers: &[PathBuf]) {
    let list = |files: &[PathBuf]| -> String {
        files
            .iter()
            .map(|p| {
                let name = p.file_name().expect("file name").to_string_lossy();
                format!("    ({name:?}, include_str!({:?})),\n", p.display().to_string())
            })
            .collect()
    };
    let code = format!(
        "/// Kernel files: `(file name, source)`.\npub const SOURCES: &[(&str, &str)] = &[\n{}];\n\
         /// Headers the kernels include, by the name they use.\npub const HEADERS: &[(&str, &str)] = &[\n{}];\n",
        list(sources),
        list(headers)
    );
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernel_sources.rs");
    fs::write(&out, code).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

fn build_sim(kernels: &Path, sources: &[PathBuf]) {
    let sanitize = env::var("AIEC_SIM_SANITIZE").ok().filter(|s| !s.is_empty());
    let mut b = cc::Build::new();
    b.cpp(true).std("c++17").flag("-pthread").warnings(true).extra_warnings(true);
    b.flag_if_supported("-Wno-unused-parameter");
    match sanitize.as_deref() {
        Some("address") => {
            b.opt_level(1).debug(true);
            for f in ["-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
            {
                b.flag(f);
            }
            println!("cargo:rustc-link-lib=dylib=asan");
            println!("cargo:rustc-link-lib=dylib=ubsan");
        }
        Some(other) => panic!("AIEC_SIM_SANITIZE={other}: only `address` is supported"),
        None => {
            b.opt_level(2);
        }
    }
    b.file(kernels.join("sim/sim_abi.cpp"));
    for src in sources {
        // `-x c++` makes g++ read a .cu file as C++; its first line includes
        // common.cuh, which includes the simulator when not under NVRTC.
        b.file(src);
    }
    b.flag("-x").flag("c++");
    b.link_lib_modifier("+whole-archive");
    b.compile("aiec_sim");
}
