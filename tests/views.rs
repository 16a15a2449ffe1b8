//! The op on the caller's memory (issue: bring your own stream and memory):
//! views of host memory at odd offsets and misaligned addresses on the
//! simulator (every golden case), every bad view rejected with nothing
//! changed, a steady training step that allocates, copies and waits for
//! nothing, device-side targets good and bad, `dW` accumulated over
//! micro-batches, and the shared layer policy.

mod common;

use aiec::cpu::gradcheck::{random_case, CaseShape};
use aiec::cpu::LossCoefs;
use aiec::gpu::{self, DwMode, Dx, GpuLayer, GradsMut, Targets, Workspace};
use aiec::init::SplitMix64;
use aiec::{AiecConfig, AiecError, Buffer, DType, Device, DeviceStats, Pool, Tensor};
use common::devices::devices;
use common::golden::inputs_only;
use half::bf16;

#[cfg(feature = "sim")]
#[test]
fn golden_cases_through_views_of_host_memory_at_odd_offsets() {
    use common::compare::tolerance;
    use common::golden::{dirs, load_dir};
    use common::runner::{judge_against, rounded_case, run_cpu};
    use common::views::run_views;
    const TIE_MARGIN: f64 = 1e-4;
    let dev = Device::sim();
    let mut failed = Vec::new();
    let mut checked = 0;
    for (dir, label) in dirs() {
        let cases = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        for case in &cases {
            for (precision, offset) in [("f32", 0), ("f32", 1), ("f32", 3), ("bf16", 1)] {
                let got = if precision == "f32" {
                    run_views::<f32>(&dev, case, offset)
                } else {
                    run_views::<bf16>(&dev, case, offset)
                };
                let rounded = if precision == "f32" { case.clone() } else { rounded_case::<bf16>(case) };
                let r = got.and_then(|g| {
                    let want = run_cpu::<f32>(&rounded)?;
                    judge_against(&rounded, &g, &want, tolerance(precision), TIE_MARGIN)
                });
                checked += 1;
                if let Err(msg) = r {
                    failed.push(format!("{} {precision} offset {offset} ({label}): {msg}", case.name));
                }
            }
        }
    }
    println!(
        "views sim: {}/{checked} golden runs passed (f32 at offsets 0, 1, 3; bf16 at 1)",
        checked - failed.len()
    );
    for f in failed.iter().take(5) {
        println!("  FAILED {f}");
    }
    assert!(failed.is_empty() && checked >= 100, "{} failures of {checked}", failed.len());
}

/// A two-layer training step on `dev` through `GpuLayer::forward_into` /
/// `backward_into`, every output the caller's; returns the stats of the step.
struct Step {
    cfg: AiecConfig,
    layers: [GpuLayer; 2],
    x: Tensor,
    y: [Tensor; 2],
    dy: Tensor,
    dx: [Tensor; 2],
    dw: [Buffer<f32>; 2],
    targets: Buffer<i64>,
    loss_ws: Workspace,
}

