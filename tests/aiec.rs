//! The fused AIEC kernels (`kernels/aiec_*.cu`) on every device present:
//! golden parity in f32, f16 and bf16; over 200 random shapes against the CPU
//! reference; bitwise determinism across simulator schedules; launches, host
//! syncs and saved bytes per step; bad input rejected before any launch.

mod common;

use aiec::cpu::gradcheck::{random_case, CaseShape};
use aiec::cpu::LossCoefs;
use aiec::gpu::{self, GpuCounters, GpuLayer};
use aiec::init::SplitMix64;
use aiec::launch::{GemmTile, Projection, SplitK};
use aiec::{AiecConfig, AiecError, Buffer, Counters, DType, Device, DeviceStats, Element, Pool, Tensor};
use common::compare::tolerance;
use common::devices::devices;
use common::golden::{dirs, inputs_only, load_dir, GoldenCase};
use common::runner::{expected, judge_against, rounded_case, run_cpu, run_gpu, Errors};
use half::{bf16, f16};

/// Margin below which two top logits count as a near tie in reduced precision.
const TIE_MARGIN: f64 = 1e-4;
/// Margin below which two top logits count as a near tie for f32 results (the
/// f32 tolerance): their argmax may flip with the summation order (golden README).
const TIE_MARGIN_F32: f64 = 1e-5;

/// A projection path and the tile of its GEMMs, set on a device in turn.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Path {
    projection: Projection,
    tile: GemmTile,
}

impl Path {
    /// Sets this path's projection and tile on `dev`.
    fn set(self, dev: &Device) {
        dev.set_projection(self.projection).unwrap();
        dev.set_gemm_tile(self.tile);
    }

    /// `f32-simt`, `3xtf32/m64`, `tf32/m128`, ... for the test output.
    fn name(self) -> String {
        let projection = match self.projection {
            Projection::F32 => "f32-simt",
            Projection::Tf32x3 => "3xtf32",
            Projection::Tf32 => "tf32",
        };
        match self.tile {
            GemmTile::Auto => projection.to_string(),
            GemmTile::Rows64 => format!("{projection}/m64"),
            GemmTile::Rows128 => format!("{projection}/m128"),
        }
    }
}

/// The projection paths `dev` runs (f32 everywhere, 3xTF32 with tensor cores:
/// the simulator, sm_80 and later), the tensor-core ones with both tiles.
fn paths(dev: &Device) -> Vec<Path> {
    paths_with_tf32(dev).into_iter().filter(|p| p.projection != Projection::Tf32).collect()
}

/// [`paths`] and, with tensor cores, the opt-in plain TF32 path too: the SIMT
/// path with its one tile (64 rows, whatever is asked), each tensor-core path
/// with the 64-row and the 128-row tile.
fn paths_with_tf32(dev: &Device) -> Vec<Path> {
    let mut v = vec![Path { projection: Projection::F32, tile: GemmTile::Auto }];
    if aiec::launch::tensor_cores(dev.limits().arch) {
        for projection in [Projection::Tf32x3, Projection::Tf32] {
            for tile in [GemmTile::Rows64, GemmTile::Rows128] {
                v.push(Path { projection, tile });
            }
        }
    }
    v
}

/// Back to the device's defaults: its arch's projection, [`GemmTile::Auto`].
fn reset_path(dev: &Device) {
    dev.set_projection(Projection::default_for(dev.limits().arch)).unwrap();
    dev.set_gemm_tile(GemmTile::Auto);
    dev.set_split_k(SplitK::Auto);
}

/// Judges `T` results on `dev` against the CPU reference in f32 run on the
/// same rounded inputs (the golden README's rule for f16/bf16).
fn run_reduced<T: Element>(
    dev: &Device,
    case: &GoldenCase,
    rtol: f64,
) -> Result<(common::runner::Errors, usize), String> {
    let rounded = rounded_case::<T>(case);
    let want = run_cpu::<f32>(&rounded)?;
    let got = run_gpu::<T>(dev, case)?;
    judge_against(&rounded, &got, &want, rtol, TIE_MARGIN)
}

#[test]
fn golden_cases_on_every_device_and_precision() {
    let mut failed = Vec::new();
    for dev in devices() {
        let backend = match dev.kind() {
            aiec::DeviceKind::Sim => "sim",
            aiec::DeviceKind::Cuda => "cuda",
        };
        for (dir, label) in dirs() {
            let cases = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
            // f32 on every projection path, against the float64 expected values at 1e-5,
            // counters and masks exact except for near-tied samples (golden README).
            for path in paths(&dev) {
                path.set(&dev);
                let (mut passed, mut skipped, mut err) = (0, 0, Errors::default());
                for case in &cases {
                    let r = run_gpu::<f32>(&dev, case).and_then(|got| {
                        judge_against(case, &got, &expected(case), tolerance("f32"), TIE_MARGIN_F32)
                    });
                    match r {
                        Ok((e, s)) => {
                            passed += 1;
                            skipped += s;
                            err.merge(&e);
                        }
                        Err(msg) => println!("  FAILED {} ({}): {msg}", case.name, path.name()),
                    }
                }
                println!(
                    "golden {backend}-f32 [{}]: {passed}/{} cases passed ({label}; {skipped} near-tied samples skipped; \
                     max relative error vs float64: logits {:.1e}, dx {:.1e}, dW {:.1e}, v {:.1e}, losses {:.1e})",
                    path.name(),
                    cases.len(),
                    err.logits,
                    err.dx,
                    err.dw,
                    err.v,
                    err.losses
                );
                if passed != cases.len() {
                    failed.push(format!("{backend}-f32 {} {label}", path.name()));
                }
            }
            reset_path(&dev);
            for (precision, run) in [
                ("f16", run_reduced::<f16> as fn(&Device, &GoldenCase, f64) -> _),
                ("bf16", run_reduced::<bf16>),
            ] {
                let mut passed = 0;
                let mut skipped = 0;
                for case in &cases {
                    match run(&dev, case, tolerance(precision)) {
                        Ok((_, s)) => {
                            passed += 1;
                            skipped += s;
                        }
                        Err(msg) => println!("  FAILED {}: {msg}", case.name),
                    }
                }
                println!(
                    "golden {backend}-{precision}: {passed}/{} cases passed ({label}; vs the CPU reference on the same rounded inputs, {skipped} near-tied samples skipped)",
                    cases.len()
                );
                if passed != cases.len() {
                    failed.push(format!("{backend}-{precision} {label}"));
                }
            }
        }
    }
    assert!(failed.is_empty(), "golden failures: {failed:?}");
}

