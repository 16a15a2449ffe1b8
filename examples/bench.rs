//! Microbenchmarks of a whole AIEC training step on every backend present.
//!
//! `cargo run --release --example bench [-- --quick] [--json FILE]`
//!
//! For each shape preset and activation type: median time of the forward, the
//! backward and the whole step (forward, loss, backward), with the device
//! synchronised around each timed region, warm-up excluded and inputs rotated
//! over three buffers; bytes moved by the two activation passes and GB/s;
//! percent of the device-to-device copy bandwidth measured in the same run;
//! launches and host syncs per step. On the CPU it times the reference (at the
//! smallest preset) and the simulator (at a tiny one), so it runs everywhere.

use std::time::{Duration, Instant};

use aiec::cpu::gradcheck::dims_for;
use aiec::cpu::LossCoefs;
use aiec::gpu::{self, GpuLayer};
use aiec::init::SplitMix64;
use aiec::{AiecConfig, Buffer, DType, Device, DeviceKind, Element, Pool, Tensor};
use half::bf16;

/// A benchmark shape.
#[derive(Clone, Copy)]
struct Preset {
    name: &'static str,
    pool: Pool,
    batch: usize,
    positions: usize,
    channels: usize,
    classes: usize,
}

const PRESETS: [Preset; 4] = [
    Preset { name: "vit_tiny", pool: Pool::Token, batch: 256, positions: 65, channels: 768, classes: 100 },
    Preset { name: "vit_b", pool: Pool::Token, batch: 256, positions: 197, channels: 3072, classes: 1000 },
    Preset {
        name: "resnet_stage",
        pool: Pool::AvgHw,
        batch: 128,
        positions: 56 * 56,
        channels: 256,
        classes: 1000,
    },
    Preset { name: "mlp", pool: Pool::None, batch: 4096, positions: 1, channels: 4096, classes: 1000 },
];

const TINY: Preset =
    Preset { name: "tiny", pool: Pool::Token, batch: 8, positions: 17, channels: 64, classes: 10 };