impl Step {
    fn new(dev: &Device, dims: &[usize], cfg: AiecConfig) -> Step {
        let n: usize = dims.iter().product();
        let mut rng = SplitMix64::new(3);
        let dy: Vec<bf16> = (0..n).map(|_| bf16::from_f32(rng.uniform(-0.1, 0.1) as f32)).collect();
        let b = dims[0];
        // Targets 0, 1, 0, 1, ...; W favours class 0 for even channels and class 1
        // for odd ones, and x is positive on the channels of its sample's class,
        // so every sample is classified correctly and an update step counts it.
        let t: Vec<i64> = (0..b).map(|i| (i % 2) as i64).collect();
        let c = cfg.channels();
        let x: Vec<bf16> = (0..n)
            .map(|i| {
                let (bi, ci) = (i / (n / b), i % c);
                let on = ci % 2 == bi % 2;
                bf16::from_f32(if on {
                    0.5 + rng.uniform(0.0, 1.0) as f32
                } else {
                    rng.uniform(-1.0, 0.2) as f32
                })
            })
            .collect();
        let w: Vec<f32> = (0..cfg.classes() * c)
            .map(|i| {
                let (k, ci) = (i / c, i % c);
                if k < 2 && ci % 2 == k {
                    0.3
                } else {
                    -0.2
                }
            })
            .collect();
        let z = || Tensor::zeros(dev, DType::BF16, dims).unwrap();
        let kc = cfg.classes() * cfg.channels();
        Step {
            cfg,
            layers: [
                GpuLayer::with_weights(dev, cfg, &w).unwrap(),
                GpuLayer::with_weights(dev, cfg, &w).unwrap(),
            ],
            x: Tensor::from_slice(dev, &x, dims).unwrap(),
            y: [z(), z()],
            dy: Tensor::from_slice(dev, &dy, dims).unwrap(),
            dx: [z(), z()],
            dw: [Buffer::zeros(dev, kc).unwrap(), Buffer::zeros(dev, kc).unwrap()],
            targets: Buffer::from_slice(dev, &t).unwrap(),
            loss_ws: Workspace::new(dev),
        }
    }

    fn run(&mut self) -> aiec::Result<()> {
        let t = self.targets.view();
        let [l0, l1] = &mut self.layers;
        let [y0, y1] = &mut self.y;
        let r0 = l0.forward_into(&self.x.view(), Some(Targets::Device(&t)), &mut y0.view_mut())?;
        let r1 = l1.forward_into(&y0.view(), Some(Targets::Device(&t)), &mut y1.view_mut())?;
        let losses = gpu::combine_in(&[&r0, &r1], LossCoefs::PAPER, &self.loss_ws)?;
        let [dx0, dx1] = &mut self.dx;
        let [dw0, dw1] = &mut self.dw;
        l1.backward_into(
            &r1,
            GradsMut {
                dx: Dx::Into { dy: &self.dy.view(), dx: &mut dx1.view_mut() },
                dw: &mut dw1.view_mut(),
                mode: DwMode::Accumulate,
            },
            &losses,
        )?;
        l0.backward_into(
            &r0,
            GradsMut {
                dx: Dx::Into { dy: &dx1.view(), dx: &mut dx0.view_mut() },
                dw: &mut dw0.view_mut(),
                mode: DwMode::Accumulate,
            },
            &losses,
        )?;
        let _ = self.cfg;
        Ok(())
    }
}

#[test]
fn a_steady_step_allocates_copies_and_waits_for_nothing() {
    for dev in devices() {
        dev.prepare(DType::BF16).unwrap();
        let cfg = AiecConfig::with_interval(40, 7, 0.0, 2, Pool::AvgToken).unwrap();
        let mut step = Step::new(&dev, &[6, 5, 40], cfg);
        step.run().unwrap(); // the first step sizes every workspace
        dev.synchronize().unwrap();
        for i in 0..3 {
            let s0 = dev.stats();
            step.run().unwrap();
            let d = dev.stats() - s0;
            assert_eq!(
                d,
                DeviceStats { launches: 4 + 4 + 1 + 2 + 2, ..Default::default() },
                "{}: steady step {i} did more than launch kernels",
                dev.label()
            );
        }
        // The step did the work: the counters moved (interval 2) and dW accumulated.
        dev.synchronize().unwrap();
        assert!(step.layers[0].counters().unwrap().total.iter().any(|&t| t > 1));
        assert!(step.dw[0].to_vec().unwrap().iter().any(|&v| v != 0.0));
    }
}