/// A random case of the given shape (inputs only).
#[allow(clippy::too_many_arguments)] // a table of shapes reads best positionally
fn case(
    seed: u64,
    pool: Pool,
    tau: f64,
    b: usize,
    c: usize,
    k: usize,
    p: usize,
    layers: usize,
    update: bool,
) -> GoldenCase {
    let cfg = AiecConfig::new(c, k, tau, pool).unwrap();
    let shape = CaseShape { batch: b, channels: c, classes: k, positions: p, layers };
    let coefs =
        LossCoefs::new(0.5 + (seed % 3) as f64 * 0.25, [0.0, 3.0, 200.0][(seed % 3) as usize]).unwrap();
    let rc = random_case(seed, cfg, shape, coefs, update);
    inputs_only(format!("random#{seed} {pool} B={b} C={c} K={k} P={p} L={layers}"), &rc)
}

/// The shapes of the random suite: the named edge cases, then random ones.
fn random_suite() -> Vec<GoldenCase> {
    let mut v = vec![
        case(1, Pool::Token, 0.0, 1, 1, 1, 1, 1, true),
        case(2, Pool::AvgToken, 0.0, 1, 7, 1, 3, 2, true),
        case(3, Pool::AvgHw, 0.3, 3, 1, 5, 7, 1, true),
        case(4, Pool::None, 0.0, 5, 35, 1000, 1, 1, true), // K = 1000 with small B
        case(5, Pool::Token, 0.3, 2, 64, 1000, 9, 2, true),
        case(6, Pool::AvgToken, 0.0, 9, 33, 3, 1, 1, true), // T = 1
        case(7, Pool::AvgHw, 0.0, 1, 3, 2, 1, 1, false),    // H*W = 2 (W = 2), B = 1
    ];
    // All samples of one class, so every block aggregates one class.
    let mut same = case(8, Pool::AvgToken, 0.0, 16, 40, 3, 5, 1, true);
    same.targets = vec![1; 16];
    same.name += " all class 1";
    v.push(same);
    let mut rng = SplitMix64::new(2026);
    let mut pick = |xs: &[usize]| xs[(rng.next_u64() % xs.len() as u64) as usize];
    for i in 0..200u64 {
        let pool = Pool::ALL[(i % 4) as usize];
        let b = pick(&[1, 2, 3, 5, 8, 13, 32]);
        let c = pick(&[1, 2, 5, 8, 31, 32, 35, 64, 96, 130]);
        let k = pick(&[1, 2, 3, 7, 10, 33]);
        let p = pick(&[1, 2, 3, 4, 7, 16, 33]);
        let layers = pick(&[1, 1, 2]);
        v.push(case(100 + i, pool, [0.0, 0.3][(i % 2) as usize], b, c, k, p, layers, i % 3 != 0));
    }
    v
}

#[test]
fn random_shapes_match_the_cpu_reference() {
    let suite = random_suite();
    for dev in devices() {
        for path in paths(&dev) {
            path.set(&dev);
            let (mut passed, mut skipped) = (0, 0);
            let mut failures = Vec::new();
            for (i, c) in suite.iter().enumerate() {
                // Cycle the activation type; f32 is judged at 1e-5 against the CPU in f32.
                let r = match i % 3 {
                    0 => run_reduced::<f32>(&dev, c, tolerance("f32")),
                    1 => run_reduced::<f16>(&dev, c, tolerance("f16")),
                    _ => run_reduced::<bf16>(&dev, c, tolerance("bf16")),
                };
                match r {
                    Ok((_, s)) => {
                        passed += 1;
                        skipped += s;
                    }
                    Err(msg) => {
                        failures.push(format!("{} ({}): {msg}", c.name, ["f32", "f16", "bf16"][i % 3]))
                    }
                }
            }
            println!(
                "random {} [{}]: {passed}/{} cases passed ({skipped} near-tied samples skipped)",
                dev.label(),
                path.name(),
                suite.len()
            );
            for f in failures.iter().take(5) {
                println!("  FAILED {f}");
            }
            assert!(failures.is_empty() && suite.len() >= 200, "{} random failures", failures.len());
        }
    }
}

/// The shapes where the activation passes used to leave their fast path: ResNet
/// stages (`avg_hw` at 7x7, 14x14, 28x28, 56x56: rows of P = 49, 196, 784, 3136
/// positions) and channel counts that are not multiples of 32 or of the vector
/// width, in every activation type and on every projection path, against the
/// CPU reference on the same rounded inputs.
#[test]
fn resnet_stages_and_odd_channel_counts_match_the_cpu_reference() {
    let mut shapes: Vec<GoldenCase> = Vec::new();
    for (i, hw) in [7usize, 14, 28, 56].into_iter().enumerate() {
        let (b, c) = if hw == 56 { (1, 2) } else { (2, 3) };
        shapes.push(case(300 + i as u64, Pool::AvgHw, 0.0, b, c, 5, hw * hw, 1, true));
    }
    for (i, (pool, c, p)) in [
        (Pool::Token, 35, 5),
        (Pool::AvgToken, 33, 4),
        (Pool::None, 67, 1),
        (Pool::Token, 2, 3),
        (Pool::AvgToken, 6, 7),
        (Pool::None, 12, 1),
    ]
    .into_iter()
    .enumerate()
    {
        shapes.push(case(310 + i as u64, pool, 0.2, 5, c, 7, p, 1, true));
    }
    for dev in devices() {
        for path in paths(&dev) {
            path.set(&dev);
            let mut failures = Vec::new();
            let mut skipped = 0;
            for c in &shapes {
                for (precision, r) in [
                    ("f32", run_reduced::<f32>(&dev, c, tolerance("f32"))),
                    ("f16", run_reduced::<f16>(&dev, c, tolerance("f16"))),
                    ("bf16", run_reduced::<bf16>(&dev, c, tolerance("bf16"))),
                ] {
                    match r {
                        Ok((_, s)) => skipped += s,
                        Err(msg) => failures.push(format!("{} {precision}: {msg}", c.name)),
                    }
                }
            }
            println!(
                "shapes {} [{}]: {}/{} runs passed ({skipped} near-tied samples skipped)",
                dev.label(),
                path.name(),
                3 * shapes.len() - failures.len(),
                3 * shapes.len()
            );
            for f in failures.iter().take(5) {
                println!("  FAILED {f}");
            }
            assert!(failures.is_empty(), "{} failures", failures.len());
        }
    }
}

/// Infinite activations: the logits, CE, softmax gradient, dv and dW are f32
/// arithmetic's inf or NaN on every projection path (3xTF32's correction
/// products must not turn `0 * inf` into a NaN where f32 gives inf).
#[test]
fn infinite_activations_give_f32_results_on_every_path() {
    let mut c = case(500, Pool::None, 0.0, 6, 40, 5, 1, 1, true);
    let x = &mut c.layers[0].x;
    x[40 + 3] = f64::INFINITY; // row 1: one +inf channel: its logits are +-inf
    x[2 * 40 + 5] = f64::INFINITY; // row 2: two: +inf and -inf terms, NaN where the weights' signs differ
    x[2 * 40 + 9] = f64::INFINITY;
    x[3 * 40 + 1] = f64::NEG_INFINITY; // row 3: -inf is thresholded to 0
    let want = run_cpu::<f32>(&c).unwrap();
    let l = &want.layers[0];
    assert!(
        l.logits[5..10].iter().all(|z| z.is_infinite()),
        "the case must produce inf logits: {:?}",
        &l.logits[5..10]
    );
    for dev in devices() {
        for path in paths(&dev) {
            path.set(&dev);
            let got = run_gpu::<f32>(&dev, &c).unwrap();
            judge_against(&c, &got, &want, tolerance("f32"), TIE_MARGIN_F32)
                .unwrap_or_else(|m| panic!("{} [{}]: {m}", dev.label(), path.name()));
        }
        reset_path(&dev);
    }
}