impl Preset {
    fn dims(&self) -> Vec<usize> {
        match self.pool {
            Pool::AvgHw => vec![self.batch, self.channels, 56, self.positions / 56],
            p => dims_for(p, self.batch, self.channels, self.positions),
        }
    }
    fn elements(&self) -> usize {
        self.batch * self.positions * self.channels
    }
    /// The least bytes a step's two activation passes must move: read x,
    /// write y and the keep bits; read dy and the bits, write dx.
    fn min_bytes(&self, dtype: DType) -> (u64, u64) {
        let n = self.elements() as u64;
        let s = dtype.size() as u64;
        (2 * n * s + n / 8, 2 * n * s + n / 8)
    }
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

struct Row {
    backend: String,
    preset: &'static str,
    dtype: &'static str,
    fwd: f64,
    bwd: f64,
    step: f64,
    bytes: u64,
    launches: u64,
    syncs: u64,
}

fn bench_device<T: Element>(dev: &Device, p: Preset, iters: usize) -> aiec::Result<Row> {
    let cfg = AiecConfig::with_interval(p.channels, p.classes, 0.0, 1, p.pool)?;
    dev.prepare(T::DTYPE)?;
    let mut layer = GpuLayer::new(dev, cfg, 1)?;
    let dims = p.dims();
    let n = p.elements();
    let mut rng = SplitMix64::new(3);
    let mut rand_tensor = |scale: f64| -> aiec::Result<Tensor> {
        let v: Vec<T> = (0..n).map(|_| T::from_f32(rng.uniform(-scale, 1.5 * scale) as f32)).collect();
        Tensor::from_slice(dev, &v, &dims)
    };
    let xs = [rand_tensor(1.0)?, rand_tensor(1.0)?, rand_tensor(1.0)?];
    let dys = [rand_tensor(0.01)?, rand_tensor(0.01)?, rand_tensor(0.01)?];
    let targets: Vec<i64> = (0..p.batch).map(|i| (i * 7 % p.classes) as i64).collect();
    let coefs = LossCoefs::PAPER;

    let step = |layer: &mut GpuLayer, i: usize| -> aiec::Result<()> {
        let rec = layer.forward(&xs[i % 3], Some(&targets))?;
        let losses = gpu::combine(&[&rec], coefs)?;
        layer.backward(&rec, &dys[i % 3], &losses)?;
        Ok(())
    };
    for i in 0..2 {
        step(&mut layer, i)?; // warm-up: allocator, caches
    }
    dev.synchronize()?;
    let (mut fwd, mut bwd, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    let before = dev.stats();
    for i in 0..iters {
        let t = Instant::now();
        let rec = layer.forward(&xs[i % 3], Some(&targets))?;
        dev.synchronize()?;
        fwd.push(t.elapsed());
        let losses = gpu::combine(&[&rec], coefs)?;
        dev.synchronize()?;
        let t = Instant::now();
        layer.backward(&rec, &dys[i % 3], &losses)?;
        dev.synchronize()?;
        bwd.push(t.elapsed());
    }
    let per = dev.stats() - before;
    for i in 0..iters {
        let t = Instant::now();
        step(&mut layer, i)?;
        dev.synchronize()?;
        whole.push(t.elapsed());
    }
    let (bf, bb) = p.min_bytes(T::DTYPE);
    Ok(Row {
        backend: dev.label().to_string(),
        preset: p.name,
        dtype: T::DTYPE.name(),
        fwd: median(fwd),
        bwd: median(bwd),
        step: median(whole),
        bytes: bf + bb,
        launches: per.launches / iters as u64,
        // The three synchronisations per timed iteration above are the bench's
        // own; what remains is what the library did by itself.
        syncs: (per.host_syncs / iters as u64).saturating_sub(3),
    })
}

/// Seconds per launch of each kernel of a training step, alone.
struct KernelTimes {
    fwd_x: f64,
    logits: f64,
    gate: f64,
    dv_dw: f64,
    bwd_x: f64,
}

/// Each kernel of a training step alone (`aiec_loss`, one block, aside),
/// launched back to back `iters` times between two synchronisations. The
/// activation passes alternate between two input/output pairs, so that the
/// L2 cache does not flatter them; the small kernels' inputs stay cached, as
/// they would in a step.
fn bench_kernels<T: Element>(dev: &Device, p: Preset, iters: usize) -> aiec::Result<KernelTimes> {
    use aiec::launch::{
        aiec_bwd_dv_dw, aiec_bwd_x, aiec_fwd_gate, aiec_fwd_logits, aiec_fwd_x, gate_blocks, logits_groups,
        logits_tiles, LaunchPlan, XPassArgs, ROW_PART_BYTES,
    };
    use aiec::params::{AiecGateStats, AiecLosses, AiecShape};
    let cfg = AiecConfig::new(p.channels, p.classes, 0.0, p.pool)?;
    let plan = cfg.plan_input(&p.dims())?;
    let shape = AiecShape::new(&plan, p.classes, 0.0, true);
    let (n, b, c, k) = (p.elements(), p.batch, p.channels, p.classes);
    let mut rng = SplitMix64::new(9);
    let x: Vec<T> = (0..n).map(|_| T::from_f32(rng.uniform(-1.0, 1.5) as f32)).collect();
    let xs = [Tensor::from_slice(dev, &x, &p.dims())?, Tensor::from_slice(dev, &x, &p.dims())?];
    let ys = [Tensor::zeros(dev, T::DTYPE, &p.dims())?, Tensor::zeros(dev, T::DTYPE, &p.dims())?];
    let keep: Buffer<u32> = Buffer::zeros(dev, aiec::launch::keep_words(&shape))?;
    let v: Buffer<f32> = Buffer::zeros(dev, b * c)?;
    let w: Vec<f32> = aiec::init::xavier_uniform(k, c, 1).into_iter().map(|v| v as f32).collect();
    let w = Buffer::from_slice(dev, &w)?;
    let targets: Vec<i64> = (0..b).map(|i| (i * 7 % k) as i64).collect();
    let targets = Buffer::from_slice(dev, &targets)?;
    let f32s = |len: usize| Buffer::<f32>::zeros(dev, len);
    let (logits, ce, g, dv, dw) = (f32s(b * k)?, f32s(b)?, f32s(b * k)?, f32s(b * c)?, f32s(k * c)?);
    let (act, inh, total) =
        (Buffer::<i64>::zeros(dev, k * c)?, Buffer::<i64>::zeros(dev, k * c)?, Buffer::<i64>::zeros(dev, k)?);
    let groups = logits_groups(&shape);
    let done = Buffer::<u32>::zeros(dev, groups + 1)?;
    let parts = Buffer::<u8>::zeros(dev, b * logits_tiles(&shape) * ROW_PART_BYTES)?;
    let mask = Buffer::<u8>::zeros(dev, b * c)?;
    let gg = gate_blocks(&shape);
    let (bss, bcnt) = (f32s(gg)?, Buffer::<u64>::zeros(dev, gg)?);
    let stats = Buffer::<AiecGateStats>::zeros(dev, 1)?;
    let scales = AiecLosses { aux_scale: 1.0 / b as f32, gate_scale: 1e-3, ..bytemuck::Zeroable::zeroed() };
    let losses = Buffer::from_slice(dev, &[scales])?;

    let pair = |f: &dyn Fn(usize) -> Option<LaunchPlan>| [f(0), f(1)];
    let fwd_x = pair(&|i| {
        let args = XPassArgs {
            x: xs[i].address(),
            y: ys[i].address(),
            keep: keep.address(),
            v: v.address(),
            ..Default::default()
        };
        aiec_fwd_x(T::DTYPE, &shape, args)
    });
    let logits_plan = aiec_fwd_logits(
        &shape,
        [v.address(), w.address(), targets.address(), 0, 0],
        [logits.address(), ce.address(), g.address()],
        [act.address(), inh.address(), total.address()],
        [done.address(), parts.address()],
        dev.limits(),
    );
    let gate_plan = aiec_fwd_gate(
        &shape,
        [v.address(), w.address(), targets.address(), act.address(), inh.address()],
        [mask.address(), bss.address(), bcnt.address(), done.address() + 4 * groups as u64, stats.address()],
    );
    let dv_dw_plan = aiec_bwd_dv_dw(
        &shape,
        [v.address(), w.address(), g.address(), mask.address(), losses.address(), 0],
        [dv.address(), dw.address()],
        dev.limits(),
    );
    // dy = xs[i], dx = ys[i] (separate buffers; the in-place form moves the same bytes).
    let bwd_x = pair(&|i| {
        aiec_bwd_x(T::DTYPE, &shape, xs[i].address(), keep.address(), dv.address(), ys[i].address())
    });
    let time = |plans: [&Option<LaunchPlan>; 2]| -> aiec::Result<f64> {
        for plan in plans.iter().copied().flatten() {
            // SAFETY: every buffer above lives until the end of this function
            // and is sized for `shape`; nothing else uses them meanwhile. The
            // tickets return to zero after each launch, so repeats are valid.
            unsafe { dev.launch(plan) }?;
        }
        dev.synchronize()?;
        let t = Instant::now();
        for i in 0..iters {
            if let Some(plan) = plans[i % 2] {
                // SAFETY: as above.
                unsafe { dev.launch(plan) }?;
            }
        }
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / iters as f64)
    };
    Ok(KernelTimes {
        fwd_x: time([&fwd_x[0], &fwd_x[1]])?,
        logits: time([&logits_plan, &logits_plan])?,
        gate: time([&gate_plan, &gate_plan])?,
        dv_dw: time([&dv_dw_plan, &dv_dw_plan])?,
        bwd_x: time([&bwd_x[0], &bwd_x[1]])?,
    })
}

/// Device-to-device copy bandwidth (bytes read + written per second).
fn copy_bandwidth(dev: &Device, bytes: usize, iters: usize) -> aiec::Result<f64> {
    let src: Buffer<u8> = Buffer::zeros(dev, bytes)?;
    let mut dst: Buffer<u8> = Buffer::zeros(dev, bytes)?;
    dst.copy_from_buffer(&src)?;
    dev.synchronize()?;
    let mut t = Vec::new();
    for _ in 0..iters {
        let s = Instant::now();
        dst.copy_from_buffer(&src)?;
        dev.synchronize()?;
        t.push(s.elapsed());
    }
    Ok(2.0 * bytes as f64 / median(t) / 1e9)
}

/// The CPU reference (f32) at one preset: forward, loss, backward.
fn bench_cpu(p: Preset, iters: usize) -> aiec::Result<Row> {
    use aiec::cpu::{backward, combine, forward};
    let cfg = AiecConfig::with_interval(p.channels, p.classes, 0.0, 1, p.pool)?;
    let w: Vec<f32> =
        aiec::init::xavier_uniform(p.classes, p.channels, 1).into_iter().map(|v| v as f32).collect();
    let mut rng = SplitMix64::new(3);
    let x: Vec<f32> = (0..p.elements()).map(|_| rng.uniform(-1.0, 1.5) as f32).collect();
    let dy: Vec<f32> = (0..p.elements()).map(|_| rng.uniform(-0.01, 0.01) as f32).collect();
    let targets: Vec<i64> = (0..p.batch).map(|i| (i * 7 % p.classes) as i64).collect();
    let mut counters = aiec::Counters::new(p.classes, p.channels);
    let (mut fwd, mut bwd, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iters {
        let t0 = Instant::now();
        let rec = forward(&cfg, &x, &p.dims(), &w, Some(&targets), &mut counters, true)?;
        let t1 = Instant::now();
        let losses = combine(&[&rec], LossCoefs::PAPER)?;
        let t2 = Instant::now();
        backward(&cfg, &rec, &w, &dy, &losses.scales)?;
        let t3 = Instant::now();
        fwd.push(t1 - t0);
        bwd.push(t3 - t2);
        whole.push(t3 - t0);
    }
    let (bf, bb) = p.min_bytes(DType::F32);
    Ok(Row {
        backend: "cpu reference".into(),
        preset: p.name,
        dtype: "f32",
        fwd: median(fwd),
        bwd: median(bwd),
        step: median(whole),
        bytes: bf + bb,
        launches: 0,
        syncs: 0,
    })
}

impl Row {
    fn json(&self, copy_gbps: f64) -> String {
        format!(
            "  {{\"impl\": \"aiec\", \"backend\": \"{}\", \"preset\": \"{}\", \"dtype\": \"{}\", \"fwd_ms\": {:.4}, \"bwd_ms\": {:.4}, \"step_ms\": {:.4}, \"min_bytes\": {}, \"copy_GBps\": {:.1}, \"launches\": {}, \"syncs\": {}}}",
            self.backend,
            self.preset,
            self.dtype,
            self.fwd * 1e3,
            self.bwd * 1e3,
            self.step * 1e3,
            self.bytes,
            copy_gbps,
            self.launches,
            self.syncs
        )
    }
}

/// GB/s with three significant digits (the simulator is slow; a GPU is fast).
fn gbps(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.2e}")
    }
}