#[test]
fn device_targets_give_what_host_targets_give() {
    for dev in devices() {
        for seed in 0..4u64 {
            let pool = Pool::ALL[seed as usize];
            let cfg = AiecConfig::with_interval(24, 5, 0.1, 1, pool).unwrap();
            let shape = CaseShape { batch: 9, channels: 24, classes: 5, positions: 3, layers: 1 };
            let case = inputs_only(format!("{pool}"), &random_case(seed, cfg, shape, LossCoefs::PAPER, true));
            let x: Vec<f32> = case.layers[0].x.iter().map(|&v| v as f32).collect();
            let xt = Tensor::from_slice(&dev, &x, &case.dims).unwrap();
            let t = Buffer::from_slice(&dev, &case.targets).unwrap();
            let run = |device_side: bool| {
                let mut layer = GpuLayer::new(&dev, cfg, seed).unwrap();
                let mut y = Tensor::zeros(&dev, DType::F32, &case.dims).unwrap();
                let tv = t.view();
                let targets =
                    if device_side { Targets::Device(&tv) } else { Targets::Host(case.targets.as_slice()) };
                let rec = layer.forward_into(&xt.view(), Some(targets), &mut y.view_mut()).unwrap();
                let aux = rec.aux.as_ref().unwrap();
                (
                    y.to_vec::<f32>().unwrap(),
                    aux.logits.to_vec().unwrap(),
                    aux.mask.to_vec().unwrap(),
                    layer.counters().unwrap(),
                )
            };
            let (host, device) = (run(false), run(true));
            assert!(host.3.total.iter().any(|&t| t > 1), "nothing counted: the comparison proves little");
            assert!(host == device, "{} {pool}: device targets differ from host targets", dev.label());
        }
    }
}

#[test]
fn a_bad_device_target_changes_no_counter_and_is_reported_at_the_next_sync() {
    for dev in devices() {
        let cfg = AiecConfig::with_interval(16, 4, 0.0, 1, Pool::None).unwrap();
        let mut layer = GpuLayer::new(&dev, cfg, 9).unwrap();
        let mut rng = SplitMix64::new(4);
        let x: Vec<f32> = (0..8 * 16).map(|_| rng.uniform(-1.0, 2.0) as f32).collect();
        let xt = Tensor::from_slice(&dev, &x, &[8, 16]).unwrap();
        let mut y = Tensor::zeros(&dev, DType::F32, &[8, 16]).unwrap();
        let good = Buffer::from_slice(&dev, &[0i64, 1, 2, 3, 0, 1, 2, 3]).unwrap();
        layer.forward_into(&xt.view(), Some(Targets::Device(&good.view())), &mut y.view_mut()).unwrap();
        dev.synchronize().unwrap();
        let before = layer.counters().unwrap();
        assert!(before.total.iter().any(|&t| t > 1), "the good step must count, or this test proves nothing");
        for (bad, index, value) in [
            (vec![0i64, 1, 2, 4, 0, 1, -1, 3], 3usize, 4i64), // the first bad index wins
            (vec![0i64, 1, 2, 3, 0, 1, 2, -5], 7, -5),
        ] {
            let t = Buffer::from_slice(&dev, &bad).unwrap();
            // Nothing is checked on the host: the forward is queued...
            let rec =
                layer.forward_into(&xt.view(), Some(Targets::Device(&t.view())), &mut y.view_mut()).unwrap();
            // ... and the next synchronisation reports the kernel's finding, once.
            match dev.synchronize() {
                Err(AiecError::TargetOutOfRange { index: i, value: v, classes: 4 }) => {
                    assert_eq!((i, v), (index, value), "{}", dev.label())
                }
                other => panic!("{}: expected the bad target, got {other:?}", dev.label()),
            }
            dev.synchronize().expect("reported once");
            assert_eq!(layer.counters().unwrap(), before, "{}: a bad batch changed a counter", dev.label());
            drop(rec);
        }
        // A read reports it too (here the losses of a bad step).
        let t = Buffer::from_slice(&dev, &[0i64, 1, 2, 9, 0, 1, 2, 3]).unwrap();
        let rec =
            layer.forward_into(&xt.view(), Some(Targets::Device(&t.view())), &mut y.view_mut()).unwrap();
        let losses = gpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
        assert!(matches!(losses.read(), Err(AiecError::TargetOutOfRange { index: 3, value: 9, .. })));
        assert_eq!(layer.counters().unwrap(), before);
    }
}

