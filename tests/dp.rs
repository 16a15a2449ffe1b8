//! Data-parallel counting on a device (`aiec::gpu::dp`): with a `CountSum`,
//! an update step counts into increments, sums them (as i32) over the ranks, adds them
//! into the counters and only then builds the gate. On the simulator a test
//! sum stands for `W` ranks that saw the same samples, so every rank must hold
//! what one process holds with the batch repeated `W` times. The `nccl`
//! feature without NCCL (and without CUDA) is a typed error; its CUDA half
//! runs in the GPU check (tests/cuda.rs).
#![cfg(feature = "sim")]

mod common;

use std::sync::{Arc, Barrier, Mutex};

use aiec::cpu::LossCoefs;
use aiec::gpu::dp::CountSum;
use aiec::gpu::{self, GpuLayer, Targets};
use aiec::init::SplitMix64;
use aiec::{AiecConfig, Counters, DType, Device, DeviceKind, Pool, SliceMut, Tensor};

/// `W` ranks that saw the same samples: the sum is `W` times the counts.
#[derive(Debug)]
struct Identical(usize);

impl CountSum for Identical {
    fn sum_in_place(&self, counts: &mut SliceMut<i32>) -> aiec::Result<()> {
        assert_eq!(counts.device().kind(), DeviceKind::Sim, "a test sum for host memory");
        counts.device().synchronize()?;
        // SAFETY: on the simulator a device address is a host address; `counts`
        // is borrowed mutably and no kernel runs (launches are synchronous).
        let s = unsafe { std::slice::from_raw_parts_mut(counts.address() as *mut i32, counts.len()) };
        for v in s {
            *v *= self.0 as i32;
        }
        Ok(())
    }
    fn world_size(&self) -> usize {
        self.0
    }
}

/// `W` ranks as `W` threads, each with a device of its own: an all-reduce
/// through host memory (on the simulator a device address is a host address).
#[derive(Debug)]
struct Threads {
    world: usize,
    barrier: Barrier,
    acc: Mutex<Vec<i64>>,
}

impl Threads {
    fn new(world: usize) -> Self {
        Threads { world, barrier: Barrier::new(world), acc: Mutex::new(Vec::new()) }
    }
}

impl CountSum for Threads {
    fn sum_in_place(&self, counts: &mut SliceMut<i32>) -> aiec::Result<()> {
        assert_eq!(counts.device().kind(), DeviceKind::Sim, "a test sum for host memory");
        counts.device().synchronize()?;
        // SAFETY: as Identical's; the other ranks touch only their own buffers.
        let s = unsafe { std::slice::from_raw_parts_mut(counts.address() as *mut i32, counts.len()) };
        {
            let mut acc = self.acc.lock().unwrap();
            acc.resize(s.len(), 0);
            for (a, v) in acc.iter_mut().zip(s.iter()) {
                *a += i64::from(*v);
            }
        }
        self.barrier.wait();
        for (v, a) in s.iter_mut().zip(self.acc.lock().unwrap().iter()) {
            *v = i32::try_from(*a).expect("the test's sums fit an i32");
        }
        if self.barrier.wait().is_leader() {
            self.acc.lock().unwrap().clear();
        }
        self.barrier.wait();
        Ok(())
    }
    fn world_size(&self) -> usize {
        self.world
    }
}

fn batch(seed: u64, b: usize, c: usize, k: usize) -> (Vec<f32>, Vec<i64>) {
    let mut rng = SplitMix64::new(seed);
    // Targets 0..k cycling; x positive on the channels that W favours for that class.
    let t: Vec<i64> = (0..b).map(|i| (i % k) as i64).collect();
    let x = (0..b * c)
        .map(|i| {
            let (bi, ci) = (i / c, i % c);
            if ci % k == bi % k {
                0.5 + rng.uniform(0.0, 1.0) as f32
            } else {
                rng.uniform(-1.0, 0.3) as f32
            }
        })
        .collect();
    (x, t)
}

fn weights(c: usize, k: usize) -> Vec<f32> {
    (0..k * c).map(|i| if (i % c) % k == i / c { 0.4 } else { -0.3 }).collect()
}

