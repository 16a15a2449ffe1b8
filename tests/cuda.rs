//! The CUDA half of bringing your own stream and memory, which the simulator
//! cannot show: a device on the caller's cudarc stream and on a raw borrowed
//! stream, views of cudarc memory, modules shared by the devices of one
//! context, a buffer dropped on a thread with no current context, and a
//! training step captured into a CUDA graph and replayed, bitwise equal to an
//! uncaptured step. On a machine without a GPU each test instead checks that
//! CUDA is a typed error (CI sets `AIEC_EXPECT_NO_CUDA`; the GPU check sets
//! `AIEC_EXPECT_CUDA`, and then a missing GPU fails).

mod common;

use std::sync::Arc;

use aiec::cpu::LossCoefs;
use aiec::gpu::{self, DwMode, Dx, GpuLayer, GradsMut, Targets, Workspace};
use aiec::init::SplitMix64;
use aiec::{
    AiecConfig, AiecError, Buffer, DType, Device, Pool, SliceMut, SliceRef, Tensor, TensorMut, TensorRef,
};
use cudarc::driver::{sys, CudaContext, CudaStream};
use half::bf16;

/// GPU 0, or `None` after checking why not.
fn gpu() -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(
                std::env::var_os("AIEC_EXPECT_CUDA").is_none(),
                "AIEC_EXPECT_CUDA is set but CUDA is unavailable: {e}"
            );
            assert!(matches!(e, AiecError::CudaUnavailable { .. }), "not a typed CUDA error: {e}");
            println!("cuda: skipped: {e}");
            None
        }
    }
}

/// The caller's context and a stream of their own on it.
fn caller_stream(dev: &Device) -> (Arc<CudaContext>, Arc<CudaStream>) {
    let ctx = dev.cuda_stream().expect("a CUDA device").context().clone();
    let stream = ctx.new_stream().expect("a new stream");
    (ctx, stream)
}

fn inputs(n: usize, b: usize, k: usize) -> (Vec<bf16>, Vec<bf16>, Vec<i64>) {
    let mut rng = SplitMix64::new(17);
    let x = (0..n).map(|_| bf16::from_f32(rng.uniform(-1.0, 2.0) as f32)).collect();
    let dy = (0..n).map(|_| bf16::from_f32(rng.uniform(-0.1, 0.1) as f32)).collect();
    (x, dy, (0..b).map(|i| (i % k) as i64).collect())
}

/// One training step of one layer on `dev`, inputs and outputs in cudarc
/// memory of `stream`: y, dx and dW as host vectors, and the counters.
fn step_on_cudarc(
    dev: &Device,
    stream: &Arc<CudaStream>,
    cfg: AiecConfig,
    dims: &[usize],
) -> (Vec<bf16>, Vec<bf16>, Vec<f32>, aiec::Counters) {
    let n: usize = dims.iter().product();
    let (x, dy, t) = inputs(n, dims[0], cfg.classes());
    let xs = stream.clone_htod(&x).unwrap();
    let dys = stream.clone_htod(&dy).unwrap();
    let ts = stream.clone_htod(&t).unwrap();
    let mut ys = stream.alloc_zeros::<bf16>(n).unwrap();
    let mut dxs = stream.alloc_zeros::<bf16>(n).unwrap();
    let mut dws = stream.alloc_zeros::<f32>(cfg.classes() * cfg.channels()).unwrap();
    let mut layer = GpuLayer::new(dev, cfg, 3).unwrap();
    {
        let tv = SliceRef::cuda(dev, &ts).unwrap();
        let rec = layer
            .forward_into(
                &TensorRef::cuda(dev, &xs, dims).unwrap(),
                Some(Targets::Device(&tv)),
                &mut TensorMut::cuda(dev, &mut ys, dims).unwrap(),
            )
            .unwrap();
        let losses = gpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
        layer
            .backward_into(
                &rec,
                GradsMut {
                    dx: Dx::Into {
                        dy: &TensorRef::cuda(dev, &dys, dims).unwrap(),
                        dx: &mut TensorMut::cuda(dev, &mut dxs, dims).unwrap(),
                    },
                    dw: &mut SliceMut::cuda(dev, &mut dws).unwrap(),
                    mode: DwMode::Write,
                },
                &losses,
            )
            .unwrap();
    }
    dev.synchronize().unwrap();
    let counters = layer.counters().unwrap();
    (
        stream.clone_dtoh(&ys).unwrap(),
        stream.clone_dtoh(&dxs).unwrap(),
        stream.clone_dtoh(&dws).unwrap(),
        counters,
    )
}