#[test]
fn dw_accumulates_over_micro_batches_with_both_records_alive() {
    for dev in devices() {
        let cfg = AiecConfig::new(20, 6, 0.0, Pool::Token).unwrap();
        let mut layer = GpuLayer::new(&dev, cfg, 5).unwrap();
        let mut cpu = aiec::cpu::AiecLayer::<f32>::new(cfg, 5).unwrap();
        let mut rng = SplitMix64::new(8);
        let dims = [4, 3, 20];
        let mut want = vec![0.0f64; 6 * 20];
        let mut dw = Buffer::from_slice(&dev, &vec![0.5f32; 6 * 20]).unwrap();
        let mut records = Vec::new();
        let mut inputs = Vec::new();
        for _ in 0..2 {
            let x: Vec<f32> = (0..4 * 3 * 20).map(|_| rng.uniform(-1.0, 2.0) as f32).collect();
            let t: Vec<i64> = (0..4).map(|_| (rng.next_u64() % 6) as i64).collect();
            let xt = Tensor::from_slice(&dev, &x, &dims).unwrap();
            records.push(layer.forward(&xt, Some(&t)).unwrap());
            inputs.push((x, t));
        }
        for (rec, (x, t)) in records.iter().zip(&inputs) {
            let losses = gpu::combine(&[rec], LossCoefs::PAPER).unwrap();
            let dy = Tensor::zeros(&dev, DType::F32, &dims).unwrap();
            let mut dx = Tensor::zeros(&dev, DType::F32, &dims).unwrap();
            layer
                .backward_into(
                    rec,
                    GradsMut {
                        dx: Dx::Into { dy: &dy.view(), dx: &mut dx.view_mut() },
                        dw: &mut dw.view_mut(),
                        mode: DwMode::Accumulate,
                    },
                    &losses,
                )
                .unwrap();
            let crec = cpu.forward(x, &dims, Some(t)).unwrap();
            let cl = aiec::cpu::combine(&[&crec], LossCoefs::PAPER).unwrap();
            let g = cpu.backward(&crec, &[0.0; 240], &cl.scales).unwrap();
            for (a, b) in want.iter_mut().zip(&g.dw) {
                *a += *b as f64;
            }
        }
        let got: Vec<f64> = dw.to_vec().unwrap().iter().map(|&v| v as f64 - 0.5).collect();
        common::compare::close("accumulated dW", &got, &want, 1e-5)
            .unwrap_or_else(|m| panic!("{}: {m}", dev.label()));
        assert!(want.iter().any(|&v| v != 0.0));
    }
}