/// How close each projection path comes to a float64 reference at a longer
/// reduction than the golden cases have (C = 1536, K = 200, B = 70): the
/// f32 CPU reference, the f32 SIMT path and 3xTF32 within 1e-5, plain TF32
/// (opt-in) around 1e-3, judged at its own, looser tolerance.
#[test]
fn projection_paths_against_a_float64_reference() {
    projection_paths_against_float64(&case(400, Pool::None, 0.0, 70, 1536, 200, 1, 1, true), |_, _| ());
}

/// The logits' sums split over two blocks (`launch::logits_split`): one 64 x 64 tile (B = 40, K = 50)
/// is fewer blocks than the simulator's 2 SMs, and C = 700 leaves each slice its 128 channels; the
/// tensor-core paths with either tile split (but plain TF32's 128 x 128 tile, which never does), the
/// result is judged as unsplit ones are.
#[test]
fn split_logit_sums_against_a_float64_reference() {
    let c = case(402, Pool::None, 0.0, 40, 700, 50, 1, 1, true);
    projection_paths_against_float64(&c, |dev, path| {
        let dims = aiec::InputDims::new(Pool::None, 700, &c.dims).unwrap();
        let shape = aiec::params::AiecShape::new(&dims, 50, 0.0, true);
        let limits = dev.limits();
        let wide = aiec::launch::gemm_cols(&limits, aiec::launch::logits_rows(&shape, &limits)) == 128;
        let want = if path.projection == Projection::F32 || wide { 1 } else { 2 };
        assert_eq!(wide, path.projection == Projection::Tf32 && path.tile == GemmTile::Rows128);
        assert_eq!(aiec::launch::logits_split(&shape, &dev.limits()), want, "{}", path.name());
    });
}

/// `Device::set_split_k`: `On` splits a grid of several tiles too (B = 130, K = 70: 3 x 2 tiles of 64 rows,
/// more blocks than the simulator's SMs, where `Auto` does not), as deep as allowed: 5 slices of C = 700
/// (160, 160, 160, 160 and 60 channels; the forward scratch has room for the 3 past `logits` and `g`), each
/// tile's slices meeting through its own ticket; `Off` never splits. Judged as the unsplit sums are.
#[test]
fn pinned_split_against_a_float64_reference() {
    let c = case(403, Pool::None, 0.0, 130, 700, 70, 1, 1, true);
    let dims = aiec::InputDims::new(Pool::None, 700, &c.dims).unwrap();
    let shape = aiec::params::AiecShape::new(&dims, 70, 0.0, true);
    for split in [SplitK::On, SplitK::Off] {
        projection_paths_against_float64(&c, |dev, path| {
            dev.set_split_k(split);
            let limits = dev.limits();
            let cols = aiec::launch::gemm_cols(&limits, aiec::launch::logits_rows(&shape, &limits));
            let on = split == SplitK::On && path.projection != Projection::F32 && cols == 64;
            assert_eq!(
                aiec::launch::logits_split(&shape, &limits),
                if on { 5 } else { 1 },
                "{}",
                path.name()
            );
        });
    }
}

/// A layer's workspace hands its forward scratch to a later step of another shape (a smaller last batch of
/// an epoch): that step's tickets must start at zero whatever the earlier shape left at their offsets (its
/// gate sums, row partials and split logits' slices). The split pinned on (5 slices of C = 700) on every
/// path; the smaller batch's logits and CE equal a fresh layer's, bit for bit.
#[test]
fn a_smaller_batch_after_a_larger_one_splits_its_logits_alike() {
    let (c, k) = (700, 70);
    let cfg = AiecConfig::new(c, k, 0.0, Pool::None).unwrap();
    let mut rng = SplitMix64::new(77);
    let mut x = |b: usize| (0..b * c).map(|_| rng.uniform(-1.0, 2.0) as f32).collect::<Vec<_>>();
    let (big, small) = (x(130), x(40));
    let targets = |b: usize| (0..b).map(|i| (i * 7 % k) as i64).collect::<Vec<_>>();
    for dev in devices() {
        for path in paths_with_tf32(&dev) {
            path.set(&dev);
            dev.set_split_k(SplitK::On);
            let name = format!("{} [{}]", dev.label(), path.name());
            let step = |layer: &mut GpuLayer, x: &[f32], b: usize| {
                let t = Tensor::from_slice(&dev, x, &[b, c]).unwrap();
                let rec = layer.forward(&t, Some(&targets(b))).unwrap();
                let aux = rec.aux.as_ref().unwrap();
                (aux.logits.to_vec().unwrap(), aux.ce.to_vec().unwrap())
            };
            let mut used = GpuLayer::new(&dev, cfg, 5).unwrap();
            step(&mut used, &big, 130);
            let after = step(&mut used, &small, 40);
            let fresh = step(&mut GpuLayer::new(&dev, cfg, 5).unwrap(), &small, 40);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert!(bits(&after.0) == bits(&fresh.0), "{name}: logits after a larger batch differ");
            assert!(bits(&after.1) == bits(&fresh.1), "{name}: CE after a larger batch differs");
            // And back: the larger batch again, as a fresh layer computes it.
            let again = step(&mut used, &big, 130);
            let fresh = step(&mut GpuLayer::new(&dev, cfg, 5).unwrap(), &big, 130);
            assert!(bits(&again.0) == bits(&fresh.0), "{name}: logits after a smaller batch differ");
        }
        reset_path(&dev);
    }
}

/// Runs `c` on every device and projection path (both tiles) and judges it against float64 (plain TF32
/// at 5e-3); `check` looks at the device and path first.
fn projection_paths_against_float64(c: &GoldenCase, check: impl Fn(&Device, Path)) {
    let want = run_cpu::<f64>(c).unwrap();
    let cpu = run_cpu::<f32>(c).unwrap();
    let (e, _) = judge_against(c, &cpu, &want, tolerance("f32"), TIE_MARGIN_F32).unwrap();
    println!(
        "accuracy vs f64, {}: cpu-f32 logits {:.1e}, dx {:.1e}, dW {:.1e}",
        c.name, e.logits, e.dx, e.dw
    );
    for dev in devices() {
        for path in paths_with_tf32(&dev) {
            path.set(&dev);
            check(&dev, path);
            let got = run_gpu::<f32>(&dev, c).unwrap();
            // Plain TF32 keeps 10 mantissa bits of each operand: judged at 5e-3, near ties at 5e-2.
            let (rtol, margin) =
                if path.projection == Projection::Tf32 { (5e-3, 5e-2) } else { (1e-5, TIE_MARGIN_F32) };
            let (e, skipped) = judge_against(c, &got, &want, rtol, margin)
                .unwrap_or_else(|m| panic!("{}: {m}", path.name()));
            println!(
                "accuracy vs f64, {} [{}]: logits {:.1e}, dx {:.1e}, dW {:.1e}, losses {:.1e} ({skipped} near-tied skipped)",
                dev.label(),
                path.name(),
                e.logits,
                e.dx,
                e.dw,
                e.losses
            );
        }
        reset_path(&dev);
    }
}