fn print_rows(rows: &[Row], copy: Option<f64>) {
    println!(
        "{:<28} {:<13} {:<5} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>6}",
        "backend",
        "preset",
        "dtype",
        "fwd ms",
        "bwd ms",
        "step ms",
        "step GB/s",
        "% copy",
        "launches",
        "syncs"
    );
    for r in rows {
        let rate = r.bytes as f64 / r.step / 1e9;
        let pct = copy.map_or("-".to_string(), |c| format!("{:.1}%", 100.0 * rate / c));
        println!(
            "{:<28} {:<13} {:<5} {:>10.3} {:>10.3} {:>10.3} {:>10} {:>9} {:>9} {:>6}",
            r.backend,
            r.preset,
            r.dtype,
            r.fwd * 1e3,
            r.bwd * 1e3,
            r.step * 1e3,
            gbps(rate),
            pct,
            r.launches,
            r.syncs
        );
    }
}

fn nvrtc_times() {
    use aiec::nvrtc::{self, Arch, Module, Target};
    let Ok((maj, min)) = nvrtc::version() else {
        println!("nvrtc: not available ({})", nvrtc::version().unwrap_err());
        return;
    };
    let target = Target::Cubin(Arch { major: 9, minor: 0 });
    // Cold compile and cached load of `modules`, in a fresh cache.
    let time = |modules: &[Module]| {
        let dir = std::env::temp_dir().join(format!("aiec-bench-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut cold, mut warm) = (Duration::ZERO, Duration::ZERO);
        for &m in modules {
            let t = Instant::now();
            nvrtc::compile_cached_in(&dir, m, target).expect("kernel compiles");
            cold += t.elapsed();
            let t = Instant::now();
            nvrtc::compile_cached_in(&dir, m, target).expect("cache hit");
            warm += t.elapsed();
        }
        let _ = std::fs::remove_dir_all(&dir);
        format!(
            "cold compile {:.0} ms, cached load {:.2} ms",
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3
        )
    };
    let every: Vec<Module> = nvrtc::sources::SOURCES.iter().map(|(f, _)| Module::all(f)).collect();
    println!("nvrtc {maj}.{min} ({}), sm_90, one thread:", nvrtc::library().unwrap_or("?"));
    println!("  all {} kernel files, every element type: {}", every.len(), time(&every));
    let step = aiec::launch::training_modules(DType::BF16);
    println!("  the {} modules of a bf16 training step: {}", step.len(), time(&step));
    // What Device::prepare does on a cold cache: one thread per module.
    let dir = std::env::temp_dir().join(format!("aiec-bench-cache-par-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    nvrtc::compile_for_device_parallel(&dir, &step, Arch { major: 9, minor: 0 }).expect("kernels compile");
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "  the same {} modules in parallel (Device::prepare, {} CPUs): cold compile {:.0} ms",
        step.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        t.elapsed().as_secs_f64() * 1e3
    );
}

fn main() -> aiec::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let iters = if quick { 5 } else { 20 };
    println!("aiec bench: median of {iters} iterations after 2 warm-ups; inputs rotated over 3 buffers");
    println!("bytes = the two activation passes' minimum (x, y, dy, dx and the keep bits)\n");
    nvrtc_times();

    let json_path = std::env::args().skip_while(|a| a != "--json").nth(1);
    let mut json: Vec<String> = Vec::new();
    let (devices, why) = aiec::available_devices();
    if let Some(e) = why {
        println!("cuda: not measured here: {e}");
    }
    for dev in &devices {
        let (presets, copy_bytes): (Vec<Preset>, usize) = match dev.kind() {
            DeviceKind::Cuda => (PRESETS.to_vec(), 1 << 30),
            DeviceKind::Sim => (vec![TINY], 16 << 20),
        };
        let copy = copy_bandwidth(dev, copy_bytes, if quick { 5 } else { 20 })?;
        println!("\n{}: device-to-device copy {copy:.1} GB/s (read + write)", dev.label());
        let mut rows = Vec::new();
        for p in presets {
            let it = if dev.kind() == DeviceKind::Sim { iters.min(5) } else { iters };
            rows.push(bench_device::<bf16>(dev, p, it)?);
            rows.push(bench_device::<f32>(dev, p, it)?);
        }
        print_rows(&rows, Some(copy));
        json.extend(rows.iter().map(|r| r.json(copy)));
        let reps = if quick { 10 } else { 50 };
        println!("\neach kernel of a step alone, µs per launch ({reps} back-to-back launches; activation passes in GB/s):");
        println!(
            "{:<13} {:<5} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "preset",
            "dtype",
            "fwd_x µs",
            "GB/s",
            "% copy",
            "logits",
            "gate",
            "dv_dw",
            "bwd_x µs",
            "GB/s",
            "% copy"
        );
        let presets = if dev.kind() == DeviceKind::Cuda { PRESETS.to_vec() } else { vec![TINY] };
        for p in presets {
            for (dt, t) in
                [("bf16", bench_kernels::<bf16>(dev, p, reps)?), ("f32", bench_kernels::<f32>(dev, p, reps)?)]
            {
                let size = if dt == "bf16" { 2 } else { 4 };
                let n = p.elements();
                let bytes = (2 * n * size + n / 8) as f64;
                let (f, b) = (bytes / t.fwd_x / 1e9, bytes / t.bwd_x / 1e9);
                let us = |s: f64| format!("{:.1}", s * 1e6);
                println!(
                    "{:<13} {:<5} {:>9} {:>9} {:>6.1}% {:>9} {:>9} {:>9} {:>9} {:>9} {:>6.1}%",
                    p.name,
                    dt,
                    us(t.fwd_x),
                    gbps(f),
                    100.0 * f / copy,
                    us(t.logits),
                    us(t.gate),
                    us(t.dv_dw),
                    us(t.bwd_x),
                    gbps(b),
                    100.0 * b / copy
                );
                json.push(format!(
                    "  {{\"impl\": \"aiec-pass\", \"backend\": \"{}\", \"preset\": \"{}\", \"dtype\": \"{dt}\", \"fwd_x_GBps\": {f:.1}, \"bwd_x_GBps\": {b:.1}, \"copy_GBps\": {copy:.1}, \"fwd_x_us\": {:.2}, \"logits_us\": {:.2}, \"gate_us\": {:.2}, \"dv_dw_us\": {:.2}, \"bwd_x_us\": {:.2}}}",
                    dev.label(),
                    p.name,
                    t.fwd_x * 1e6,
                    t.logits * 1e6,
                    t.gate * 1e6,
                    t.dv_dw * 1e6,
                    t.bwd_x * 1e6
                ));
            }
        }
    }

    println!("\ncpu reference (plain loops, one thread; a floor, not a target):");
    let rows = vec![bench_cpu(PRESETS[0], if quick { 1 } else { 3 })?, bench_cpu(TINY, iters)?];
    print_rows(&rows, None);
    #[cfg(not(feature = "sim"))]
    println!("\nsimulator: not built (build with --features sim to include it)");
    if let Some(path) = json_path {
        std::fs::write(&path, format!("[\n{}\n]\n", json.join(",\n"))).expect("JSON file writable");
        println!("\nwrote {path}");
    }
    Ok(())
}
