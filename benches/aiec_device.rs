//! Criterion benches of the fused AIEC step on a device: CUDA GPU 0 when
//! present (ViT-Tiny preset), and the simulator at a tiny shape so the bench
//! runs everywhere. Inputs come from the tests' builder
//! (`aiec::cpu::gradcheck::random_case`); each iteration synchronises the
//! device before the clock is read. Throughput: the activation passes' bytes.

use aiec::cpu::gradcheck::{random_case, CaseShape};
use aiec::cpu::LossCoefs;
use aiec::gpu::{self, GpuLayer};
use aiec::{AiecConfig, Device, DeviceKind, Pool, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;

fn bench_step(cr: &mut Criterion, dev: &Device, b: usize, t: usize, c: usize, k: usize) {
    let cfg = AiecConfig::with_interval(c, k, 0.0, 1, Pool::Token).expect("valid config");
    let case = random_case(
        1,
        cfg,
        CaseShape { batch: b, channels: c, classes: k, positions: t, layers: 1 },
        LossCoefs::PAPER,
        true,
    );
    let l = &case.layers[0];
    let cast = |v: &[f64]| v.iter().map(|&a| bf16::from_f64(a)).collect::<Vec<_>>();
    let x = Tensor::from_slice(dev, &cast(&l.x), &case.dims).expect("upload");
    let dy = Tensor::from_slice(dev, &cast(&l.dy), &case.dims).expect("upload");
    let mut layer = GpuLayer::new(dev, cfg, 1).expect("layer");
    let n = (b * t * c) as u64;
    let kind = if dev.kind() == DeviceKind::Cuda { "cuda" } else { "sim" };
    let mut group = cr.benchmark_group(format!("{kind}_bf16_B{b}_T{t}_C{c}_K{k}"));
    group.throughput(Throughput::Bytes(2 * (4 * n + n / 8)));
    group.bench_function("forward", |bn| {
        bn.iter(|| {
            let r = layer.forward(&x, Some(&case.targets)).expect("forward");
            dev.synchronize().expect("sync");
            r
        })
    });
    let rec = layer.forward(&x, Some(&case.targets)).expect("forward");
    let losses = gpu::combine(&[&rec], case.coefs).expect("combine");
    group.bench_function("backward", |bn| {
        bn.iter(|| {
            let g = layer.backward(&rec, &dy, &losses).expect("backward");
            dev.synchronize().expect("sync");
            g
        })
    });
    group.finish();
}

fn bench_devices(cr: &mut Criterion) {
    let (devices, why) = aiec::available_devices();
    if let Some(e) = why {
        println!("cuda benches skipped: {e}");
    }
    for dev in &devices {
        match dev.kind() {
            DeviceKind::Cuda => bench_step(cr, dev, 256, 65, 768, 100),
            DeviceKind::Sim => bench_step(cr, dev, 4, 9, 64, 10),
        }
    }
}

criterion_group!(benches, bench_devices);
criterion_main!(benches);