/// dv and dW with per-sample scales (`Scales::row_scale`: the gradient of the loss with respect to each
/// row's cross-entropy, as autograd hands it to `aiec.torch.AIECFused`), on every projection path,
/// against float64 sums over the forward's own saved `v`, `g` and `mask`: dv[b,c] = r_b sum_k g[b,k]
/// W[k,c] + gate_scale v[b,c] where masked, dW[k,c] = sum_b r_b g[b,k] v[b,c]. The tensor-core
/// paths apply r to v's values inside the tile loop (`tc::tile`'s SK), the SIMT path to the dlogits;
/// the uniform `aux_scale` must not enter (it is 1000 here). Ragged tiles each way, some r_b = 0; K = 130
/// takes the 4-byte copies, K = 132 the 16-byte ones.
#[test]
fn per_sample_scales_against_a_float64_sum() {
    for (b, c, k) in [(70, 100, 130), (70, 100, 132)] {
        per_sample_scales_case(b, c, k, (1, 1), false);
    }
}

/// `dv`'s sums split over the classes (`launch::bwd_slices`, pinned with `SplitK::On`): with room for 3 and
/// for 7 slices in the `dv` scratch (K = 1000: at most 7 of at least 128 classes), every path writes the
/// slices and `aiec_bwd_sum_slices` adds them into the scratch's first `B C` values, judged against float64
/// as the unsplit sums are. K = 1000 has a ragged last slice, and the tiles are ragged each way; B C = 3333
/// takes the sum's one-value path.
#[test]
fn split_dv_against_a_float64_sum() {
    for (b, c, dv) in [(70, 100, 3), (70, 100, 7), (33, 101, 7)] {
        per_sample_scales_case(b, c, 1000, (dv, 1), false);
    }
}

/// `dW`'s sums split over the samples (pinned with `SplitK::On`), its slices past the first in the scratch
/// after `dv`'s, added onto `dW` by `aiec_bwd_sum_slices`, with `DwMode::Accumulate` (the first slice adds
/// to the buffer's old values, the others to that): B = 400 in 3 slices of 160, 160 and 80 samples (the
/// per-sample scales offset alike), alone (C = 67: the one-value paths) and beside 2 slices of dv.
#[test]
fn split_dw_against_a_float64_sum() {
    per_sample_scales_case(400, 67, 40, (1, 3), true);
    per_sample_scales_case(400, 64, 300, (2, 3), true);
}

/// `slices`: the `(dv, dW)` slices the scratch is sized for; other than `(1, 1)`, the split is pinned on
/// and must happen. `accumulate`: `DwMode::Accumulate` onto a `dW` buffer of known values.
fn per_sample_scales_case(b: usize, c: usize, k: usize, slices: (u64, u64), accumulate: bool) {
    use aiec::gpu::fused::{self, DwMode, Dx, SavedRef, Scales, TrainBackward};
    use aiec::launch::BwdSlices;
    use aiec::params::AiecLosses;
    let split = slices != (1, 1);
    let cfg = AiecConfig::with_interval(c, k, 0.0, 1, Pool::None).unwrap();
    let mut rng = SplitMix64::new(4242);
    let x: Vec<f32> = (0..b * c).map(|_| rng.uniform(-1.0, 2.0) as f32).collect();
    let targets: Vec<i64> = (0..b).map(|_| (rng.next_u64() % k as u64) as i64).collect();
    let r: Vec<f32> = (0..b).map(|i| if i % 7 == 3 { 0.0 } else { rng.uniform(-2.0, 2.0) as f32 }).collect();
    let w0: Vec<f32> = (0..k * c).map(|_| rng.uniform(-0.5, 0.5) as f32).collect();
    let dy: Vec<f32> = (0..b * c).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let gate_scale = 0.37f32;
    let losses = AiecLosses { aux_scale: 1000.0, gate_scale, ..bytemuck::Zeroable::zeroed() };
    for dev in devices() {
        for path in paths_with_tf32(&dev) {
            path.set(&dev);
            if split {
                dev.set_split_k(SplitK::On);
            }
            let name = format!("{} [{}] B={b} C={c} K={k} slices={slices:?}", dev.label(), path.name());
            let xt = Tensor::from_slice(&dev, &x, &[b, c]).unwrap();
            let w = Buffer::from_slice(&dev, &w0).unwrap();
            let mut counters = GpuCounters::new(&dev, k, c).unwrap();
            let rec = gpu::forward(&cfg, &xt, &w, Some(&targets), &mut counters, true).unwrap();
            let aux = rec.aux.as_ref().unwrap();
            let lb = Buffer::from_slice(&dev, &[losses]).unwrap();
            let rb = Buffer::from_slice(&dev, &r).unwrap();
            let dyt = Tensor::from_slice(&dev, &dy, &[b, c]).unwrap();
            let mut dxt = Tensor::from_slice(&dev, &dy, &[b, c]).unwrap();
            let shape = aiec::params::AiecShape::new(&rec.dims, k, 0.0, false);
            let want = BwdSlices { dv: slices.0, dw: slices.1 };
            let len = want.scratch_len(&shape) as usize;
            assert_eq!(aiec::launch::bwd_slices(&shape, &dev.limits(), len as u64), want, "{name}: slices");
            let old: Vec<f32> =
                (0..k * c).map(|i| if accumulate { (i % 13) as f32 - 6.0 } else { f32::NAN }).collect();
            let mut dw = Buffer::from_slice(&dev, &old).unwrap();
            let mode = if accumulate { DwMode::Accumulate } else { DwMode::Write };
            // A scratch of `len` values: at least [B, C] runs, a shorter one is refused (naming B C) and
            // launches nothing.
            let mut backward = |len: usize| {
                let mut dv = Buffer::from_slice(&dev, &vec![f32::NAN; len]).unwrap();
                let saved = SavedRef { v: aux.v.view(), g: aux.g.view(), mask: aux.mask.view() };
                let scales = Scales { losses: lb.view(), row_scale: Some(rb.view()) };
                let mut dv_view = dv.view_mut();
                let train = TrainBackward {
                    w: &w.view(),
                    saved: &saved,
                    scales: &scales,
                    dv: &mut dv_view,
                    dw: &mut dw.view_mut(),
                    mode,
                };
                let dx = Dx::Into { dy: &dyt.view(), dx: &mut dxt.view_mut() };
                let done = fused::backward(&cfg, &rec.dims, &rec.keep.view(), Some(train), dx);
                drop(dv_view);
                done.map(|()| dv)
            };
            let launches = dev.stats().launches;
            match backward(b * c - 1) {
                Err(AiecError::LengthMismatch { expected, got, .. }) => {
                    assert_eq!((expected, got), (b * c, b * c - 1), "{name}")
                }
                other => panic!("{name}: a short dv scratch gave {:?}", other.map(|_| ())),
            }
            assert_eq!(dev.stats().launches, launches, "{name}: launched after the error");
            let dv = backward(len).unwrap();
            let (v, g, mask) = (aux.v.to_vec().unwrap(), aux.g.to_vec().unwrap(), aux.mask.to_vec().unwrap());
            let (dv, dw) = (dv.to_vec().unwrap()[..b * c].to_vec(), dw.to_vec().unwrap());
            let mut want_dv = vec![0f64; b * c];
            let mut want_dw = vec![0f64; k * c];
            for bi in 0..b {
                for ci in 0..c {
                    let s: f64 = (0..k).map(|ki| g[bi * k + ki] as f64 * w0[ki * c + ci] as f64).sum();
                    let gate =
                        if mask[bi * c + ci] != 0 { gate_scale as f64 * v[bi * c + ci] as f64 } else { 0.0 };
                    want_dv[bi * c + ci] = r[bi] as f64 * s + gate;
                }
            }
            for ki in 0..k {
                for ci in 0..c {
                    let sum: f64 =
                        (0..b).map(|bi| r[bi] as f64 * g[bi * k + ki] as f64 * v[bi * c + ci] as f64).sum();
                    want_dw[ki * c + ci] = if accumulate { old[ki * c + ci] as f64 + sum } else { sum };
                }
            }
            let rel = |got: &[f32], want: &[f64]| {
                let top = want.iter().fold(0f64, |m, x| m.max(x.abs()));
                got.iter()
                    .zip(want)
                    .fold(0f64, |m, (&a, &e)| m.max((a as f64 - e).abs() / e.abs().max(0.1 * top)))
            };
            let (edv, edw) = (rel(&dv, &want_dv), rel(&dw, &want_dw));
            let rtol = if path.projection == Projection::Tf32 { 5e-3 } else { 1e-5 };
            println!("per-sample scales vs f64, {name}: dv {edv:.1e}, dW {edw:.1e}");
            assert!(edv <= rtol && edw <= rtol, "{name}: dv {edv:.1e}, dW {edw:.1e} above {rtol:.0e}");
        }
        reset_path(&dev);
    }
}

