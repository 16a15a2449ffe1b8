//! Data-parallel counting on a device (`aiec::gpu::dp`): with a `CountSum`,
//! an update step counts into increments, sums them (as i32) over the ranks, adds them
//! into the counters and only then builds the gate. On the simulator a test
//! sum stands for `W` ranks that saw the same samples, so every rank must hold
//! what one process holds with the batch repeated `W` times. The `nccl`
//! feature without NCCL (and without CUDA) is a typed error; its CUDA half
//! runs in the GPU check (tests/cuda.rs).
#![cfg(feature = "sim")]

mod common;

use std::sync::Arc;

use aiec::gpu::dp::CountSum;
use aiec::gpu::{GpuLayer, Targets};
use aiec::init::SplitMix64;
use aiec::{AiecConfig, DType, Device, DeviceKind, Pool, SliceMut, Tensor};

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
                if update { 5 } else { 3 },
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

/// Without a sum, a training step on device targets and the caller's `y` stays three launches.
#[test]
fn without_a_sum_an_update_step_is_three_launches() {
    let dev = Device::sim();
    let cfg = AiecConfig::with_interval(16, 3, 0.0, 1, Pool::None).unwrap();
    let mut layer = GpuLayer::with_weights(&dev, cfg, &weights(16, 3)).unwrap();
    let (x, t) = batch(1, 5, 16, 3);
    let xt = Tensor::from_slice(&dev, &x, &[5, 16]).unwrap();
    let tb = aiec::Buffer::from_slice(&dev, &t).unwrap();
    let mut y = Tensor::zeros(&dev, DType::F32, &[5, 16]).unwrap();
    let s0 = dev.stats();
    layer.forward_into(&xt.view(), Some(Targets::Device(&tb.view())), &mut y.view_mut()).unwrap();
    assert_eq!((dev.stats() - s0).launches, 3);
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
