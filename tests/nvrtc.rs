//! Every kernel file compiles with the real NVRTC, with no include path, for
//! sm_75, sm_80 and sm_90 (CUBIN) and to PTX; the cache hits on a second
//! request; a broken kernel is an error carrying the compiler log.
//!
//! Needs a loadable libnvrtc (`AIEC_NVRTC_LIB` or the loader path). With
//! `AIEC_REQUIRE_NVRTC=1` (the test command sets it) a missing library fails
//! the tests; otherwise they print why they skipped.

use std::time::Instant;

use aiec::nvrtc::{self, Arch, CacheOutcome, Image, Target};
use aiec::AiecError;

fn nvrtc_or_skip() -> Option<(i32, i32)> {
    match nvrtc::version() {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(std::env::var_os("AIEC_REQUIRE_NVRTC").is_none(), "AIEC_REQUIRE_NVRTC is set: {e}");
            println!("nvrtc: skipped: {e}");
            None
        }
    }
}

#[test]
fn every_kernel_compiles_for_every_tested_arch() {
    let Some((maj, min)) = nvrtc_or_skip() else { return };
    for (file, _) in nvrtc::sources::SOURCES {
        for arch in Arch::TESTED {
            let t = Instant::now();
            let image = nvrtc::compile(file, Target::Cubin(arch)).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                matches!(&image, Image::Cubin(b) if b.starts_with(b"\x7fELF")),
                "{file} {arch}: not an ELF cubin"
            );
            println!(
                "nvrtc {maj}.{min}: {file} -> {arch} cubin, {} bytes, {:.0} ms",
                image.len(),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        let Image::Ptx(ptx) = nvrtc::compile(file, Target::Ptx(Arch { major: 9, minor: 0 })).unwrap() else {
            panic!("PTX target gave a cubin")
        };
        // Every entry point of the file is in the PTX under its plain name;
        // with the simulator built, exactly the ones it registered.
        let entries: Vec<&str> = ptx
            .lines()
            .filter_map(|l| l.split(".entry ").nth(1))
            .map(|s| s.trim_end_matches('(').trim())
            .collect();
        assert!(!entries.is_empty(), "{file}: no entry points");
        #[cfg(feature = "sim")]
        {
            let op = file.trim_end_matches(".cu");
            let registered: Vec<String> =
                aiec::device::sim_kernel_names().into_iter().filter(|n| n.starts_with(op)).collect();
            let mut sorted: Vec<&str> = entries.clone();
            sorted.sort();
            let mut reg: Vec<&str> = registered.iter().map(|s| s.as_str()).collect();
            reg.sort();
            assert_eq!(sorted, reg, "{file}: PTX entries vs simulator registry");
        }
    }
}

#[test]
fn the_cache_hits_on_the_second_request() {
    if nvrtc_or_skip().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("aiec-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let target = Target::Cubin(Arch { major: 8, minor: 0 });
    let t = Instant::now();
    let (a, first) = nvrtc::compile_cached_in(&dir, "threshold.cu", target).unwrap();
    let cold = t.elapsed();
    let t = Instant::now();
    let (b, second) = nvrtc::compile_cached_in(&dir, "threshold.cu", target).unwrap();
    let warm = t.elapsed();
    assert_eq!((first, second), (CacheOutcome::Miss, CacheOutcome::Hit));
    assert_eq!(a, b);
    println!(
        "nvrtc cache: cold compile {:.1} ms, cached load {:.3} ms",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );
    // Another target is another entry.
    let (_, other) =
        nvrtc::compile_cached_in(&dir, "threshold.cu", Target::Cubin(Arch { major: 9, minor: 0 })).unwrap();
    assert_eq!(other, CacheOutcome::Miss);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_broken_kernel_is_an_error_with_the_log() {
    if nvrtc_or_skip().is_none() {
        return;
    }
    let src =
        "#include \"common.cuh\"\nextern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }\n";
    let e = nvrtc::compile_source("broken.cu", src, Target::Cubin(Arch { major: 8, minor: 0 })).unwrap_err();
    match &e {
        AiecError::NvrtcCompile { file, target, log } => {
            assert_eq!(file, "broken.cu");
            assert!(target.contains("sm_80"), "{target}");
            assert!(log.contains("undefined_name"), "log does not name the error: {log}");
        }
        other => panic!("expected NvrtcCompile, got {other:?}"),
    }
    assert!(e.to_string().contains("undefined_name"));
}