#[test]
fn every_rank_holds_the_counters_of_the_whole_batch() {
    let dev = Device::sim();
    let (c, k, b) = (24, 3, 6);
    let cfg = AiecConfig::with_interval(c, k, 0.0, 2, Pool::None).unwrap();
    for world in [2usize, 3] {
        let mut rank = GpuLayer::with_weights(&dev, cfg, &weights(c, k)).unwrap();
        rank.set_count_sum(Some(Arc::new(Identical(world))));
        let mut whole = GpuLayer::with_weights(&dev, cfg, &weights(c, k)).unwrap();
        let mut counted = 0;
        for step in 0..5u64 {
            let (x, t) = batch(step, b, c, k);
            let (xw, tw): (Vec<f32>, Vec<i64>) = (
                x.iter().copied().cycle().take(x.len() * world).collect(),
                t.iter().copied().cycle().take(b * world).collect(),
            );
            let s0 = dev.stats();
            let r = rank.forward(&Tensor::from_slice(&dev, &x, &[b, c]).unwrap(), Some(&t)).unwrap();
            let launches = (dev.stats() - s0).launches;
            let w =
                whole.forward(&Tensor::from_slice(&dev, &xw, &[b * world, c]).unwrap(), Some(&tw)).unwrap();
            let update = (step + 1) % 2 == 0;
            assert_eq!(
                launches,
                if update { 6 } else { 4 },
                "step {step}: narrowing and adding the sums are two launches more on update steps"
            );
            assert_eq!(rank.counters().unwrap(), whole.counters().unwrap(), "world {world} step {step}");
            let (rm, wm) = (r.aux.unwrap().mask.to_vec().unwrap(), w.aux.unwrap().mask.to_vec().unwrap());
            assert_eq!(rm, wm[..b * c], "world {world} step {step}: the rank's masks are the whole batch's");
            counted = whole.counters().unwrap().total.iter().map(|v| v - 1).sum::<i64>();
        }
        assert!(counted > 0, "nothing was counted: the comparison proves little");
    }
}

/// What one training step left: counters, masks, losses (aux, gate, count, this rank's `N`), `dx`, `dW`.
struct Step {
    counters: Counters,
    mask: Vec<u8>,
    aux: f32,
    gate: f32,
    count: u64,
    local_count: u64,
    dx: Vec<f32>,
    dw: Vec<f32>,
}