#[cfg(feature = "sim")]
#[test]
fn bad_views_are_typed_errors_and_change_nothing() {
    use aiec::gpu::fused::{self, AuxMut, CountersMut, TargetCheck, TrainIn, TrainOut};
    use aiec::layout::Sizes;
    use aiec::{SliceMut, SliceRef, TensorMut, TensorRef};
    let dev = Device::sim();
    let other = Device::sim();
    let cfg = AiecConfig::with_interval(8, 3, 0.0, 1, Pool::AvgToken).unwrap();
    let dims = [2usize, 3, 8];
    let mut layer = GpuLayer::new(&dev, cfg, 3).unwrap();
    let x = vec![1.0f32; 48];
    let t = vec![0i64, 2];
    let xt = Tensor::from_slice(&dev, &x, &dims).unwrap();
    layer.forward(&xt, Some(&t)).unwrap();
    let state = |l: &GpuLayer| (l.weights().unwrap(), l.counters().unwrap(), l.step());
    let before = state(&layer);
    let launches = dev.stats().launches;

    // Constructors: length against shape, alignment, device kind.
    assert!(matches!(TensorRef::host(&dev, &x[..47], &dims), Err(AiecError::LengthMismatch { .. })));
    // SAFETY: the constructor only checks (it fails before any use).
    let odd = unsafe { TensorRef::from_raw(&dev, x.as_ptr() as u64 + 2, 48, DType::F32, &dims) };
    assert!(matches!(odd, Err(AiecError::Misaligned { align: 4, .. })));
    // SAFETY: as above.
    let null = unsafe { TensorRef::from_raw(&dev, 0, 48, DType::F32, &dims) };
    assert!(matches!(null, Err(AiecError::Misaligned { .. })));

    // forward_into: dtype, shape, device, aliasing.
    let xv = TensorRef::host(&dev, &x, &dims).unwrap();
    let mut y16 = vec![bf16::ZERO; 48];
    let e = layer.forward_into(
        &xv,
        Some(Targets::Host(&t)),
        &mut TensorMut::host(&dev, &mut y16, &dims).unwrap(),
    );
    assert!(matches!(e, Err(AiecError::DTypeMismatch { what: "y", .. })), "{e:?}");
    let mut y = vec![0.0f32; 48];
    let e = layer.forward_into(
        &xv,
        Some(Targets::Host(&t)),
        &mut TensorMut::host(&dev, &mut y, &[2, 24]).unwrap(),
    );
    assert!(matches!(e, Err(AiecError::ShapeMismatch { .. })), "{e:?}");
    let e = layer.forward_into(
        &xv,
        Some(Targets::Host(&t)),
        &mut TensorMut::host(&other, &mut y, &dims).unwrap(),
    );
    assert!(matches!(e, Err(AiecError::DeviceMismatch { .. })), "{e:?}");
    let xo = TensorRef::host(&other, &x, &dims).unwrap();
    let e = layer.forward_into(
        &xo,
        Some(Targets::Host(&t)),
        &mut TensorMut::host(&other, &mut y, &dims).unwrap(),
    );
    assert!(matches!(e, Err(AiecError::DeviceMismatch { .. })), "{e:?}");
    // y overlapping x (raw views of one allocation, shifted by one element).
    let mut both = vec![1.0f32; 49];
    let base = both.as_mut_ptr() as u64;
    // SAFETY: both views lie inside `both`, which outlives them; the call must refuse them.
    let (xa, mut ya) = unsafe {
        (
            TensorRef::from_raw(&dev, base, 48, DType::F32, &dims).unwrap(),
            TensorMut::from_raw(&dev, base + 4, 48, DType::F32, &dims).unwrap(),
        )
    };
    let e = layer.forward_into(&xa, Some(Targets::Host(&t)), &mut ya);
    assert!(matches!(e, Err(AiecError::Overlap { .. })), "{e:?}");
    // Targets: count, range (host), device.
    let mut y = vec![0.0f32; 48];
    let mut yv = TensorMut::host(&dev, &mut y, &dims).unwrap();
    assert!(matches!(
        layer.forward_into(&xv, Some(Targets::Host(&[0])), &mut yv),
        Err(AiecError::TargetCountMismatch { .. })
    ));
    assert!(matches!(
        layer.forward_into(&xv, Some(Targets::Host(&[0, 3])), &mut yv),
        Err(AiecError::TargetOutOfRange { index: 1, value: 3, classes: 3 })
    ));
    let t_other = SliceRef::host(&other, &t).unwrap();
    assert!(matches!(
        layer.forward_into(&xv, Some(Targets::Device(&t_other)), &mut yv),
        Err(AiecError::DeviceMismatch { .. })
    ));
    let t_short = SliceRef::host(&dev, &t[..1]).unwrap();
    assert!(matches!(
        layer.forward_into(&xv, Some(Targets::Device(&t_short)), &mut yv),
        Err(AiecError::TargetCountMismatch { .. })
    ));
    assert_eq!(state(&layer), before, "a bad view changed the layer");
    assert_eq!(dev.stats().launches, launches, "a bad view launched a kernel");

    // The views level: written buffers may not overlap one another.
    let dimsp = cfg.plan_input(&dims).unwrap();
    let sizes = Sizes::of(&dimsp, 3);
    let w = vec![0.1f32; 24];
    let (mut act, mut inh, mut total) = (vec![0i64; 24], vec![0i64; 24], vec![1i64; 3]);
    let (mut keep, mut v, mut logits, mut ce, mut mask) =
        (vec![0u32; sizes.keep], vec![0f32; 16], vec![0f32; 6], vec![0f32; 2], vec![0u8; 16]);
    let mut stats = vec![bytemuck::Zeroable::zeroed(); 1];
    let mut scratch = vec![0u64; sizes.scratch_bytes.div_ceil(8) + 1];
    let mut yy = vec![0.0f32; 48];
    let logits_addr = logits.as_mut_ptr() as u64;
    let mut aux = AuxMut {
        v: SliceMut::host(&dev, &mut v).unwrap(),
        logits: SliceMut::host(&dev, &mut logits).unwrap(),
        ce: SliceMut::host(&dev, &mut ce).unwrap(),
        // SAFETY: an alias of `logits` on purpose: the call must refuse it before any use.
        g: unsafe { SliceMut::from_raw(&dev, logits_addr, 6) }.unwrap(),
        mask: SliceMut::host(&dev, &mut mask).unwrap(),
        stats: SliceMut::host(&dev, &mut stats).unwrap(),
        scratch: SliceMut::host(&dev, &mut bytemuck::cast_slice_mut(&mut scratch)[..sizes.scratch_bytes])
            .unwrap(),
    };
    let mut counters = CountersMut {
        act: SliceMut::host(&dev, &mut act).unwrap(),
        inh: SliceMut::host(&dev, &mut inh).unwrap(),
        total: SliceMut::host(&dev, &mut total).unwrap(),
    };
    let e = fused::forward_train(
        &cfg,
        TrainIn {
            x: &xv,
            w: &SliceRef::host(&dev, &w).unwrap(),
            targets: &SliceRef::host(&dev, &t).unwrap(),
            check: TargetCheck::Host,
        },
        &mut counters,
        fused::Update::Now(true),
        TrainOut {
            y: &mut TensorMut::host(&dev, &mut yy, &dims).unwrap(),
            keep: &mut SliceMut::host(&dev, &mut keep).unwrap(),
            aux: &mut aux,
        },
    );
    assert!(matches!(e, Err(AiecError::Overlap { what: "logits", other: "g", .. })), "{e:?}");
    drop((aux, counters));
    assert_eq!((act, inh, total), (vec![0; 24], vec![0; 24], vec![1; 3]), "counters untouched");
    assert_eq!(dev.stats().launches, launches);

    // The scratch must be 8-byte aligned (it holds u64 counts and the targets status).
    let mut g = vec![0f32; 6];
    let (mut act, mut inh, mut total) = (vec![0i64; 24], vec![0i64; 24], vec![1i64; 3]);
    let mut aux = AuxMut {
        v: SliceMut::host(&dev, &mut v).unwrap(),
        logits: SliceMut::host(&dev, &mut logits).unwrap(),
        ce: SliceMut::host(&dev, &mut ce).unwrap(),
        g: SliceMut::host(&dev, &mut g).unwrap(),
        mask: SliceMut::host(&dev, &mut mask).unwrap(),
        stats: SliceMut::host(&dev, &mut stats).unwrap(),
        scratch: SliceMut::host(&dev, &mut bytemuck::cast_slice_mut(&mut scratch)[1..=sizes.scratch_bytes])
            .unwrap(),
    };
    let mut counters = CountersMut {
        act: SliceMut::host(&dev, &mut act).unwrap(),
        inh: SliceMut::host(&dev, &mut inh).unwrap(),
        total: SliceMut::host(&dev, &mut total).unwrap(),
    };
    let e = fused::forward_train(
        &cfg,
        TrainIn {
            x: &xv,
            w: &SliceRef::host(&dev, &w).unwrap(),
            targets: &SliceRef::host(&dev, &t).unwrap(),
            check: TargetCheck::Host,
        },
        &mut counters,
        fused::Update::Now(true),
        TrainOut {
            y: &mut TensorMut::host(&dev, &mut yy, &dims).unwrap(),
            keep: &mut SliceMut::host(&dev, &mut keep).unwrap(),
            aux: &mut aux,
        },
    );
    assert!(
        matches!(
            e,
            Err(AiecError::Misaligned { what: "forward scratch", align: aiec::layout::SCRATCH_ALIGN, .. })
        ),
        "{e:?}"
    );
    drop((aux, counters));
    assert_eq!((act, inh, total), (vec![0; 24], vec![0; 24], vec![1; 3]), "counters untouched");
    assert_eq!(dev.stats().launches, launches);

    // Backward: dx partly over dy is refused; exactly dy is in place.
    let rec = layer.forward(&xt, Some(&t)).unwrap();
    let losses = gpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
    let mut grad = vec![0.25f32; 49];
    let gbase = grad.as_mut_ptr() as u64;
    let mut dw = vec![0.0f32; 24];
    // SAFETY: both views lie inside `grad`, which outlives them.
    let (dyv, mut dxv) = unsafe {
        (
            TensorRef::from_raw(&dev, gbase, 48, DType::F32, &dims).unwrap(),
            TensorMut::from_raw(&dev, gbase + 4, 48, DType::F32, &dims).unwrap(),
        )
    };
    let e = layer.backward_into(
        &rec,
        GradsMut {
            dx: Dx::Into { dy: &dyv, dx: &mut dxv },
            dw: &mut SliceMut::host(&dev, &mut dw).unwrap(),
            mode: DwMode::Write,
        },
        &losses,
    );
    assert!(matches!(e, Err(AiecError::Overlap { what: "dx", other: "dy", .. })), "{e:?}");
    // SAFETY: dx is exactly dy: the in-place form.
    let mut same = unsafe { TensorMut::from_raw(&dev, gbase, 48, DType::F32, &dims).unwrap() };
    layer
        .backward_into(
            &rec,
            GradsMut {
                dx: Dx::Into { dy: &dyv, dx: &mut same },
                dw: &mut SliceMut::host(&dev, &mut dw).unwrap(),
                mode: DwMode::Write,
            },
            &losses,
        )
        .unwrap();
    let mut short_dw = vec![0.0f32; 23];
    let e = layer.backward_into(
        &rec,
        GradsMut {
            dx: Dx::Into { dy: &dyv, dx: &mut same },
            dw: &mut SliceMut::host(&dev, &mut short_dw).unwrap(),
            mode: DwMode::Write,
        },
        &losses,
    );
    assert!(matches!(e, Err(AiecError::LengthMismatch { what: "dW [K, C]", .. })), "{e:?}");
}