/// The same step with the crate's own tensors on `dev`.
fn step_owned(
    dev: &Device,
    cfg: AiecConfig,
    dims: &[usize],
) -> (Vec<bf16>, Vec<bf16>, Vec<f32>, aiec::Counters) {
    let n: usize = dims.iter().product();
    let (x, dy, t) = inputs(n, dims[0], cfg.classes());
    let mut layer = GpuLayer::new(dev, cfg, 3).unwrap();
    let rec = layer.forward(&Tensor::from_slice(dev, &x, dims).unwrap(), Some(&t)).unwrap();
    let losses = gpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
    let g = layer.backward(&rec, &Tensor::from_slice(dev, &dy, dims).unwrap(), &losses).unwrap();
    (
        rec.y().unwrap().to_vec().unwrap(),
        g.dx.to_vec().unwrap(),
        g.dw.to_vec().unwrap(),
        layer.counters().unwrap(),
    )
}

#[test]
fn a_device_on_the_callers_stream_runs_on_cudarc_memory() {
    let Some(own) = gpu() else { return };
    let cfg = AiecConfig::with_interval(96, 10, 0.0, 1, Pool::Token).unwrap();
    let dims = [6, 7, 96];
    let want = step_owned(&own, cfg, &dims);
    let (_ctx, stream) = caller_stream(&own);
    let dev = Device::from_cuda_stream(stream.clone()).unwrap();
    assert!(dev.shares_memory_with(&own) && dev != own);
    let got = step_on_cudarc(&dev, &stream, cfg, &dims);
    assert!(got == want, "a step on the caller's stream and memory differs from the crate's own");
    // A raw borrowed stream (as PyTorch hands out) on the primary context.
    // SAFETY: `stream` is a live stream of GPU 0's primary context and outlives `raw`.
    let raw = unsafe { Device::from_raw_stream(0, stream.cu_stream()) }.unwrap();
    let again = step_on_cudarc(&raw, &stream, cfg, &dims);
    assert!(again == want, "a step on a raw borrowed stream differs");
}

#[test]
fn devices_of_one_context_compile_and_load_once() {
    let Some(a) = gpu() else { return };
    a.prepare(DType::BF16).unwrap();
    let loaded = a.loaded_modules();
    assert!(loaded >= 6, "{loaded} modules after prepare");
    let (_ctx, stream) = caller_stream(&a);
    let b = Device::from_cuda_stream(stream).unwrap();
    assert_eq!(b.loaded_modules(), loaded, "a second device of the context sees the loaded modules");
    b.prepare(DType::BF16).unwrap();
    assert_eq!(a.loaded_modules(), loaded, "and loads nothing again");
}

#[test]
fn a_buffer_dropped_on_a_fresh_thread_leaves_no_stale_error() {
    let Some(dev) = gpu() else { return };
    let buf = Buffer::from_slice(&dev, &[1.0f32; 1 << 20]).unwrap();
    std::thread::spawn(move || drop(buf)).join().unwrap();
    // The next launch and sync on this thread succeed, and the context has no recorded error.
    let cfg = AiecConfig::new(32, 4, 0.0, Pool::None).unwrap();
    let mut layer = GpuLayer::new(&dev, cfg, 1).unwrap();
    let x = Tensor::from_slice(&dev, &[0.5f32; 8 * 32], &[8, 32]).unwrap();
    layer.forward(&x, Some(&[0, 1, 2, 3, 0, 1, 2, 3])).unwrap();
    dev.synchronize().unwrap();
    dev.cuda_stream().unwrap().context().check_err().unwrap();
    dev.release_cached_memory().unwrap();
}