/// Every output of one training step, as raw bytes.
fn step_bytes(dev: &Device, c: &GoldenCase) -> Vec<Vec<u8>> {
    let out: common::runner::Outputs = run_gpu::<bf16>(dev, c).unwrap();
    let mut v = Vec::new();
    for l in &out.layers {
        for f in [&l.y, &l.v, &l.logits, &l.dx, &l.dw] {
            v.push(f.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect());
        }
        v.push(l.mask.clone());
        v.push(l.act.iter().chain(&l.inh).chain(&l.total).flat_map(|x| x.to_le_bytes()).collect());
        v.push(l.gate_sum_sq.to_bits().to_le_bytes().to_vec());
    }
    v.push([out.aux_loss, out.gate_loss].iter().flat_map(|x| x.to_bits().to_le_bytes()).collect());
    v
}

/// Every output of a step, bit for bit, whatever the simulator's schedule (seed, workers): the logits'
/// split sums meet through tickets (in 4 slices in case 4, pinned with `SplitK::On`) and dv's split sums
/// (case 2) and dW's (case 5, pinned) are added in a fixed order.
#[cfg(feature = "sim")]
#[test]
fn results_are_bitwise_identical_across_schedules() {
    // `pinned`: SplitK::On.
    let on = |seed, workers, path: Path, pinned: bool| {
        let d = Device::sim_with(seed, workers);
        path.set(&d);
        if pinned {
            d.set_split_k(SplitK::On);
        }
        d
    };
    for path in paths(&Device::sim_with(0, 1)) {
        for (i, c) in [
            case(11, Pool::AvgToken, 0.0, 13, 72, 10, 17, 2, true),
            case(12, Pool::AvgHw, 0.3, 6, 20, 7, 49, 1, true),
            case(13, Pool::Token, 0.0, 9, 64, 1000, 5, 1, true),
            case(15, Pool::None, 0.0, 70, 35, 130, 1, 1, true),
            case(16, Pool::None, 0.0, 40, 512, 60, 1, 1, true),
            case(17, Pool::None, 0.0, 260, 40, 12, 1, 1, true),
        ]
        .iter()
        .enumerate()
        {
            let pinned = i >= 4;
            let slices = |channels, classes| {
                let d = on(0, 1, path, pinned);
                let dims = aiec::InputDims::new(c.pool, channels, &c.dims).unwrap();
                let shape = aiec::params::AiecShape::new(&dims, classes, 0.0, false);
                aiec::launch::bwd_slices(&shape, &d.limits(), u64::MAX)
            };
            if i == 2 {
                // K = 1000 beside B = 9: dv's sums split (3 or 4 slices on the simulator's 2 SMs).
                let s = slices(64, 1000);
                assert!(s.dv > 1 && s.dw == 1, "{}: {s:?}", path.name());
            }
            if i == 5 {
                // B = 260: dW's sums in 2 slices (160 and 100 samples).
                assert_eq!(slices(40, 12), aiec::launch::BwdSlices { dv: 1, dw: 2 }, "{}", path.name());
            }
            if i == 4 {
                // C = 512: the logits' sums in 4 slices of 128 on the tensor-core paths' 64-column tiles.
                let limits = on(0, 1, path, pinned).limits();
                let dims = aiec::InputDims::new(Pool::None, 512, &c.dims).unwrap();
                let shape = aiec::params::AiecShape::new(&dims, 60, 0.0, false);
                let cols = aiec::launch::gemm_cols(&limits, aiec::launch::logits_rows(&shape, &limits));
                let want = if limits.projection() == Projection::F32 || cols == 128 { 1 } else { 4 };
                assert_eq!(aiec::launch::logits_split(&shape, &limits), want, "{}", path.name());
            }
            let base = step_bytes(&on(0, 1, path, pinned), c);
            for (seed, workers) in [(1, 1), (2, 4), (3, 2)] {
                assert!(
                    base == step_bytes(&on(seed, workers, path, pinned), c),
                    "{} case {i}: seed {seed}, workers {workers} differ",
                    path.name()
                );
            }
        }
    }
}