#[test]
fn devices_share_memory_by_context() {
    let (devs, _) = aiec::available_devices();
    for d in &devs {
        assert!(d.shares_memory_with(d));
    }
    #[cfg(feature = "sim")]
    assert!(Device::sim().shares_memory_with(&Device::sim()));
    // The CUDA half (two devices on one context, a caller's stream) runs in
    // scripts/device-check.sh on a GPU; here CUDA must be a typed error.
    if let Err(e) = Device::cuda(0) {
        assert!(matches!(e, AiecError::CudaUnavailable { .. }), "{e}");
    }
}

/// The update decision on the device (`Update::OnStep`, for graphs and
/// compilers): counting happens exactly on the steps where `step % interval
/// == 0`, as the host decision gives.
#[cfg(feature = "sim")]
#[test]
fn the_update_decision_can_be_made_on_the_device() {
    use aiec::gpu::fused::{self, AuxMut, CountersMut, TargetCheck, TrainIn, TrainOut, Update};
    use aiec::layout::Sizes;
    use aiec::{SliceMut, SliceRef, TensorMut, TensorRef};
    let dev = Device::sim();
    let cfg = AiecConfig::new(6, 2, 0.0, Pool::None).unwrap();
    let dims = [4usize, 6];
    let x: Vec<f32> = (0..24).map(|i| if (i / 6) % 2 == (i % 6) % 2 { 1.0 } else { -1.0 }).collect();
    let w: Vec<f32> = (0..12).map(|i| if (i / 6) == (i % 6) % 2 { 0.5 } else { -0.5 }).collect();
    let t = vec![0i64, 1, 0, 1];
    let plan = cfg.plan_input(&dims).unwrap();
    let sizes = Sizes::of(&plan, 2);
    let run = |update: &dyn for<'v, 'a> Fn(&'v SliceRef<'a, i64>) -> Update<'v, 'a>| -> Vec<i64> {
        let (mut act, mut inh, mut total) = (vec![0i64; 12], vec![0i64; 12], vec![1i64; 2]);
        let mut scratch = vec![0u64; sizes.scratch_bytes.div_ceil(8)];
        let mut totals = Vec::new();
        for s in 1..=6i64 {
            let step = [s];
            let stepv = SliceRef::host(&dev, &step).unwrap();
            let (mut y, mut keep, mut v, mut logits, mut ce, mut g, mut mask) = (
                vec![0f32; 24],
                vec![0u32; sizes.keep],
                vec![0f32; 24],
                vec![0f32; 8],
                vec![0f32; 4],
                vec![0f32; 8],
                vec![0u8; 24],
            );
            let mut stats = vec![bytemuck::Zeroable::zeroed(); 1];
            let mut aux = AuxMut {
                v: SliceMut::host(&dev, &mut v).unwrap(),
                logits: SliceMut::host(&dev, &mut logits).unwrap(),
                ce: SliceMut::host(&dev, &mut ce).unwrap(),
                g: SliceMut::host(&dev, &mut g).unwrap(),
                mask: SliceMut::host(&dev, &mut mask).unwrap(),
                stats: SliceMut::host(&dev, &mut stats).unwrap(),
                scratch: SliceMut::host(
                    &dev,
                    &mut bytemuck::cast_slice_mut(&mut scratch)[..sizes.scratch_bytes],
                )
                .unwrap(),
            };
            let mut counters = CountersMut {
                act: SliceMut::host(&dev, &mut act).unwrap(),
                inh: SliceMut::host(&dev, &mut inh).unwrap(),
                total: SliceMut::host(&dev, &mut total).unwrap(),
            };
            fused::forward_train(
                &cfg,
                TrainIn {
                    x: &TensorRef::host(&dev, &x, &dims).unwrap(),
                    w: &SliceRef::host(&dev, &w).unwrap(),
                    targets: &SliceRef::host(&dev, &t).unwrap(),
                    check: TargetCheck::Host,
                },
                &mut counters,
                update(&stepv),
                TrainOut {
                    y: &mut TensorMut::host(&dev, &mut y, &dims).unwrap(),
                    keep: &mut SliceMut::host(&dev, &mut keep).unwrap(),
                    aux: &mut aux,
                },
            )
            .unwrap();
            drop(counters);
            totals.push(total.iter().sum::<i64>());
        }
        totals
    };
    let on_device = run(&|s| Update::OnStep { step: s, interval: 3 });
    let steps = std::cell::Cell::new(0);
    let on_host = run(&|_| {
        steps.set(steps.get() + 1);
        Update::Now(steps.get() % 3 == 0)
    });
    assert_eq!(on_device, [2, 2, 6, 6, 6, 10], "every sample is correct: 4 counted on steps 3 and 6");
    assert_eq!(on_device, on_host);
}