/// A two-layer step on caller outputs with device targets: capturable.
struct Step {
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
    fn new(dev: &Device) -> Step {
        let cfg = AiecConfig::with_interval(64, 10, 0.0, 1, Pool::AvgToken).unwrap();
        let dims = [16, 9, 64];
        let (x, dy, t) = inputs(16 * 9 * 64, 16, 10);
        let z = || Tensor::zeros(dev, DType::BF16, &dims).unwrap();
        Step {
            layers: [GpuLayer::new(dev, cfg, 1).unwrap(), GpuLayer::new(dev, cfg, 2).unwrap()],
            x: Tensor::from_slice(dev, &x, &dims).unwrap(),
            y: [z(), z()],
            dy: Tensor::from_slice(dev, &dy, &dims).unwrap(),
            dx: [z(), z()],
            dw: [Buffer::zeros(dev, 640).unwrap(), Buffer::zeros(dev, 640).unwrap()],
            targets: Buffer::from_slice(dev, &t).unwrap(),
            loss_ws: Workspace::new(dev),
        }
    }

    fn run(&mut self) {
        let t = self.targets.view();
        let [l0, l1] = &mut self.layers;
        let [y0, y1] = &mut self.y;
        let r0 = l0.forward_into(&self.x.view(), Some(Targets::Device(&t)), &mut y0.view_mut()).unwrap();
        let r1 = l1.forward_into(&y0.view(), Some(Targets::Device(&t)), &mut y1.view_mut()).unwrap();
        let losses = gpu::combine_in(&[&r0, &r1], LossCoefs::PAPER, &self.loss_ws).unwrap();
        let [dx0, dx1] = &mut self.dx;
        let [dw0, dw1] = &mut self.dw;
        l1.backward_into(
            &r1,
            GradsMut {
                dx: Dx::Into { dy: &self.dy.view(), dx: &mut dx1.view_mut() },
                dw: &mut dw1.view_mut(),
                mode: DwMode::Write,
            },
            &losses,
        )
        .unwrap();
        l0.backward_into(
            &r0,
            GradsMut {
                dx: Dx::Into { dy: &dx1.view(), dx: &mut dx0.view_mut() },
                dw: &mut dw0.view_mut(),
                mode: DwMode::Write,
            },
            &losses,
        )
        .unwrap();
    }

    fn outputs(&self) -> (Vec<bf16>, Vec<bf16>, Vec<f32>, Vec<f32>, aiec::Counters, aiec::Counters) {
        (
            self.y[1].to_vec().unwrap(),
            self.dx[0].to_vec().unwrap(),
            self.dw[0].to_vec().unwrap(),
            self.dw[1].to_vec().unwrap(),
            self.layers[0].counters().unwrap(),
            self.layers[1].counters().unwrap(),
        )
    }
}

#[test]
fn a_captured_step_replays_bitwise_like_an_uncaptured_one() {
    let Some(dev) = gpu() else { return };
    dev.prepare(DType::BF16).unwrap();
    // Reference: two uncaptured steps.
    let mut plain = Step::new(&dev);
    plain.run();
    plain.run();
    dev.synchronize().unwrap();
    let want = plain.outputs();
    // One warm-up step (sizes the workspaces), then capture the second and replay it.
    let mut captured = Step::new(&dev);
    captured.run();
    dev.synchronize().unwrap();
    let stream = dev.cuda_stream().unwrap().clone();
    let s0 = dev.stats();
    stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    captured.run();
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0)).unwrap().expect("a graph");
    let d = dev.stats() - s0;
    assert_eq!((d.allocations, d.host_syncs, d.host_to_device, d.device_to_host), (0, 0, 0, 0), "{d:?}");
    graph.launch().unwrap();
    dev.synchronize().unwrap();
    assert!(captured.outputs() == want, "the replayed graph differs from the uncaptured step");
}

