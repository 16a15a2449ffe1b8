//! Writes the CUBIN of every kernel module for sm_80 and sm_90, compiled as a
//! device compiles them (`aiec::nvrtc::options`: the same architecture flag,
//! `--std=c++17 -lineinfo` and, for the per-type files, `-DAIEC_ONLY_<TYPE>`),
//! and a `manifest.json` beside them with ptxas's report for every entry point
//! (registers, spills, stack, static shared memory) and the theoretical
//! occupancy at the block size the launch plans use (`aiec::resources`,
//! `aiec::launch::block_threads`). No GPU needed; NVRTC is found as usual
//! (`AIEC_NVRTC_LIB`, see README "Diagnostics").
//!
//! `cargo run --release --example cubins -- --out DIR [--arch sm_80,sm_90]`
//!
//! Files: `DIR/<file stem>[.<dtype>].sm_<XY>.cubin`, e.g.
//! `aiec_fwd_x.bf16.sm_90.cubin` (the per-type files, one per element type) or
//! `aiec_fwd_logits.sm_80.cubin`. `scripts/sass_report.py` disassembles them.
//!
//! The ptxas report comes from the same compile as the CUBIN, with
//! `--ptxas-options=-v` added: a verbose report does not change the code, and
//! this example checks so for every module (it compiles each once more
//! without the option and compares the bytes) when `--verify-options` is given.

use std::path::PathBuf;
use std::sync::Mutex;

use aiec::launch::block_threads;
use aiec::nvrtc::{self, Arch, Image, Module, Target};
use aiec::resources::{parse_ptxas_log, SmLimits};
use aiec::DType;
use serde_json::{json, Value};

fn usage() -> ! {
    eprintln!("usage: cubins --out DIR [--arch sm_80,sm_90] [--verify-options]");
    std::process::exit(2)
}

fn file_name(m: Module, arch: Arch) -> String {
    let stem = m.file.strip_suffix(".cu").unwrap_or(m.file);
    match m.only {
        Some(d) => format!("{stem}.{}.{arch}.cubin", d.name()),
        None => format!("{stem}.{arch}.cubin"),
    }
}

fn main() {
    let mut out: Option<PathBuf> = None;
    let mut archs = vec![Arch { major: 8, minor: 0 }, Arch { major: 9, minor: 0 }];
    let mut verify = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--arch" => {
                let list = args.next().unwrap_or_else(|| usage());
                archs = list.split(',').map(|s| Arch::parse(s).unwrap_or_else(|| usage())).collect();
            }
            "--verify-options" => verify = true,
            _ => usage(),
        }
    }
    let out = out.unwrap_or_else(|| usage());
    std::fs::create_dir_all(&out).expect("create the output directory");

    // Every module a device may load, for any element type, once.
    let mut modules: Vec<Module> = Vec::new();
    for m in DType::ALL.iter().flat_map(|&d| nvrtc::modules(d)) {
        if !modules.contains(&m) {
            modules.push(m);
        }
    }
    let jobs: Vec<(Module, Arch)> =
        archs.iter().flat_map(|&a| modules.iter().map(move |&m| (m, a))).collect();
    let (major, minor) = nvrtc::version().unwrap_or_else(|e| {
        eprintln!("cubins: {e}");
        std::process::exit(1)
    });

    // NVRTC compiles separate programs concurrently: one worker per core.
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<Value>>> = Mutex::new(vec![None; jobs.len()]);
    let failed = Mutex::new(Vec::<String>::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(&(m, arch)) = jobs.get(i) else { break };
                match one(m, arch, &out, verify) {
                    Ok(v) => results.lock().unwrap()[i] = Some(v),
                    Err(e) => failed.lock().unwrap().push(format!("{m} {arch}: {e}")),
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("cubins: {f}");
        }
        std::process::exit(1);
    }
    let modules: Vec<Value> =
        results.into_inner().unwrap().into_iter().map(|v| v.expect("every job ran")).collect();
    let manifest = json!({
        "nvrtc": format!("{major}.{minor}"),
        "nvrtc_library": nvrtc::library().unwrap_or_default(),
        "modules": modules,
    });
    let path = out.join("manifest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap() + "\n")
        .expect("write the manifest");
    println!(
        "cubins: {} modules for {} architectures (NVRTC {major}.{minor}) in {}",
        modules.len() / archs.len(),
        archs.len(),
        out.display()
    );
}

/// Compiles one module for one architecture, writes its CUBIN and returns its
/// manifest entry.
fn one(m: Module, arch: Arch, out: &std::path::Path, verify: bool) -> Result<Value, String> {
    let target = Target::Cubin(arch);
    let (image, log) =
        nvrtc::compile_logged(m, target, &["--ptxas-options=-v"]).map_err(|e| e.to_string())?;
    let Image::Cubin(cubin) = image else { return Err("not a cubin".into()) };
    if verify {
        let plain = nvrtc::compile(m, target).map_err(|e| e.to_string())?;
        if plain != Image::Cubin(cubin.clone()) {
            return Err("--ptxas-options=-v changed the CUBIN".into());
        }
    }
    let name = file_name(m, arch);
    std::fs::write(out.join(&name), &cubin).map_err(|e| format!("{name}: {e}"))?;
    let sm = SmLimits::of(arch);
    let kernels: Vec<Value> = parse_ptxas_log(&log)
        .into_iter()
        .map(|k| {
            let threads = block_threads(&k.kernel);
            let (blocks, limit, occupancy) = match sm {
                Some(sm) => {
                    let (b, l) = k.blocks_per_sm(threads, sm);
                    (Some(b), Some(l), Some(k.occupancy(threads, sm)))
                }
                None => (None, None, None),
            };
            json!({
                "kernel": k.kernel,
                "registers": k.registers,
                "spill_stores": k.spill_stores,
                "spill_loads": k.spill_loads,
                "stack_bytes": k.stack_bytes,
                "shared_bytes": k.shared_bytes,
                "block_threads": threads,
                "blocks_per_sm": blocks,
                "limit": limit,
                "occupancy": occupancy,
            })
        })
        .collect();
    Ok(json!({
        "file": m.file,
        "only": m.only.map(|d| d.name()),
        "arch": arch.to_string(),
        "options": nvrtc::options(m, target),
        "cubin": name,
        "kernels": kernels,
    }))
}