fn train_step(layer: &mut GpuLayer, dev: &Device, x: &[f32], t: &[i64], dy: &[f32], c: usize) -> Step {
    let b = t.len();
    let rec = layer.forward(&Tensor::from_slice(dev, x, &[b, c]).unwrap(), Some(t)).unwrap();
    let losses = gpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
    let g = layer.backward(&rec, &Tensor::from_slice(dev, dy, &[b, c]).unwrap(), &losses).unwrap();
    let l = losses.read().unwrap();
    let aux = rec.aux.as_ref().unwrap();
    Step {
        counters: layer.counters().unwrap(),
        mask: aux.mask.to_vec().unwrap(),
        aux: l.aux,
        gate: l.gate,
        count: l.gate_count,
        local_count: aux.stats.to_vec().unwrap()[0].count,
        dx: g.dx.to_vec().unwrap(),
        dw: g.dw.to_vec().unwrap(),
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `W` ranks (threads), each with its slice of a batch whose classes are spread
/// unevenly, train as one process with the whole batch does when data-parallel
/// training averages their gradients: the same counters and masks; the masked
/// count `N` of all ranks; the mean of the ranks' aux and gate losses and of
/// their `dW` the whole batch's; each rank's `dx` `W` times the whole batch's
/// rows of it (its loss is a mean over `1/W` of the samples).
#[test]
fn ranks_train_as_one_process_with_the_whole_batch() {
    let (c, k, b, steps) = (24, 3, 5, 4u64);
    let cfg = AiecConfig::with_interval(c, k, 0.0, 2, Pool::None).unwrap();
    for world in [2usize, 3] {
        let rows = world * b;
        let data: Vec<(Vec<f32>, Vec<i64>, Vec<f32>)> = (0..steps)
            .map(|step| {
                let (x, _) = batch(100 + step, rows, c, k);
                let mut rng = SplitMix64::new(7 + step);
                let t = (0..rows)
                    .map(|_| (rng.uniform(0.0, 1.0) * k as f64).min(k as f64 - 1.0) as i64)
                    .collect();
                let dy = (0..rows * c).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
                (x, t, dy)
            })
            .collect();
        let sum = Arc::new(Threads::new(world));
        let ranks: Vec<Vec<Step>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..world)
                .map(|r| {
                    let (sum, data) = (sum.clone(), &data);
                    scope.spawn(move || {
                        let dev = Device::sim();
                        let mut layer = GpuLayer::with_weights(&dev, cfg, &weights(c, k)).unwrap();
                        layer.set_count_sum(Some(sum));
                        data.iter()
                            .map(|(x, t, dy)| {
                                let dy: Vec<f32> =
                                    dy[r * b * c..(r + 1) * b * c].iter().map(|v| v * world as f32).collect();
                                let x = &x[r * b * c..(r + 1) * b * c];
                                let s0 = dev.stats();
                                let step = train_step(&mut layer, &dev, x, &t[r * b..(r + 1) * b], &dy, c);
                                let launches = (dev.stats() - s0).launches;
                                (step, launches)
                            })
                            .map(|(step, launches)| {
                                // forward 4 (6 on update steps), losses 2, backward 2
                                assert!(launches == 8 || launches == 10, "rank {r}: {launches} launches");
                                step
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let dev = Device::sim();
        let mut whole = GpuLayer::with_weights(&dev, cfg, &weights(c, k)).unwrap();
        let mut counts_differ = false;
        for (i, (x, t, dy)) in data.iter().enumerate() {
            let w = train_step(&mut whole, &dev, x, t, dy, c);
            let at = format!("world {world} step {i}");
            let mean = |f: &dyn Fn(&Step) -> f32| {
                ranks.iter().map(|r| f64::from(f(&r[i]))).sum::<f64>() / world as f64
            };
            for (r, rank) in ranks.iter().enumerate() {
                let s = &rank[i];
                assert_eq!(s.counters, w.counters, "{at} rank {r}: counters");
                assert_eq!(s.mask, w.mask[r * b * c..(r + 1) * b * c], "{at} rank {r}: masks");
                assert_eq!(s.count, w.count, "{at} rank {r}: N is the whole batch's");
                counts_differ |= s.local_count * world as u64 != w.count;
                let dx: Vec<f64> = s.dx.iter().map(|&v| f64::from(v) / world as f64).collect();
                common::compare::close(
                    &format!("{at} rank {r}: dx / W"),
                    &dx,
                    &f64s(&w.dx[r * b * c..(r + 1) * b * c]),
                    1e-5,
                )
                .unwrap();
            }
            common::compare::close(
                &format!("{at}: mean aux"),
                &[mean(&|s| s.aux)],
                &[f64::from(w.aux)],
                1e-5,
            )
            .unwrap();
            common::compare::close(
                &format!("{at}: mean gate"),
                &[mean(&|s| s.gate)],
                &[f64::from(w.gate)],
                1e-5,
            )
            .unwrap();
            let dw: Vec<f64> = (0..k * c)
                .map(|j| ranks.iter().map(|r| f64::from(r[i].dw[j])).sum::<f64>() / world as f64)
                .collect();
            common::compare::close(&format!("{at}: mean dW"), &dw, &f64s(&w.dw), 1e-5).unwrap();
            assert!(
                w.count > 0 && w.gate > 0.0,
                "{at}: the gate masked nothing: the comparison proves little"
            );
        }
        assert!(
            counts_differ,
            "world {world}: the ranks' own N never differed from N / W: the test proves little"
        );
    }
}

/// The views level: each rank's count goes as `(n >> 20, n & 0xFFFFF)`, so a
/// count beyond 32 bits sums exactly; `gate` and `gate_scale` are `W` times
/// this rank's share of the whole count, bit for bit as the kernel's formula.
#[test]
fn the_gate_count_of_the_ranks_is_exact_beyond_32_bits() {
    use aiec::gpu::dp::combine_over_ranks;
    use aiec::gpu::fused::LayerLoss;
    use aiec::params::{AiecGateStats, AiecLosses};
    use aiec::SliceRef;
    let dev = Device::sim();
    let n = (5u64 << 32) + (3 << 20) + 12_345;
    let ce = [0.5f32, 1.5];
    let s0 = [AiecGateStats { sum_sq: 6.0, pad0: 0, count: n }];
    let s1 = [AiecGateStats { sum_sq: 2.0, pad0: 0, count: 7 }];
    let layers = [
        LayerLoss { ce: SliceRef::host(&dev, &ce).unwrap(), stats: SliceRef::host(&dev, &s0).unwrap() },
        LayerLoss { ce: SliceRef::host(&dev, &ce).unwrap(), stats: SliceRef::host(&dev, &s1).unwrap() },
    ];
    let (mut count, mut out) = ([-1i32; 2], [<AiecLosses as bytemuck::Zeroable>::zeroed()]);
    let before = dev.stats();
    combine_over_ranks(
        &layers,
        2,
        LossCoefs::PAPER,
        &Identical(3),
        &mut SliceMut::host(&dev, &mut count).unwrap(),
        &mut SliceMut::host(&dev, &mut out).unwrap(),
    )
    .unwrap();
    assert_eq!((dev.stats() - before).launches, 2);
    let local = n + 7;
    assert_eq!(count, [3 * (local >> 20) as i32, 3 * (local & 0xF_FFFF) as i32]);
    let (l, fcount) = (out[0], (3 * local) as f32);
    assert_eq!(l.count, 3 * local);
    assert_eq!(l.sum_sq, 8.0);
    assert_eq!(l.gate.to_bits(), (3.0f32 * 8.0 / fcount).to_bits());
    assert_eq!(
        l.gate_scale.to_bits(),
        ((2.0f32 * LossCoefs::PAPER.gate_coef as f32) * 3.0 / fcount).to_bits()
    );
    assert_eq!(l.aux, 1.0);
}

/// More ranks than the gate's count exchange can sum: a typed error before anything runs.
#[test]
fn a_gate_count_over_too_many_ranks_is_refused() {
    let dev = Device::sim();
    let (c, k, b) = (8, 2, 3);
    let cfg = AiecConfig::with_interval(c, k, 0.0, 1, Pool::None).unwrap();
    let mut layer = GpuLayer::with_weights(&dev, cfg, &weights(c, k)).unwrap();
    let mut plain = GpuLayer::with_weights(&dev, cfg, &weights(c, k)).unwrap();
    layer.set_count_sum(Some(Arc::new(Identical(aiec::gpu::dp::MAX_GATE_RANKS + 1))));
    let (x, t) = batch(3, b, c, k);
    let xt = Tensor::from_slice(&dev, &x, &[b, c]).unwrap();
    let rec = layer.forward(&xt, Some(&t)).unwrap();
    let s0 = dev.stats();
    let e = gpu::combine(&[&rec], LossCoefs::PAPER).expect_err("2048 ranks");
    assert!(matches!(e, aiec::AiecError::Unsupported { .. }) && e.to_string().contains("2048 ranks"), "{e}");
    assert_eq!((dev.stats() - s0).launches, 0);
    // Records of a summing layer and a plain one do not combine.
    let other = plain.forward(&xt, Some(&t)).unwrap();
    let e = gpu::combine(&[&other, &rec], LossCoefs::PAPER).expect_err("mixed layers");
    assert!(
        matches!(e, aiec::AiecError::LayerMismatch { layer: 1, .. }) && e.to_string().contains("2048 ranks"),
        "{e}"
    );
}

/// More samples than the i32 exchange can count is a typed error before
/// anything runs: counters, step and launches unchanged.
#[test]
fn a_sum_too_large_for_i32_is_refused() {
    let dev = Device::sim();
    let (c, k, b) = (8, 2, 3);
    let cfg = AiecConfig::with_interval(c, k, 0.0, 1, Pool::None).unwrap();
    let mut layer = GpuLayer::with_weights(&dev, cfg, &weights(c, k)).unwrap();
    layer.set_count_sum(Some(Arc::new(Identical(1 << 30))));
    let (x, t) = batch(3, b, c, k);
    let xt = Tensor::from_slice(&dev, &x, &[b, c]).unwrap();
    let (before, step, s0) = (layer.counters().unwrap(), layer.step(), dev.stats());
    let e = layer.forward(&xt, Some(&t)).expect_err("3 * 2^30 samples do not fit an i32");
    assert!(
        matches!(e, aiec::AiecError::Unsupported { .. }) && e.to_string().contains("1073741824 ranks"),
        "{e}"
    );
    assert_eq!((dev.stats() - s0).launches, 0);
    assert_eq!((layer.counters().unwrap(), layer.step()), (before, step));
}

/// Without a sum, a training step on device targets and the caller's `y` stays four launches.
#[test]
fn without_a_sum_an_update_step_is_four_launches() {
    let dev = Device::sim();
    let cfg = AiecConfig::with_interval(16, 3, 0.0, 1, Pool::None).unwrap();
    let mut layer = GpuLayer::with_weights(&dev, cfg, &weights(16, 3)).unwrap();
    let (x, t) = batch(1, 5, 16, 3);
    let xt = Tensor::from_slice(&dev, &x, &[5, 16]).unwrap();
    let tb = aiec::Buffer::from_slice(&dev, &t).unwrap();
    let mut y = Tensor::zeros(&dev, DType::F32, &[5, 16]).unwrap();
    let s0 = dev.stats();
    layer.forward_into(&xt.view(), Some(Targets::Device(&tb.view())), &mut y.view_mut()).unwrap();
    assert_eq!((dev.stats() - s0).launches, 4);
}

#[cfg(feature = "nccl")]
#[test]
fn nccl_without_nccl_or_cuda_is_a_typed_error() {
    use aiec::gpu::nccl::{nccl_present, NcclCountSum};
    use aiec::AiecError;
    let e = NcclCountSum::single(&Device::sim()).err().expect("the simulator has no NCCL");
    assert!(matches!(e, AiecError::NcclUnavailable { .. }), "{e}");
    if !nccl_present() {
        let e = NcclCountSum::new_id().expect_err("no NCCL here");
        assert!(
            matches!(e, AiecError::NcclUnavailable { .. }) && e.to_string().contains("libnccl.so"),
            "{e}"
        );
        println!("nccl: not present here ({e})");
    }
}
