//! Microbenchmarks of a whole AIEC training step on every backend present.
//!
//! `cargo run --release --example bench [-- --quick] [--json FILE] [--model-only] [--gemm-tile auto|64|128]`
//! (`-- --help` lists the options).
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
use aiec::launch::GemmTile;
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

/// Targets for `x` that `layer` predicts right for every other sample ([`half_right`]; the weights do not change
/// between steps: the bench applies no update).
fn half_right_targets(
    layer: &mut GpuLayer,
    x: &Tensor,
    batch: usize,
    classes: usize,
) -> aiec::Result<Vec<i64>> {
    let rec = layer.forward(x, Some(&vec![0; batch]))?;
    let logits = rec.aux.as_ref().map(|a| a.logits.to_vec()).transpose()?.unwrap_or_default();
    Ok(half_right(&logits, batch, classes))
}

/// Targets right for every other row of `logits` (`[batch, classes]`): the argmax for even rows, the next class
/// for odd rows. A classifier in training is right about that often; targets right 1 in K times would leave out
/// the counting's cost (`aiec_fwd_softmax` and `aiec_fwd_gate` work per correct sample).
fn half_right(logits: &[f32], batch: usize, classes: usize) -> Vec<i64> {
    (0..batch)
        .map(|b| {
            let row = &logits[b * classes..(b + 1) * classes];
            let best = (0..classes).fold(0, |m, j| if row[j] > row[m] { j } else { m });
            (if b % 2 == 0 { best } else { (best + 1) % classes }) as i64
        })
        .collect()
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
    // Targets the layer predicts right for about half the samples, as a classifier in training does: counting runs
    // per correct sample, so targets that are almost never right (1 in K) would leave its cost out.
    let targets = [
        half_right_targets(&mut layer, &xs[0], p.batch, p.classes)?,
        half_right_targets(&mut layer, &xs[1], p.batch, p.classes)?,
        half_right_targets(&mut layer, &xs[2], p.batch, p.classes)?,
    ];
    let coefs = LossCoefs::PAPER;

    let step = |layer: &mut GpuLayer, i: usize| -> aiec::Result<()> {
        let rec = layer.forward(&xs[i % 3], Some(&targets[i % 3]))?;
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
        let rec = layer.forward(&xs[i % 3], Some(&targets[i % 3]))?;
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

/// Seconds per launch of each kernel of a training step, alone; the
/// projection kernels on the device's default path and on the f32 path.
struct KernelTimes {
    fwd_x: f64,
    fwd_logits: f64,
    /// `aiec_fwd_softmax` on an update step (rows and counting), targets right for half the rows.
    fwd_softmax: f64,
    fwd_gate: f64,
    /// `aiec_bwd_dv_dw` as the backward plans it: its sums in `launch::bwd_slices` slices, then
    /// `aiec_bwd_sum_slices` where they split.
    bwd_dv_dw: f64,
    bwd_x: f64,
    fwd_logits_f32: f64,
    bwd_dv_dw_f32: f64,
    /// The device's projection with each tile forced: `aiec_fwd_logits` with 64 rows (as planned,
    /// then with its sums never split) and 128 rows; `aiec_bwd_dv_dw` with 64 and 128 rows.
    tiles: TileTimes,
    /// Plain TF32 (opt-in) with each tile forced, on devices with tensor cores.
    tf32: Option<Tf32Times>,
}

/// [`KernelTimes::tiles`], seconds per launch.
struct TileTimes {
    /// 64 rows split as planned, in at most 2 slices, unsplit; 128 rows.
    logits: [f64; 4],
    dv_dw: [f64; 2],
}

/// [`KernelTimes::tf32`], seconds per launch: `aiec_fwd_logits_tf32` and `aiec_bwd_dv_dw_tf32` with the
/// 64 x 64 tile (as planned: the logits may split) and with the 128 x 128 one.
struct Tf32Times {
    logits: [f64; 2],
    dv_dw: [f64; 2],
}

/// Each kernel of a training step alone (`aiec_loss`, one block, aside),
/// launched back to back `iters` times between two synchronisations. The
/// activation passes alternate between two input/output pairs, so that the
/// L2 cache does not flatter them; the small kernels' inputs stay cached, as
/// they would in a step.
fn bench_kernels<T: Element>(dev: &Device, p: Preset, iters: usize) -> aiec::Result<KernelTimes> {
    use aiec::launch::{
        aiec_bwd_dv_dw, aiec_bwd_x, aiec_fwd_gate, aiec_fwd_logits, aiec_fwd_softmax, aiec_fwd_x,
        gate_blocks, logits_groups, logits_split_room, logits_tiles, BwdDvDwArgs, BwdXArgs, FwdGateArgs,
        FwdLogitsArgs, FwdSoftmaxArgs, FwdXArgs, LaunchPlan, ROW_PART_BYTES,
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
    let keep: Buffer<u32> = Buffer::zeros(dev, aiec::layout::keep_words(&shape))?;
    let v: Buffer<f32> = Buffer::zeros(dev, b * c)?;
    let w: Vec<f32> = aiec::init::xavier_uniform(k, c, 1).into_iter().map(|v| v as f32).collect();
    let w = Buffer::from_slice(dev, &w)?;
    // Set to `half_right` of the first input's logits once the plans exist (below).
    let mut targets = Buffer::<i64>::zeros(dev, b)?;
    let f32s = |len: usize| Buffer::<f32>::zeros(dev, len);
    // dv with room for the slices of the split sums (the backward's `dv` scratch; `launch::bwd_slices`).
    let bwd_slices = aiec::launch::bwd_slices(&shape, &dev.limits(), u64::MAX);
    let (logits, ce, g, dw) = (f32s(b * k)?, f32s(b)?, f32s(b * k)?, f32s(k * c)?);
    let dv = f32s(bwd_slices.scratch_len(&shape) as usize)?;
    let (act, inh, total) =
        (Buffer::<i64>::zeros(dev, k * c)?, Buffer::<i64>::zeros(dev, k * c)?, Buffer::<i64>::zeros(dev, k)?);
    let done = Buffer::<u32>::zeros(dev, 1)?;
    let parts = Buffer::<u8>::zeros(dev, b * logits_tiles(&shape) * ROW_PART_BYTES)?;
    let mask = Buffer::<u8>::zeros(dev, b * c)?;
    let gg = gate_blocks(&shape);
    let (bss, bcnt) = (f32s(gg)?, Buffer::<u64>::zeros(dev, gg)?);
    let stats = Buffer::<AiecGateStats>::zeros(dev, 1)?;
    let scales = AiecLosses { aux_scale: 1.0 / b as f32, gate_scale: 1e-3, ..bytemuck::Zeroable::zeroed() };
    let losses = Buffer::from_slice(dev, &[scales])?;

    let pair = |f: &dyn Fn(usize) -> Option<LaunchPlan>| [f(0), f(1)];
    let fwd_x = pair(&|i| {
        let args = FwdXArgs {
            x: xs[i].address(),
            y: ys[i].address(),
            keep: keep.address(),
            v: v.address(),
            ..Default::default()
        };
        aiec_fwd_x(T::DTYPE, &shape, args, dev.limits())
    });
    // The split sums' tickets (zero; every launch leaves them zero).
    let tickets = Buffer::<u32>::zeros(dev, logits_groups(&shape) * logits_tiles(&shape))?;
    // The partial logits of the slices past the second (any content).
    let room = logits_split_room(&shape) as usize;
    let slices = Buffer::<f32>::zeros(dev, (room * shape.batch as usize * shape.classes as usize).max(1))?;
    let logits_args = FwdLogitsArgs {
        v: v.address(),
        w: w.address(),
        logits: logits.address(),
        g: g.address(),
        part: parts.address(),
        tickets: tickets.address(),
        slices: slices.address(),
    };
    let logits_plan = aiec_fwd_logits(&shape, logits_args, dev.limits());
    // On an update step (the shape's `update`): the rows and the counting.
    let softmax_args = FwdSoftmaxArgs {
        v: v.address(),
        targets: targets.address(),
        status: 0,
        step: 0,
        logits: logits.address(),
        part: parts.address(),
        ce: ce.address(),
        g: g.address(),
        act: act.address(),
        inh: inh.address(),
        total: total.address(),
    };
    let softmax_plan = aiec_fwd_softmax(&shape, softmax_args, dev.limits());
    let gate_plan = aiec_fwd_gate(
        &shape,
        FwdGateArgs {
            v: v.address(),
            w: w.address(),
            targets: targets.address(),
            act: act.address(),
            inh: inh.address(),
            mask: mask.address(),
            block_sum_sq: bss.address(),
            block_count: bcnt.address(),
            done: done.address(),
            stats: stats.address(),
        },
    );
    let dv_dw_args = BwdDvDwArgs {
        v: v.address(),
        w: w.address(),
        g: g.address(),
        mask: mask.address(),
        losses: losses.address(),
        row_scale: 0,
        dv: dv.address(),
        dw: dw.address(),
    };
    // As the backward plans it: the sums in `bwd_slices`, then `aiec_bwd_sum_slices` where they split.
    let split_shape = aiec::launch::with_bwd_slices(&shape, bwd_slices);
    let dv_dw_plan = aiec_bwd_dv_dw(&split_shape, dv_dw_args, dev.limits());
    let dv_sum_plan =
        aiec::launch::aiec_bwd_sum_slices(&split_shape, dv.address(), dw.address(), dev.limits());
    // The same two products on the f32 SIMT path (on any device; its own plans: it has 64-row tiles only).
    let f32_path = aiec::launch::DeviceLimits { projection: aiec::launch::Projection::F32, ..dev.limits() };
    let logits_f32 = aiec_fwd_logits(&shape, logits_args, f32_path);
    let dv_dw_f32 = aiec_bwd_dv_dw(&shape, dv_dw_args, f32_path);
    // Each tile forced, to check GemmTile::Auto's and logits_split's choices against the clock.
    let tile = |gemm_tile| aiec::launch::DeviceLimits { gemm_tile, ..dev.limits() };
    let logits64 = aiec_fwd_logits(&shape, logits_args, tile(GemmTile::Rows64));
    let logits64_slices = |most: u32| {
        logits64.clone().map(|mut p| {
            p.grid[2] = p.grid[2].min(most);
            p
        })
    };
    // The split as before it went deeper than 2 (any grid.z is a valid launch), and none.
    let (logits64_two, logits64_whole) = (logits64_slices(2), logits64_slices(1));
    let logits128 = aiec_fwd_logits(&shape, logits_args, tile(GemmTile::Rows128));
    let dv_dw64 = aiec_bwd_dv_dw(&shape, dv_dw_args, tile(GemmTile::Rows64));
    let dv_dw128 = aiec_bwd_dv_dw(&shape, dv_dw_args, tile(GemmTile::Rows128));
    // Plain TF32's tiles (its 128-row tile is 128 x 128), to check the Auto rule's factor of 4.
    let tf32_tile = |gemm_tile| aiec::launch::DeviceLimits {
        projection: aiec::launch::Projection::Tf32,
        gemm_tile,
        ..dev.limits()
    };
    let tf32_plans = aiec::launch::tensor_cores(dev.limits().arch).then(|| {
        [GemmTile::Rows64, GemmTile::Rows128].map(|t| {
            (
                aiec_fwd_logits(&shape, logits_args, tf32_tile(t)),
                aiec_bwd_dv_dw(&shape, dv_dw_args, tf32_tile(t)),
            )
        })
    });
    // dy = xs[i], dx = ys[i] (separate buffers; the in-place form moves the same bytes).
    let bwd_x = pair(&|i| {
        aiec_bwd_x(
            T::DTYPE,
            &shape,
            BwdXArgs { dy: xs[i].address(), keep: keep.address(), dv: dv.address(), dx: ys[i].address() },
            dev.limits(),
        )
    });
    // Targets right for about half the samples, as in a training step (`half_right`): the counting in
    // `aiec_fwd_softmax` and the gate's classes cost what they cost in training.
    for plan in [&fwd_x[0], &logits_plan].into_iter().flatten() {
        // SAFETY: every buffer above lives until the end of this function and is sized for `shape`.
        unsafe { dev.launch(plan) }?;
    }
    targets.copy_from(&half_right(&logits.to_vec()?, b, k))?;
    let time = |plans: [&Option<LaunchPlan>; 2]| -> aiec::Result<f64> {
        for plan in plans.iter().copied().flatten() {
            // SAFETY: every buffer above lives until the end of this function
            // and is sized for `shape`; nothing else uses them meanwhile. The
            // gate's ticket returns to zero after each launch, so repeats are valid.
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
    // Seconds per iteration of launching `plans` one after the other.
    let time_all = |plans: &[&Option<LaunchPlan>]| -> aiec::Result<f64> {
        let launch_all = || -> aiec::Result<()> {
            for plan in plans.iter().copied().flatten() {
                // SAFETY: as in `time`.
                unsafe { dev.launch(plan) }?;
            }
            Ok(())
        };
        launch_all()?;
        dev.synchronize()?;
        let t = Instant::now();
        for _ in 0..iters {
            launch_all()?;
        }
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / iters as f64)
    };
    Ok(KernelTimes {
        fwd_x: time([&fwd_x[0], &fwd_x[1]])?,
        fwd_logits: time([&logits_plan, &logits_plan])?,
        fwd_softmax: time([&softmax_plan, &softmax_plan])?,
        fwd_gate: time([&gate_plan, &gate_plan])?,
        bwd_dv_dw: time_all(&[&dv_dw_plan, &dv_sum_plan])?,
        bwd_x: time([&bwd_x[0], &bwd_x[1]])?,
        fwd_logits_f32: time([&logits_f32, &logits_f32])?,
        bwd_dv_dw_f32: time([&dv_dw_f32, &dv_dw_f32])?,
        tiles: TileTimes {
            logits: [
                time([&logits64, &logits64])?,
                time([&logits64_two, &logits64_two])?,
                time([&logits64_whole, &logits64_whole])?,
                time([&logits128, &logits128])?,
            ],
            dv_dw: [time([&dv_dw64, &dv_dw64])?, time([&dv_dw128, &dv_dw128])?],
        },
        tf32: match &tf32_plans {
            Some([(l64, d64), (l128, d128)]) => Some(Tf32Times {
                logits: [time([l64, l64])?, time([l128, l128])?],
                dv_dw: [time([d64, d64])?, time([d128, d128])?],
            }),
            None => None,
        },
    })
}

/// The projection kernels with each tile forced (f32 activations' run; the products are the same
/// for every activation type): which one `GemmTile::Auto` and `logits_split` picked, and what
/// each costs, and dv_dw as planned (the auto tile, `bwd_slices` slices of its sums, and their sum),
/// so that one run on a GPU checks their rules; then plain TF32's (on tensor cores). Returns the
/// JSON rows.
fn print_tiles(dev: &Device, measured: &[(&str, &str, KernelTimes)]) -> Vec<String> {
    println!(
        "\nthe projection's tiles ({}, µs per launch; auto: what the plans chose)",
        dev.limits().projection().suffix().trim_start_matches('_')
    );
    println!(
        "{:<13} {:>11} {:>10} {:>10} {:>11} {:>10} {:>10} {:>11} {:>10} {:>12}",
        "preset",
        "logits 64",
        "64 in 2",
        "64 whole",
        "logits 128",
        "auto",
        "dv_dw 64",
        "dv_dw 128",
        "auto",
        "auto+split"
    );
    let mut json = Vec::new();
    for (name, dt, t) in measured.iter().filter(|m| m.1 == "f32") {
        let Some(p) = PRESETS.iter().chain([&TINY]).find(|p| p.name == *name) else { continue };
        let shape = preset_shape(*p);
        let limits = dev.limits();
        let lr = aiec::launch::logits_rows(&shape, &limits);
        let split = aiec::launch::logits_split(&shape, &limits);
        let dr = aiec::launch::dv_dw_rows(&shape, &limits);
        let sl = aiec::launch::bwd_slices(&shape, &limits, u64::MAX);
        let ds = format!("{}+{}", sl.dv, sl.dw);
        let us = |s: f64| format!("{:.1}", s * 1e6);
        let [l64, two, whole, l128] = t.tiles.logits;
        let [d64, d128] = t.tiles.dv_dw;
        println!(
            "{:<13} {:>11} {:>10} {:>10} {:>11} {:>10} {:>10} {:>11} {:>10} {:>12}",
            name,
            us(l64),
            us(two),
            us(whole),
            us(l128),
            format!("{lr}/{split}"),
            us(d64),
            us(d128),
            format!("{dr}/{ds}"),
            us(t.bwd_dv_dw)
        );
        json.push(format!(
            "  {{\"impl\": \"aiec-tiles\", \"backend\": \"{}\", \"preset\": \"{name}\", \"dtype\": \"{dt}\", \"logits64_us\": {:.2}, \"logits64_two_us\": {:.2}, \"logits64_whole_us\": {:.2}, \"logits128_us\": {:.2}, \"logits_auto\": \"{lr}/{split}\", \"dv_dw64_us\": {:.2}, \"dv_dw128_us\": {:.2}, \"dv_dw_auto\": {dr}, \"slices\": \"{ds}\", \"dv_dw_planned_us\": {:.2}}}",
            dev.label(),
            l64 * 1e6,
            two * 1e6,
            whole * 1e6,
            l128 * 1e6,
            d64 * 1e6,
            d128 * 1e6,
            t.bwd_dv_dw * 1e6
        ));
    }
    let tf32: Vec<_> =
        measured.iter().filter(|m| m.1 == "f32").filter_map(|m| Some((m.0, m.2.tf32.as_ref()?))).collect();
    if tf32.is_empty() {
        return json;
    }
    println!("\nplain TF32's tiles (opt-in; µs per launch; auto: the rows the plans choose)");
    println!(
        "{:<13} {:>11} {:>14} {:>6} {:>10} {:>14} {:>6}",
        "preset", "logits 64", "logits 128x128", "auto", "dv_dw 64", "dv_dw 128x128", "auto"
    );
    for (name, t) in tf32 {
        let Some(p) = PRESETS.iter().chain([&TINY]).find(|p| p.name == name) else { continue };
        let shape = preset_shape(*p);
        let limits =
            aiec::launch::DeviceLimits { projection: aiec::launch::Projection::Tf32, ..dev.limits() };
        let (lr, dr) =
            (aiec::launch::logits_rows(&shape, &limits), aiec::launch::dv_dw_rows(&shape, &limits));
        let us = |s: f64| format!("{:.1}", s * 1e6);
        let ([l64, l128], [d64, d128]) = (t.logits, t.dv_dw);
        println!(
            "{:<13} {:>11} {:>14} {:>6} {:>10} {:>14} {:>6}",
            name,
            us(l64),
            us(l128),
            lr,
            us(d64),
            us(d128),
            dr
        );
        json.push(format!(
            "  {{\"impl\": \"aiec-tf32-tiles\", \"backend\": \"{}\", \"preset\": \"{name}\", \"logits64_us\": {:.2}, \"logits128x128_us\": {:.2}, \"logits_auto\": {lr}, \"dv_dw64_us\": {:.2}, \"dv_dw128x128_us\": {:.2}, \"dv_dw_auto\": {dr}}}",
            dev.label(),
            l64 * 1e6,
            l128 * 1e6,
            d64 * 1e6,
            d128 * 1e6
        ));
    }
    json
}

// ------------------------------------------------------------------ cost model

/// The ceilings the cost model divides by: bytes per second (read + written,
/// as the copy bandwidth is measured) and FLOP rates, with where they come from.
#[derive(Clone)]
struct Ceilings {
    copy_gbps: f64,
    f32_tflops: f64,
    tf32_tflops: f64,
    source: String,
}

impl Ceilings {
    /// NVIDIA's published H200 SXM figures (not measured here): 4.8 TB/s of
    /// HBM3e, 67 TFLOP/s f32 on the SIMT units, 494.7 TFLOP/s dense TF32 on the
    /// tensor cores (warpgroup MMA; mma.sync, which the kernels use, reaches less).
    fn h200_published() -> Ceilings {
        Ceilings {
            copy_gbps: 4800.0,
            f32_tflops: 67.0,
            tf32_tflops: 494.7,
            source:
                "H200 SXM published peaks (NOT measured): 4800 GB/s, 67 TFLOP/s f32, 494.7 TFLOP/s TF32 dense"
                    .into(),
        }
    }
}

/// The H200's issue and shared-memory rates (published: 132 SMs at a 1.98 GHz
/// boost clock, 4 schedulers per SM issuing one warp instruction a clock each,
/// shared memory serving one 128-byte wavefront per SM a clock; not measured).
/// With the instructions and wavefronts the SASS report counts per unit of
/// work in each kernel's hot loop, they bound what the peak rates miss.
const SMS: f64 = 132.0;
const CLOCK_HZ: f64 = 1.98e9;
/// One dependent round trip to L2, assumed (not measured here): about 600 clocks, Hopper's published L2
/// hit latency being about 260 clocks near and more for the far partition, with a thread's loads
/// queued behind it. The logits' meeting pays one per two slots it adds (two for a 128-row tile).
const L2_TRIP_S: f64 = 600.0 / CLOCK_HZ;
/// The gap between two dependent kernels on one stream, assumed (about 1 µs without CUDA graphs). The
/// model charges it only to the launch a choice adds: `aiec_bwd_sum_slices` where the backward's sums
/// split (`launch::SPLIT_MIN_SAVED_STAGES` weighs the same).
const LAUNCH_GAP_S: f64 = 1.0e-6;
const ISSUE_PER_S: f64 = SMS * 4.0 * CLOCK_HZ;
const WAVEFRONTS_PER_S: f64 = SMS * CLOCK_HZ;
/// FLOPs of one `mma.sync.m16n8k8` (TF32): 16 x 8 x 8 multiply-adds.
const MMA_FLOPS: f64 = 2.0 * 16.0 * 8.0 * 8.0;

/// What `scripts/sass_report.py` measured at sm_90 for the hot loop of
/// `kernel`: warp instructions and shared-memory wavefronts per unit of work
/// (per `mma`, or per trip of a pass's loop) and the elements a thread handles
/// per trip (1 where the budgets record none), from the committed
/// `scripts/sass_budgets.json` (`today`, refreshed by `--record`).
fn sass_rates(kernel: &str) -> Option<(f64, f64, f64)> {
    const BUDGETS: &str = include_str!("../scripts/sass_budgets.json");
    let v: serde_json::Value = serde_json::from_str(BUDGETS).ok()?;
    let k = &v["kernels"][kernel];
    let today = &k["sm_90"]["today"];
    Some((
        today["instructions_per_unit"].as_f64()?,
        today["wavefronts_per_unit"].as_f64()?,
        k["elements_per_iteration"].as_f64().unwrap_or(1.0),
    ))
}

/// The limits the model plans with: the default 3xTF32 path of an sm_90 device with the H200's 132
/// SMs, asking for `tile`.
fn model_limits(tile: GemmTile) -> aiec::launch::DeviceLimits {
    aiec::launch::DeviceLimits {
        projection: aiec::launch::Projection::Tf32x3,
        gemm_tile: tile,
        ..aiec::launch::DeviceLimits::new(SMS as u32, aiec::nvrtc::Arch { major: 9, minor: 0 })
    }
}

/// The projection GEMM `kernel` (`aiec_fwd_logits`, `aiec_bwd_dv_dw`) the plans
/// launch at preset `p` with [`model_limits`]: with `_m128` where they choose 128 rows.
fn gemm_kernel_at(kernel: &str, p: Preset, tile: GemmTile) -> Option<String> {
    use aiec::launch::{aiec_bwd_dv_dw, aiec_fwd_logits};
    let limits = model_limits(tile);
    let shape = preset_shape(p);
    let plan = match kernel {
        "aiec_fwd_logits" => aiec_fwd_logits(&shape, Default::default(), limits),
        "aiec_bwd_dv_dw" => aiec_bwd_dv_dw(&shape, Default::default(), limits),
        _ => None,
    };
    plan.map(|plan| plan.kernel)
}

/// Seconds the projection GEMM `kernel`'s longest block needs to issue its tile loop alone on an SM
/// (its 4 warps on the 4 schedulers, 1 instruction a clock each) at preset `p`, as the plans launch
/// it on the H200 ([`gemm_kernel_at`]) with dv_dw's sums split as far as `launch::bwd_slices` goes
/// when `split`: the tail that a grid of few long blocks leaves (resnet_stage's 8 dv tiles of 1000
/// classes unsplit), which the issue bound (every SM busy) does not see. Latency aside: a floor too.
fn gemm_tail(kernel: &str, p: Preset, tile: GemmTile, split: bool) -> Option<f64> {
    use aiec::launch::{bwd_slices, dv_dw_rows, gemm_cols, logits_rows, logits_split, BwdSlices};
    let limits = model_limits(tile);
    let shape = preset_shape(p);
    let (b, c, k) = (shape.batch, shape.channels, shape.classes);
    let (rows, len) = match kernel {
        "aiec_fwd_logits" => {
            let rows = logits_rows(&shape, &limits);
            let split = logits_split(&shape, &limits) as u64;
            (rows, c.div_ceil(32 * split) * 32)
        }
        "aiec_bwd_dv_dw" => {
            let rows = dv_dw_rows(&shape, &limits);
            let sl = if split { bwd_slices(&shape, &limits, u64::MAX) } else { BwdSlices::UNSPLIT };
            (rows, (k.div_ceil(32 * sl.dv) * 32).max(b.div_ceil(32 * sl.dw) * 32))
        }
        _ => return None,
    };
    let cols = gemm_cols(&limits, rows);
    let name = gemm_kernel_at(kernel, p, tile)?;
    let (instr, _, _) = sass_rates(&name)?;
    let mma = 3.0 * 2.0 * (rows * cols * len) as f64 / MMA_FLOPS; // three TF32 products per product
                                                                  // The logits' meeting: the tile's last block reads the slots two at a time (aiec_lg::meet), one L2
                                                                  // round trip per pair of 64 rows.
    let split = if kernel == "aiec_fwd_logits" { logits_split(&shape, &limits) as u64 } else { 1 };
    let meeting = if split > 1 { split.div_ceil(2) * rows / 64 } else { 0 };
    Some(mma / 4.0 * instr / CLOCK_HZ + meeting as f64 * L2_TRIP_S)
}

/// Seconds the SM's issue slots and shared memory need for `cst` at preset `p`
/// with activations of `dt` (`f32`, `bf16`), from the SASS report's rates: the
/// default 3xTF32 path for the projection (three `mma` per TF32 product), with
/// the tile the plans choose at `p` for `tile` ([`gemm_kernel_at`]; the 64-row
/// kernel's rates where the budgets have none for `_m128` yet), the full-width
/// path of the activation passes. None for the kernels the report gives no unit
/// of work for (the gate).
fn sass_bounds(cst: &Cost, p: Preset, dt: &str, tile: GemmTile) -> Option<(f64, f64)> {
    let (kernel, units) = match cst.kernel {
        "aiec_fwd_logits" | "aiec_bwd_dv_dw" => {
            (gemm_kernel_at(cst.kernel, p, tile)?, 3.0 * cst.flops / MMA_FLOPS)
        }
        "aiec_fwd_x" | "aiec_bwd_x" => {
            let layout = if p.pool == Pool::AvgHw { "hw" } else { "tokens" };
            (format!("{}_{layout}_{dt}", cst.kernel), p.elements() as f64)
        }
        _ => return None,
    };
    let rows64 = kernel.strip_suffix("_m128").unwrap_or(&kernel);
    let (instr, wavefronts, elements) = sass_rates(&kernel).or_else(|| sass_rates(rows64))?;
    // A pass's unit is a trip of its loop: `elements` per thread, 32 threads per warp instruction.
    let trips = if cst.gemm { units } else { units / (32.0 * elements) };
    Some((trips * instr / ISSUE_PER_S, trips * wavefronts / WAVEFRONTS_PER_S))
}

/// The least work of one kernel at a preset: the bytes it must read and write
/// (each once) and the FLOPs it must do; `gemm` marks the projection products.
struct Cost {
    kernel: &'static str,
    bytes: f64,
    flops: f64,
    gemm: bool,
    /// Seconds added to the kernel's bound: [`LAUNCH_GAP_S`] for a launch that a split adds.
    gap: f64,
}

/// The kernels' shape at preset `p` (no update step).
fn preset_shape(p: Preset) -> aiec::params::AiecShape {
    let cfg = AiecConfig::new(p.channels, p.classes, 0.0, p.pool).expect("preset");
    aiec::params::AiecShape::new(&cfg.plan_input(&p.dims()).expect("preset"), p.classes, 0.0, false)
}

/// The kernels of a training step at preset `p` with activations of `size` bytes, as the plans
/// launch them for `tile` at 132 SMs (`aiec_bwd_sum_slices` where the backward's sums split).
fn costs(p: Preset, size: usize, tile: GemmTile) -> Vec<Cost> {
    let (b, c, k, n, s) =
        (p.batch as f64, p.channels as f64, p.classes as f64, p.elements() as f64, size as f64);
    let keep = 4.0 * aiec::layout::keep_words(&preset_shape(p)) as f64;
    let sl = aiec::launch::bwd_slices(&preset_shape(p), &model_limits(tile), u64::MAX);
    // The slices past the first read, the first read and written, per sum that splits.
    let (sv, sw) = (sl.dv as f64, sl.dw as f64);
    let sum_bytes = if sl.dv > 1 { 4.0 * b * c * (sv + 1.0) } else { 0.0 }
        + if sl.dw > 1 { 4.0 * k * c * (sw + 1.0) } else { 0.0 };
    let sum =
        Cost { kernel: "aiec_bwd_sum_slices", bytes: sum_bytes, flops: 0.0, gemm: false, gap: LAUNCH_GAP_S };
    let mut v = vec![
        // x read, y written, keep bits, v
        Cost {
            kernel: "aiec_fwd_x",
            bytes: 2.0 * n * s + keep + 4.0 * b * c,
            flops: n,
            gemm: false,
            gap: 0.0,
        },
        // v, W read; logits written (the row partials aside)
        Cost {
            kernel: "aiec_fwd_logits",
            bytes: 4.0 * (b * c + k * c + b * k),
            flops: 2.0 * b * k * c,
            gemm: true,
            gap: 0.0,
        },
        // logits read, g written, v read by a counting step (ce, the row partials and the atomics aside)
        Cost {
            kernel: "aiec_fwd_softmax",
            bytes: 4.0 * (2.0 * b * k + b * c),
            flops: 3.0 * b * k,
            gemm: false,
            gap: 0.0,
        },
        // v read, act/inh/W of the classes present (at most min(B, K) rows), mask written
        Cost {
            kernel: "aiec_fwd_gate",
            bytes: 4.0 * b * c + 20.0 * c * b.min(k) + b * c,
            flops: 2.0 * b * c,
            gemm: false,
            gap: 0.0,
        },
        // g, W, v, mask read; dv, dW written
        Cost {
            kernel: "aiec_bwd_dv_dw",
            bytes: 4.0 * (b * k + k * c + b * c) + b * c + 4.0 * (b * c + k * c),
            flops: 4.0 * b * k * c,
            gemm: true,
            gap: 0.0,
        },
        // dy, keep bits, dv read; dx written
        Cost {
            kernel: "aiec_bwd_x",
            bytes: 2.0 * n * s + keep + 4.0 * b * c,
            flops: n,
            gemm: false,
            gap: 0.0,
        },
    ];
    if sum_bytes > 0.0 {
        v.insert(v.len() - 1, sum);
    }
    v
}

/// Prints the cost model (a model, not a measurement) at every preset, with
/// the measured µs beside it where `measured` has them, the projection GEMMs'
/// rates those of the tile the plans choose for `tile`; returns JSON rows.
fn print_cost_model(ceil: &Ceilings, measured: &[(&str, &str, KernelTimes)], tile: GemmTile) -> Vec<String> {
    println!(
        "\nCOST MODEL (a model, not a measurement): per kernel the least bytes and FLOPs, the time they imply"
    );
    println!(
        "at the ceilings, and the bound of the default path (3xTF32 for the projection: 3 TF32 products;"
    );
    println!(
        "its issue and smem rates those of the tile the plans choose at 132 SMs for --gemm-tile {tile:?})."
    );
    println!("ceilings: {}", ceil.source);
    println!(
        "issue and smem: the warp instructions and shared-memory wavefronts of each kernel's hot loop at sm_90, \
         measured by scripts/sass_report.py (scripts/sass_budgets.json), at the H200's published 132 SMs x 4 \
         schedulers x 1 instruction and 132 x 1 wavefront per clock, 1.98 GHz; tail: the projection's \
         longest block alone on an SM at the same rate (its 4 warps on the 4 schedulers)"
    );
    println!(
        "{:<13} {:<5} {:<19} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>11}",
        "preset",
        "dtype",
        "kernel",
        "MB",
        "GFLOP",
        "mem µs",
        "f32 µs",
        "3xtf32 µs",
        "tf32 µs",
        "issue µs",
        "smem µs",
        "tail µs",
        "bound",
        "model µs",
        "measured µs"
    );
    let mut json = Vec::new();
    for p in PRESETS {
        for (dt, size) in [("bf16", 2usize), ("f32", 4)] {
            let mut step = 0.0;
            for cst in costs(p, size, tile) {
                {
                    let mem = cst.bytes / (ceil.copy_gbps * 1e9);
                    let (f32t, x3, tf) = (
                        cst.flops / (ceil.f32_tflops * 1e12),
                        3.0 * cst.flops / (ceil.tf32_tflops * 1e12),
                        cst.flops / (ceil.tf32_tflops * 1e12),
                    );
                    let compute = if cst.gemm { x3 } else { f32t };
                    let sass = sass_bounds(&cst, p, dt, tile);
                    let (issue, smem) = sass.unwrap_or((0.0, 0.0));
                    let tail = gemm_tail(cst.kernel, p, tile, true);
                    let (model, bound) = [
                        (mem, "memory"),
                        (compute, "compute"),
                        (issue, "issue"),
                        (smem, "smem"),
                        (tail.unwrap_or(0.0), "tail"),
                    ]
                    .into_iter()
                    .fold((0.0, "memory"), |a, b| if b.0 > a.0 { b } else { a });
                    let model = model + cst.gap;
                    step += model;
                    // The sum of the split slices is timed with dv_dw (`KernelTimes::bwd_dv_dw`).
                    let got =
                        measured.iter().find(|m| m.0 == p.name && m.1 == dt).and_then(|(_, _, t)| match cst
                            .kernel
                        {
                            "aiec_fwd_x" => Some(t.fwd_x),
                            "aiec_fwd_logits" => Some(t.fwd_logits),
                            "aiec_fwd_softmax" => Some(t.fwd_softmax),
                            "aiec_fwd_gate" => Some(t.fwd_gate),
                            "aiec_bwd_dv_dw" => Some(t.bwd_dv_dw),
                            "aiec_bwd_sum_slices" => None,
                            _ => Some(t.bwd_x),
                        });
                    let us = |s: f64| format!("{:.1}", s * 1e6);
                    println!(
                        "{:<13} {:<5} {:<19} {:>9.1} {:>9.2} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>11}",
                        p.name,
                        dt,
                        cst.kernel,
                        cst.bytes / 1e6,
                        cst.flops / 1e9,
                        us(mem),
                        us(f32t),
                        if cst.gemm { us(x3) } else { "-".into() },
                        if cst.gemm { us(tf) } else { "-".into() },
                        sass.map_or("-".into(), |_| us(issue)),
                        sass.map_or("-".into(), |_| us(smem)),
                        tail.map_or("-".into(), us),
                        bound,
                        us(model),
                        got.map_or("-".into(), us)
                    );
                    json.push(format!(
                        "  {{\"impl\": \"model\", \"preset\": \"{}\", \"dtype\": \"{dt}\", \"kernel\": \"{}\", \"bytes\": {:.0}, \"flops\": {:.0}, \"mem_us\": {:.2}, \"f32_us\": {:.2}, \"tf32x3_us\": {:.2}, \"tf32_us\": {:.2}, \"issue_us\": {:.2}, \"smem_us\": {:.2}, \"tail_us\": {:.2}, \"bound\": \"{bound}\", \"model_us\": {:.2}, \"ceilings\": \"{}\"}}",
                        p.name,
                        cst.kernel,
                        cst.bytes,
                        cst.flops,
                        mem * 1e6,
                        f32t * 1e6,
                        x3 * 1e6,
                        tf * 1e6,
                        issue * 1e6,
                        smem * 1e6,
                        tail.unwrap_or(0.0) * 1e6,
                        model * 1e6,
                        ceil.source
                    ));
                }
            }
            println!("{:<13} {:<5} {:<19} {:>112}", p.name, dt, "step (model)", format!("{:.1}", step * 1e6));
        }
    }
    println!("dv_dw's tail with its sums unsplit -> split (launch::bwd_slices at 132 SMs, dv+dW slices):");
    for p in PRESETS {
        let tail = |split| {
            gemm_tail("aiec_bwd_dv_dw", p, tile, split).map_or("-".into(), |t| format!("{:.1}", t * 1e6))
        };
        let limits = model_limits(tile);
        let sl = aiec::launch::bwd_slices(&preset_shape(p), &limits, u64::MAX);
        println!("  {:<13} {} -> {} µs (slices: {}+{})", p.name, tail(false), tail(true), sl.dv, sl.dw);
    }
    json
}

// ------------------------------------------------------------------ cuBLAS, the GPU check's yardstick

/// µs of cuBLAS SGEMM (f32 SIMT, the default math mode) and of cuBLASLt in
/// TF32 (`CUBLAS_COMPUTE_32F_FAST_TF32`) for the projection's three products at
/// preset `p` on `dev`'s stream: logits `v W^T`, `dv = dlogits W`, `dW =
/// dlogits^T v`, row-major as the kernels hold them. cuBLAS is loaded at run time
/// (cudarc's dynamic loading, a dev-dependency of the bench only): where it is
/// absent this is an error saying so, never a panic.
fn cublas_times(dev: &Device, p: Preset, reps: usize) -> Result<([f64; 3], [f64; 3]), String> {
    use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
    use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
    use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
    let stream = dev.cuda_stream().ok_or("not a CUDA device")?.clone();
    // SAFETY: only probes whether the libraries can be loaded.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(not_loadable("cublas"));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        return Err(not_loadable("cublasLt"));
    }
    let (b, c, k) = (p.batch, p.channels, p.classes);
    let alloc = |n: usize| stream.alloc_zeros::<f32>(n).map_err(|e| format!("alloc: {e:?}"));
    let (v, w, dl) = (alloc(b * c)?, alloc(k * c)?, alloc(b * k)?);
    let (mut logits, mut dv, mut dw) = (alloc(b * k)?, alloc(b * c)?, alloc(k * c)?);
    let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS: {e:?}"))?;
    let lt = CudaBlasLT::new(stream.clone()).map_err(|e| format!("cuBLASLt: {e:?}"))?;
    let (bi, ci, ki) = (b as i32, c as i32, k as i32);
    // Column-major views of the row-major matrices: logits^T [K, B] = W [C, K]^T v^T [C, B];
    // dv^T [C, B] = W^T-as-[C, K] dl^T [K, B]; dW^T [C, K] = v^T [C, B] (dl^T [K, B])^T.
    let cfg = |ta, tb, m, n, kk, lda, ldb, ldc| GemmConfig {
        transa: ta,
        transb: tb,
        m,
        n,
        k: kk,
        alpha: 1.0f32,
        lda,
        ldb,
        beta: 0.0,
        ldc,
    };
    let timed = |f: &mut dyn FnMut() -> Result<(), String>| -> Result<f64, String> {
        f()?;
        dev.synchronize().map_err(|e| e.to_string())?;
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        dev.synchronize().map_err(|e| e.to_string())?;
        Ok(t.elapsed().as_secs_f64() / reps as f64)
    };
    let e = |x: cudarc::cublas::result::CublasError| format!("{x:?}");
    let el = |x: cudarc::cublaslt::result::CublasError| format!("{x:?}");
    // SAFETY (every call below): the buffers are live allocations of this stream with the
    // element counts the configurations read and write.
    let sgemm = [
        timed(&mut || {
            unsafe { blas.gemm(cfg(T, N, ki, bi, ci, ci, ci, ki), &w, &v, &mut logits) }.map_err(e)
        })?,
        timed(&mut || unsafe { blas.gemm(cfg(N, N, ci, bi, ki, ci, ki, ci), &w, &dl, &mut dv) }.map_err(e))?,
        timed(&mut || unsafe { blas.gemm(cfg(N, T, ci, ki, bi, ci, ki, ci), &v, &dl, &mut dw) }.map_err(e))?,
    ];
    let lcfg = |ta, tb, m: usize, n: usize, kk: usize, lda: usize, ldb: usize, ldc: usize| MatmulConfig {
        transa: ta,
        transb: tb,
        transc: false,
        m: m as u64,
        n: n as u64,
        k: kk as u64,
        alpha: 1.0,
        lda: lda as i64,
        ldb: ldb as i64,
        beta: 0.0,
        ldc: ldc as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    let tf32 = [
        timed(&mut || {
            unsafe { lt.matmul(lcfg(true, false, k, b, c, c, c, k), &w, &v, &mut logits, None, None) }
                .map_err(el)
        })?,
        timed(&mut || {
            unsafe { lt.matmul(lcfg(false, false, c, b, k, c, k, c), &w, &dl, &mut dv, None, None) }
                .map_err(el)
        })?,
        timed(&mut || {
            unsafe { lt.matmul(lcfg(false, true, c, k, b, c, k, c), &v, &dl, &mut dw, None, None) }
                .map_err(el)
        })?,
    ];
    Ok((sgemm, tf32))
}

/// Why `lib<name>` cannot be loaded: cudarc, pinned to CUDA 12.4's API, opens `lib<name>.so`
/// or a soname of CUDA 12 or older, and CUDA 13's wheels ship `lib<name>.so.13` alone.
fn not_loadable(name: &str) -> String {
    let plain = format!("lib{name}.so");
    let mut tried: Vec<String> = cudarc::get_lib_name_candidates(name)
        .into_iter()
        .filter(|n| *n == plain || n.starts_with(&format!("{plain}.")))
        .collect();
    tried.dedup();
    format!(
        "lib{name} not available: none of {} on the loader path (for CUDA 13's lib{name}.so.13, put a link \
         named lib{name}.so on LD_LIBRARY_PATH, as scripts/device-check.sh does)",
        tried.join(", ")
    )
}

/// The GPU check's comparison: each preset's three products in cuBLAS SGEMM and
/// cuBLASLt TF32 beside the kernels' times; returns the ceilings for the cost
/// model (the measured copy bandwidth; the FLOP rates cuBLAS reaches at `mlp`,
/// else the published ones).
fn cublas_section(dev: &Device, measured: &[(&str, &str, KernelTimes)], copy: f64, reps: usize) -> Ceilings {
    let published = Ceilings::h200_published();
    let mut ceil = Ceilings {
        copy_gbps: copy,
        source: format!(
            "copy bandwidth measured in this run ({copy:.0} GB/s); FLOP rates published (NOT measured: no cuBLAS): \
             {} TFLOP/s f32, {} TFLOP/s TF32",
            published.f32_tflops, published.tf32_tflops
        ),
        ..published
    };
    println!("\ncuBLAS beside the projection kernels, µs per call ({reps} back to back; the kernels' own on the device's");
    println!(
        "path and on f32; cuBLAS SGEMM = f32 SIMT, cuBLASLt = TF32 tensor cores, i.e. 1xTF32 accuracy):"
    );
    println!(
        "{:<13} {:>9} {:>10} {:>10} {:>10} {:>9} {:>10} {:>13} {:>13}",
        "preset",
        "logits",
        "logits f32",
        "sgemm",
        "lt tf32",
        "dv_dw",
        "dv_dw f32",
        "sgemm dv+dW",
        "lt tf32 dv+dW"
    );
    for p in PRESETS {
        let Some((_, _, t)) = measured.iter().find(|m| m.0 == p.name && m.1 == "bf16") else { continue };
        match cublas_times(dev, p, reps) {
            Ok((sg, tf)) => {
                let us = |s: f64| format!("{:.1}", s * 1e6);
                println!(
                    "{:<13} {:>9} {:>10} {:>10} {:>10} {:>9} {:>10} {:>13} {:>13}",
                    p.name,
                    us(t.fwd_logits),
                    us(t.fwd_logits_f32),
                    us(sg[0]),
                    us(tf[0]),
                    us(t.bwd_dv_dw),
                    us(t.bwd_dv_dw_f32),
                    us(sg[1] + sg[2]),
                    us(tf[1] + tf[2])
                );
                if p.name == "mlp" {
                    // The rates cuBLAS reaches on the largest products: the FLOP ceilings of the model.
                    let flops = 2.0 * (p.batch * p.classes * p.channels) as f64;
                    let best = |v: [f64; 3]| v.iter().fold(f64::MAX, |a, &b| a.min(b));
                    ceil.f32_tflops = flops / best(sg) / 1e12;
                    ceil.tf32_tflops = flops / best(tf) / 1e12;
                    ceil.source = format!(
                        "measured in this run: copy {copy:.0} GB/s; f32 {:.1} TFLOP/s (cuBLAS SGEMM at mlp), TF32 {:.1} TFLOP/s \
                         (cuBLASLt at mlp)",
                        ceil.f32_tflops, ceil.tf32_tflops
                    );
                }
            }
            Err(e) => {
                println!("cublas: {e}");
                break;
            }
        }
    }
    ceil
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

/// The options, for `--help` and for a bad one.
const USAGE: &str = "usage: cargo run --release --example bench [-- OPTIONS]
  --quick            fewer iterations (5 instead of 20; 10 launches per kernel instead of 50)
  --json FILE        also write the rows as JSON to FILE
  --model-only       print the cost model alone (no device, no timing)
  --gemm-tile TILE   the tensor-core projection GEMMs' block tile (Device::set_gemm_tile):
                     auto (the default: the plans decide), 64 or 128 rows
  --help             print this";

/// The `--gemm-tile` option: `auto` (also when absent), `64` or `128`.
fn gemm_tile_arg() -> Result<GemmTile, String> {
    let Some(i) = std::env::args().position(|a| a == "--gemm-tile") else { return Ok(GemmTile::Auto) };
    match std::env::args().nth(i + 1).as_deref() {
        Some("auto") => Ok(GemmTile::Auto),
        Some("64") => Ok(GemmTile::Rows64),
        Some("128") => Ok(GemmTile::Rows128),
        Some(other) => Err(format!("--gemm-tile takes auto, 64 or 128, not {other:?}")),
        None => Err("--gemm-tile takes auto, 64 or 128".into()),
    }
}

fn main() -> aiec::Result<()> {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let gemm_tile = gemm_tile_arg().unwrap_or_else(|e| {
        eprintln!("bench: {e}\n{USAGE}");
        std::process::exit(2)
    });
    if std::env::args().any(|a| a == "--model-only") {
        // The cost model alone, at the published ceilings: no timing, no device.
        print_cost_model(&Ceilings::h200_published(), &[], gemm_tile);
        return Ok(());
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let iters = if quick { 5 } else { 20 };
    println!("aiec bench: median of {iters} iterations after 2 warm-ups; inputs rotated over 3 buffers");
    println!("bytes = the two activation passes' minimum (x, y, dy, dx and the keep bits)\n");
    nvrtc_times();

    let json_path = std::env::args().skip_while(|a| a != "--json").nth(1);
    let mut json: Vec<String> = Vec::new();
    let (devices, why) = aiec::available_devices();
    if let Some(e) = &why {
        println!("cuda: not measured here: {e}");
    }
    let mut modelled = false;
    for dev in &devices {
        dev.set_gemm_tile(gemm_tile);
        let mut measured: Vec<(&str, &str, KernelTimes)> = Vec::new();
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
        let (path, tile) = (format!("{:?}", dev.projection()), format!("{:?}", dev.gemm_tile()));
        println!(
            "(logits and dv_dw on the device's projection path, {path}, GEMM tile {tile}, and on the f32 SIMT path)"
        );
        println!(
            "{:<13} {:<5} {:>9} {:>9} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>7}",
            "preset",
            "dtype",
            "fwd_x µs",
            "GB/s",
            "% copy",
            "logits",
            "logits f32",
            "softmax",
            "gate",
            "dv_dw",
            "dv_dw f32",
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
                    "{:<13} {:<5} {:>9} {:>9} {:>6.1}% {:>9} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>6.1}%",
                    p.name,
                    dt,
                    us(t.fwd_x),
                    gbps(f),
                    100.0 * f / copy,
                    us(t.fwd_logits),
                    us(t.fwd_logits_f32),
                    us(t.fwd_softmax),
                    us(t.fwd_gate),
                    us(t.bwd_dv_dw),
                    us(t.bwd_dv_dw_f32),
                    us(t.bwd_x),
                    gbps(b),
                    100.0 * b / copy
                );
                json.push(format!(
                    "  {{\"impl\": \"aiec-pass\", \"backend\": \"{}\", \"preset\": \"{}\", \"dtype\": \"{dt}\", \"fwd_x_GBps\": {f:.1}, \"bwd_x_GBps\": {b:.1}, \"copy_GBps\": {copy:.1}, \"fwd_x_us\": {:.2}, \"logits_us\": {:.2}, \"softmax_us\": {:.2}, \"gate_us\": {:.2}, \"dv_dw_us\": {:.2}, \"bwd_x_us\": {:.2}, \"projection\": \"{path}\", \"gemm_tile\": \"{tile}\", \"logits_f32_us\": {:.2}, \"dv_dw_f32_us\": {:.2}}}",
                    dev.label(),
                    p.name,
                    t.fwd_x * 1e6,
                    t.fwd_logits * 1e6,
                    t.fwd_softmax * 1e6,
                    t.fwd_gate * 1e6,
                    t.bwd_dv_dw * 1e6,
                    t.bwd_x * 1e6,
                    t.fwd_logits_f32 * 1e6,
                    t.bwd_dv_dw_f32 * 1e6
                ));
                measured.push((p.name, dt, t));
            }
        }
        json.extend(print_tiles(dev, &measured));
        if dev.kind() == DeviceKind::Cuda {
            let ceilings = cublas_section(dev, &measured, copy, reps);
            json.extend(print_cost_model(&ceilings, &measured, gemm_tile));
            modelled = true;
        }
    }
    if !modelled {
        // SAFETY: only probes whether the library can be loaded.
        let lib = if unsafe { cudarc::cublas::sys::is_culib_present() } {
            "cuBLAS is loadable".to_string()
        } else {
            not_loadable("cublas")
        };
        println!("\ncublas: not measured here: no CUDA device; {lib}");
        json.extend(print_cost_model(&Ceilings::h200_published(), &[], gemm_tile));
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