/// Data-parallel counting through NCCL with one rank (the GPU check): the same
/// outputs and counters as the plain layer, bitwise, over update and other
/// steps. Without NCCL this is its typed error (required when the GPU check
/// found NCCL: `AIEC_EXPECT_NCCL`).
#[cfg(feature = "nccl")]
#[test]
fn a_layer_summing_its_counts_over_one_nccl_rank_is_the_plain_layer() {
    use aiec::gpu::nccl::NcclCountSum;
    let Some(dev) = gpu() else { return };
    let sum = match NcclCountSum::single(&dev) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            assert!(std::env::var_os("AIEC_EXPECT_NCCL").is_none(), "AIEC_EXPECT_NCCL is set but: {e}");
            assert!(matches!(e, AiecError::NcclUnavailable { .. }), "{e}");
            println!("nccl: skipped: {e}");
            return;
        }
    };
    let (b, tk, c, k) = (16, 9, 64, 10);
    let cfg = AiecConfig::with_interval(c, k, 0.0, 2, Pool::AvgToken).unwrap();
    let dims = [b, tk, c];
    // W favours class k on the channels c with c % K == k, and x is positive there
    // for the samples of class k: most samples are classified correctly and counted.
    let w: Vec<f32> = (0..k * c).map(|i| if (i % c) % k == i / c { 0.4 } else { -0.3 }).collect();
    let mut plain = GpuLayer::with_weights(&dev, cfg, &w).unwrap();
    let mut summed = GpuLayer::with_weights(&dev, cfg, &w).unwrap();
    summed.set_count_sum(Some(sum));
    let mut rng = SplitMix64::new(8);
    for step in 0..4u64 {
        let t: Vec<i64> = (0..b).map(|i| ((i as u64 + step) % k as u64) as i64).collect();
        let x: Vec<bf16> = (0..b * tk * c)
            .map(|i| {
                let (bi, ci) = (i / (tk * c), i % c);
                let on = ci % k == t[bi] as usize;
                bf16::from_f32(if on {
                    0.5 + rng.uniform(0.0, 1.0) as f32
                } else {
                    rng.uniform(-1.0, 0.3) as f32
                })
            })
            .collect();
        let xt = Tensor::from_slice(&dev, &x, &dims).unwrap();
        let a = plain.forward(&xt, Some(&t)).unwrap();
        let b = summed.forward(&xt, Some(&t)).unwrap();
        let (aa, ba) = (a.aux.as_ref().unwrap(), b.aux.as_ref().unwrap());
        assert_eq!(aa.mask.to_vec().unwrap(), ba.mask.to_vec().unwrap(), "step {step} mask");
        assert_eq!(aa.logits.to_vec().unwrap(), ba.logits.to_vec().unwrap(), "step {step} logits");
        assert_eq!(plain.counters().unwrap(), summed.counters().unwrap(), "step {step} counters");
        // The gate normalised over the ranks (the count all-reduced through NCCL, W = 1).
        let (la, lb) =
            (gpu::combine(&[&a], LossCoefs::PAPER).unwrap(), gpu::combine(&[&b], LossCoefs::PAPER).unwrap());
        let (ra, rb) = (la.read().unwrap(), lb.read().unwrap());
        let bits = |l: &aiec::cpu::Losses<f32>| {
            (
                l.aux.to_bits(),
                l.gate.to_bits(),
                l.gate_count,
                l.scales.aux_scale.to_bits(),
                l.scales.gate_scale.to_bits(),
            )
        };
        assert_eq!(bits(&ra), bits(&rb), "step {step} losses");
        assert!(ra.gate_count > 0, "step {step}: the gate masked nothing");
        let dy = Tensor::from_slice(&dev, &vec![bf16::from_f32(0.25); dims.iter().product()], &dims).unwrap();
        let (ga, gb) = (plain.backward(&a, &dy, &la).unwrap(), summed.backward(&b, &dy, &lb).unwrap());
        assert_eq!(ga.dx.to_vec::<bf16>().unwrap(), gb.dx.to_vec::<bf16>().unwrap(), "step {step} dx");
        assert_eq!(ga.dw.to_vec().unwrap(), gb.dw.to_vec().unwrap(), "step {step} dW");
    }
    assert!(plain.counters().unwrap().total.iter().any(|&t| t > 1), "nothing was counted");
}