/// A device is shared across threads. On CUDA a thread that did not open it has
/// no current context, so every raw driver call must bind it: a whole step, a
/// buffer-to-buffer copy and dropping the last handle, each from another thread.
#[test]
fn a_device_works_from_any_thread() {
    let c = case(14, Pool::Token, 0.0, 9, 40, 12, 5, 2, true);
    for dev in devices() {
        let here = step_bytes(&dev, &c);
        let there = std::thread::scope(|s| s.spawn(|| step_bytes(&dev, &c)).join().unwrap());
        assert!(here == there, "{}: a step run from another thread differs", dev.label());
        let src = Buffer::from_slice(&dev, &[1.5f32, -2.0, 3.25]).unwrap();
        let copied = std::thread::spawn(move || {
            let mut dst = Buffer::<f32>::zeros(src.device(), 3).unwrap();
            dst.copy_from_buffer(&src).unwrap();
            dst.to_vec().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(copied, [1.5, -2.0, 3.25], "{}", dev.label());
        let label = dev.label().to_string();
        std::thread::spawn(move || drop(dev)).join().unwrap_or_else(|_| panic!("{label}: drop panicked"));
    }
}

#[test]
fn a_step_costs_four_plus_one_plus_two_launches_and_no_host_sync() {
    for dev in devices() {
        // Compiled and loaded ahead (on CUDA), so the step below only launches.
        dev.prepare(DType::BF16).unwrap();
        let cfg = AiecConfig::with_interval(48, 10, 0.0, 1, Pool::AvgToken).unwrap();
        let mut layers = [GpuLayer::new(&dev, cfg, 1).unwrap(), GpuLayer::new(&dev, cfg, 2).unwrap()];
        let x: Vec<bf16> =
            (0..4 * 5 * 48).map(|i| bf16::from_f32(((i * 7 % 11) as f32 - 5.0) / 3.0)).collect();
        let xt = Tensor::from_slice(&dev, &x, &[4, 5, 48]).unwrap();
        let t = [0i64, 3, 9, 3];
        let s0 = dev.stats();
        let launches_only = |launches| DeviceStats { launches, ..Default::default() };
        let r0 = layers[0].forward(&xt, Some(&t)).unwrap();
        let r1 = layers[1].forward(r0.y().unwrap(), Some(&t)).unwrap();
        let s1 = dev.stats();
        let fwd = s1 - s0;
        assert_eq!((fwd.launches, fwd.host_syncs, fwd.device_to_host), (8, 0, 0), "two forwards");
        assert_eq!(fwd.host_to_device, 2, "two forwards on host targets: one upload of the targets each");
        let losses = gpu::combine(&[&r0, &r1], LossCoefs::PAPER).unwrap();
        let s2 = dev.stats();
        assert_eq!((s2 - s1).launches, 1, "loss");
        assert_eq!((s2 - s1).host_syncs + (s2 - s1).device_to_host, 0, "loss");
        let mut dy = Tensor::from_slice(&dev, &x, &[4, 5, 48]).unwrap();
        let s2 = dev.stats();
        let _dw1 = layers[1].backward_inplace(&r1, &mut dy, &losses).unwrap();
        let _dw0 = layers[0].backward_inplace(&r0, &mut dy, &losses).unwrap();
        let s3 = dev.stats();
        let bwd = s3 - s2;
        assert_eq!(
            (bwd.launches, bwd.host_syncs, bwd.device_to_host, bwd.host_to_device),
            (4, 0, 0, 0),
            "two backwards"
        );
        // Inference into the caller's y: one launch, and (the training records
        // dropped) the keep bits in the workspace's memory again: no allocation.
        drop((r0, r1));
        layers[0].eval().unwrap();
        let mut y = Tensor::zeros(&dev, DType::BF16, &[4, 5, 48]).unwrap();
        let s4 = dev.stats();
        let r = layers[0].forward_into(&xt.view(), None, &mut y.view_mut()).unwrap();
        assert!(r.aux.is_none());
        assert_eq!(dev.stats() - s4, launches_only(1), "inference: one launch, nothing else");
        // Reading a loss is the explicit sync.
        let _ = losses.read().unwrap();
        assert_eq!(dev.stats().host_syncs - s4.host_syncs, 1);
    }
}

/// The keep bits have one layout in each language (`aiec::layout::KeepLayout`,
/// `aiec_k::keep_*` in kernels/aiec_params.cuh, `aiec._ops.keep_words` for the
/// word count, pinned by python/tests/test_pt_ops.py): the kernels' words equal
/// the CPU reference's, packed through `KeepLayout`, bit for bit, padding
/// included, on odd rows in every pooling mode.
#[test]
fn the_kernels_keep_bits_are_the_layouts() {
    for dev in devices() {
        for (pool, dims) in [
            (Pool::Token, vec![3, 5, 37]),
            (Pool::AvgToken, vec![2, 3, 40]),
            (Pool::AvgHw, vec![2, 3, 7, 5]),
            (Pool::None, vec![5, 33]),
            (Pool::None, vec![4, 64]),
        ] {
            let c = if pool == Pool::AvgHw { dims[1] } else { dims[dims.len() - 1] };
            let cfg = AiecConfig::new(c, 3, 0.25, pool).unwrap();
            let n: usize = dims.iter().product();
            let x = common::devices::activations(n as u64, n, 0.25);
            let (mut y, mut want) = (
                vec![0f32; n],
                vec![0u32; aiec::layout::KeepLayout::of_dims(&cfg.plan_input(&dims).unwrap()).words()],
            );
            aiec::cpu::buffers::fwd_x(&cfg, &dims, &x, &mut y, &mut want, None).unwrap();
            let xt = Tensor::from_slice(&dev, &x, &dims).unwrap();
            let w = Buffer::from_slice(&dev, &vec![0f32; 3 * c]).unwrap();
            let mut counters = GpuCounters::new(&dev, 3, c).unwrap();
            let rec = gpu::forward(&cfg, &xt, &w, None, &mut counters, false).unwrap();
            assert_eq!(rec.keep.to_vec().unwrap(), want, "{pool} {dims:?} on {}", dev.label());
        }
    }
}

#[test]
fn saved_state_is_one_bit_per_element_plus_o_of_bc_plus_bk() {
    for dev in devices() {
        for (pool, dims) in
            [(Pool::Token, vec![8, 197, 96]), (Pool::AvgHw, vec![4, 96, 7, 7]), (Pool::None, vec![33, 96])]
        {
            let (b, c, k) = (dims[0], 96, 100);
            let cfg = AiecConfig::new(c, k, 0.0, pool).unwrap();
            let n: usize = dims.iter().product();
            let x = Tensor::zeros(&dev, DType::BF16, &dims).unwrap();
            let w = Buffer::from_slice(&dev, &vec![0.01f32; k * c]).unwrap();
            let mut counters = GpuCounters::new(&dev, k, c).unwrap();
            let rec = gpu::forward(&cfg, &x, &w, Some(&vec![0; b]), &mut counters, false).unwrap();
            let aux = rec.aux.as_ref().unwrap();
            // One bit per element, row by row, each row from a word: rows of C channels, or of
            // H*W positions for avg_hw (7x7 = 49: two words per row, 15 padding bits).
            let (rows, len) = if pool == Pool::AvgHw { (b * c, 49) } else { (n / c, c) };
            assert_eq!(rec.keep.byte_len(), rows * len.div_ceil(32) * 4, "one bit per element, rows padded");
            assert!(rec.keep.len() * 32 - n <= 31 * rows, "at most 31 padding bits per row");
            let want = aiec::layout::keep_words(&aiec::params::AiecShape::new(&rec.dims, k, 0.0, false));
            assert_eq!(rec.keep.len(), want, "layout::keep_words");
            assert!(aux.v.len() == b * c);
            let rest = rec.saved_bytes() - rec.keep.byte_len();
            // v (4) + mask (1) per B*C; logits and g (4 + 4) per B*K; targets and ce per B; stats.
            let bound = 5 * b * c + 8 * b * k + 12 * b + 16;
            assert!(rest <= bound, "{pool}: {rest} bytes besides the bits > {bound}");
            println!(
                "saved {pool} {dims:?}: {} bytes = {} bit bytes + {rest} (n = {n})",
                rec.saved_bytes(),
                rec.keep.byte_len()
            );
        }
    }
}

#[test]
fn bad_input_is_a_typed_error_before_any_launch() {
    for dev in devices() {
        let cfg = AiecConfig::with_interval(8, 4, 0.0, 1, Pool::Token).unwrap();
        let mut layer = GpuLayer::new(&dev, cfg, 3).unwrap();
        let x = Tensor::from_slice(&dev, &[1.0f32; 2 * 3 * 8], &[2, 3, 8]).unwrap();
        layer.forward(&x, Some(&[1, 2])).unwrap();
        let (w0, c0, s0) = (layer.weights().unwrap(), layer.counters().unwrap(), layer.step());
        let launches = dev.stats().launches;
        let bad: Vec<(Tensor, Vec<i64>, &str)> = vec![
            (Tensor::from_slice(&dev, &[1.0f32; 2 * 3 * 8], &[2, 3, 8]).unwrap(), vec![1, 4], "target = K"),
            (
                Tensor::from_slice(&dev, &[1.0f32; 2 * 3 * 8], &[2, 3, 8]).unwrap(),
                vec![-1, 0],
                "negative target",
            ),
            (Tensor::from_slice(&dev, &[1.0f32; 2 * 3 * 8], &[2, 3, 8]).unwrap(), vec![1], "target count"),
            (Tensor::from_slice(&dev, &[1.0f32; 2 * 3 * 7], &[2, 3, 7]).unwrap(), vec![1, 2], "channels"),
            (Tensor::from_slice(&dev, &[1.0f32; 6 * 8], &[6, 8]).unwrap(), vec![1, 2], "rank"),
            (Tensor::zeros(&dev, DType::F16, &[2, 0, 8]).unwrap(), vec![1, 2], "empty T"),
        ];
        for (x, t, what) in &bad {
            let e = layer.forward(x, Some(t)).err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(!e.to_string().is_empty());
            assert_eq!(layer.step(), s0, "{what}: step moved");
        }
        assert_eq!(dev.stats().launches, launches, "a bad input launched a kernel");
        assert_eq!((layer.weights().unwrap(), layer.counters().unwrap()), (w0, c0));
        // Tensors of another device.
        #[cfg(feature = "sim")]
        {
            let other = Device::sim();
            let xo = Tensor::from_slice(&other, &[1.0f32; 2 * 3 * 8], &[2, 3, 8]).unwrap();
            assert!(matches!(layer.forward(&xo, Some(&[1, 2])), Err(AiecError::DeviceMismatch { .. })));
        }
        assert!(matches!(layer.set_weights(&[0.0; 3]), Err(AiecError::LengthMismatch { .. })));
        assert!(matches!(layer.set_counters(&Counters::new(5, 8)), Err(AiecError::LengthMismatch { .. })));
    }
}

/// The GPU layer applies the same step, update-interval and eval policy as the
/// CPU layer: counters after every step equal.
#[test]
fn gpu_layer_follows_the_cpu_layer() {
    for dev in devices() {
        let cfg = AiecConfig::with_interval(16, 3, 0.2, 2, Pool::AvgHw).unwrap();
        let mut g = GpuLayer::new(&dev, cfg, 7).unwrap();
        let mut c = aiec::cpu::AiecLayer::<f32>::new(cfg, 7).unwrap();
        assert_eq!(g.weights().unwrap(), c.weights());
        let mut rng = SplitMix64::new(5);
        let mut updated = false;
        for step in 0..8 {
            let x: Vec<f32> = (0..16 * 16 * 4).map(|_| rng.uniform(-1.0, 2.0) as f32).collect();
            let t: Vec<i64> = (0..16).map(|_| (rng.next_u64() % 3) as i64).collect();
            let targets = (step != 3).then_some(t.as_slice());
            let xt = Tensor::from_slice(&dev, &x, &[16, 16, 2, 2]).unwrap();
            g.forward(&xt, targets).unwrap();
            c.forward(&x, &[16, 16, 2, 2], targets).unwrap();
            assert_eq!(g.step(), c.step());
            assert_eq!(&g.counters().unwrap(), c.counters(), "step {step}");
            updated |= c.counters().total.iter().any(|&t| t > 1);
            if step == 5 {
                g.eval().unwrap();
                c.eval();
                g.train();
                c.train();
            }
        }
        assert!(updated, "no update happened: the test would prove nothing");
    }
}

/// Weights, counters and step are a layer's whole state: a layer rebuilt from
/// them mid-run (a checkpoint) continues exactly as the original, on the CPU
/// and on every device, including on which steps the counters update.
#[test]
fn a_layer_restored_from_its_state_continues_as_the_original() {
    let cfg = AiecConfig::with_interval(12, 3, 0.1, 3, Pool::None).unwrap();
    let mut rng = SplitMix64::new(21);
    let steps: Vec<(Vec<f32>, Vec<i64>)> = (0..9)
        .map(|_| {
            let x = (0..20 * 12).map(|_| rng.uniform(-1.0, 2.0) as f32).collect();
            (x, (0..20).map(|_| (rng.next_u64() % 3) as i64).collect())
        })
        .collect();
    let checkpoint_after = 4; // interval 3: the original updates on steps 6 and 9, a restart would on 7
    for dev in devices() {
        let mut gpu = GpuLayer::new(&dev, cfg, 4).unwrap();
        let mut cpu = aiec::cpu::AiecLayer::<f32>::new(cfg, 4).unwrap();
        let mut gpu_restored: Option<GpuLayer> = None;
        let mut cpu_restored: Option<aiec::cpu::AiecLayer<f32>> = None;
        for (i, (x, t)) in steps.iter().enumerate() {
            let xt = Tensor::from_slice(&dev, x, &[20, 12]).unwrap();
            gpu.forward(&xt, Some(t)).unwrap();
            cpu.forward(x, &[20, 12], Some(t)).unwrap();
            if let (Some(g), Some(c)) = (gpu_restored.as_mut(), cpu_restored.as_mut()) {
                g.forward(&xt, Some(t)).unwrap();
                c.forward(x, &[20, 12], Some(t)).unwrap();
                assert_eq!((g.step(), c.step()), (gpu.step(), cpu.step()));
                assert_eq!(g.counters().unwrap(), gpu.counters().unwrap(), "{} step {}", dev.label(), i + 1);
                assert_eq!(c.counters(), cpu.counters(), "cpu step {}", i + 1);
            }
            assert_eq!(&gpu.counters().unwrap(), cpu.counters(), "{} step {}", dev.label(), i + 1);
            if i + 1 == checkpoint_after {
                let mut g = GpuLayer::with_weights(&dev, cfg, &gpu.weights().unwrap()).unwrap();
                g.set_counters(&gpu.counters().unwrap()).unwrap();
                g.set_step(gpu.step());
                let mut c = aiec::cpu::AiecLayer::with_weights(cfg, cpu.weights().to_vec()).unwrap();
                c.set_counters(cpu.counters().clone()).unwrap();
                c.set_step(cpu.step());
                (gpu_restored, cpu_restored) = (Some(g), Some(c));
            }
        }
        let updates = cpu.counters().total.iter().map(|&t| t - 1).sum::<i64>();
        assert!(updates > 0, "no sample was counted: the test would prove nothing");
    }
}

#[test]
fn empty_batch_is_a_no_op_on_the_device() {
    for dev in devices() {
        let cfg = AiecConfig::new(8, 4, 0.0, Pool::AvgToken).unwrap();
        let mut layer = GpuLayer::new(&dev, cfg, 3).unwrap();
        let x = Tensor::zeros(&dev, DType::F32, &[0, 3, 8]).unwrap();
        let rec = layer.forward(&x, Some(&[])).unwrap();
        assert_eq!(rec.y().unwrap().shape(), &[0, 3, 8]);
        let losses = gpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
        let l = losses.read().unwrap();
        assert_eq!((l.aux, l.gate, l.gate_count), (0.0, 0.0, 0));
        let g = layer.backward(&rec, &x, &losses).unwrap();
        assert_eq!(g.dx.shape(), &[0, 3, 8]);
        assert_eq!(g.dw.to_vec().unwrap(), vec![0.0; 32]);
        assert_eq!(layer.counters().unwrap(), Counters::new(4, 8));
    }
}

/// The activation passes are correct for any grid (the plans cover large
/// inputs in one grid-stride step; huge ones loop): a one-block-row grid gives
/// bitwise the same y, keep bits, v and dx as the planned one.
#[test]
fn activation_passes_are_correct_for_any_grid() {
    use aiec::launch::{aiec_bwd_x, aiec_fwd_x, BwdXArgs, FwdXArgs};
    use aiec::params::AiecShape;
    for dev in devices() {
        for (pool, dims) in [
            (Pool::Token, vec![5, 37, 72]),
            (Pool::None, vec![77, 40]),
            (Pool::AvgToken, vec![3, 19, 33]),
            (Pool::AvgHw, vec![3, 33, 5, 7]),
            (Pool::AvgHw, vec![2, 9, 14, 14]),
            (Pool::Token, vec![3, 9, 35]),
        ] {
            let c = if pool == Pool::AvgHw { dims[1] } else { *dims.last().unwrap() };
            let cfg = AiecConfig::new(c, 3, 0.1, pool).unwrap();
            let plan = cfg.plan_input(&dims).unwrap();
            let shape = AiecShape::new(&plan, 3, 0.1, false);
            let n = plan.len();
            let mut rng = SplitMix64::new(n as u64);
            let x: Vec<bf16> = (0..n).map(|_| bf16::from_f32(rng.uniform(-1.0, 1.0) as f32)).collect();
            let dv: Vec<f32> = (0..plan.batch * c).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let xt = Tensor::from_slice(&dev, &x, &dims).unwrap();
            // dv at an offset of 0, 1 or 2 floats (v likewise): the token / none passes
            // narrow their access width until v and dv take vectors (aiec_k::v_bits).
            let dvb: Vec<Buffer<f32>> = (0..3)
                .map(|off| Buffer::from_slice(&dev, &[vec![f32::NAN; off], dv.clone()].concat()).unwrap())
                .collect();
            // `wide`: a device with SMs to spare, so that every block does one step;
            // the device's own grid (one wave, blocks streaming many steps); `shrink`: fewer still.
            let wide = aiec::launch::DeviceLimits { sm_count: 1 << 20, ..dev.limits() };
            let run = |limits: aiec::launch::DeviceLimits, shrink: bool, off: usize| {
                let y = Tensor::zeros(&dev, DType::BF16, &dims).unwrap();
                let dx = Tensor::zeros(&dev, DType::BF16, &dims).unwrap();
                let keep: Buffer<u32> = Buffer::zeros(&dev, aiec::layout::keep_words(&shape)).unwrap();
                let v: Buffer<f32> = Buffer::zeros(&dev, off + plan.batch * c).unwrap();
                let args = FwdXArgs {
                    x: xt.address(),
                    y: y.address(),
                    keep: keep.address(),
                    v: v.address() + 4 * off as u64,
                    ..Default::default()
                };
                let mut f = aiec_fwd_x(DType::BF16, &shape, args, limits).unwrap();
                let bargs = BwdXArgs {
                    dy: xt.address(),
                    keep: keep.address(),
                    dv: dvb[off].address() + 4 * off as u64,
                    dx: dx.address(),
                };
                let mut b = aiec_bwd_x(DType::BF16, &shape, bargs, limits).unwrap();
                if shrink {
                    for p in [&mut f, &mut b] {
                        // tokens: every channel tile, one block row; hw: two blocks.
                        p.grid = if pool == Pool::AvgHw { [2, 1, 1] } else { [p.grid[0], 1, 1] };
                    }
                }
                // SAFETY: every buffer above is live, sized for `shape`, and used
                // by nothing else during the launches.
                unsafe {
                    dev.launch(&f).unwrap();
                    dev.launch(&b).unwrap();
                }
                (
                    y.to_vec::<bf16>().unwrap(),
                    keep.to_vec().unwrap(),
                    v.to_vec().unwrap().split_off(off),
                    dx.to_vec::<bf16>().unwrap(),
                )
            };
            let full = run(wide, false, 0);
            let own = run(dev.limits(), false, 0);
            let small = run(dev.limits(), true, 0);
            assert!(full == own, "{} {pool} {dims:?}: the device's grid changed the result", dev.label());
            assert!(full == small, "{} {pool} {dims:?}: a smaller grid changed the result", dev.label());
            for off in [1, 2] {
                let moved = run(dev.limits(), false, off);
                assert!(
                    full == moved,
                    "{} {pool} {dims:?}: v and dv {off} floats in changed the result",
                    dev.label()
                );
            }
            assert!(full.1.iter().any(|&w| w != 0), "no keep bit set: the comparison proves nothing");
        }
    }
}
