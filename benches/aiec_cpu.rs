//! Criterion benches of the CPU reference (forward + backward of one layer).
//! The reference is written for clarity, not speed: these numbers are a floor
//! that the kernels are compared with, not a target.

use aiec::cpu::gradcheck::{random_case, CaseShape};
use aiec::cpu::{backward, combine, forward, LossCoefs};
use aiec::{AiecConfig, Pool};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_cpu(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("cpu_f64");
    // A small ViT-like shape: B=32, T=17, C=192, K=100, token pooling.
    for pool in [Pool::Token, Pool::AvgToken] {
        let cfg = AiecConfig::with_interval(192, 100, 0.0, 1, pool).expect("valid config");
        let shape = CaseShape { batch: 32, channels: 192, classes: 100, positions: 17, layers: 1 };
        let case = random_case(1, cfg, shape, LossCoefs::PAPER, true);
        let l = &case.layers[0];
        // x read + y written (forward), dy read + dx written (backward).
        let bytes = (l.x.len() * std::mem::size_of::<f64>() * 2) as u64;
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(format!("forward/{pool}"), |b| {
            b.iter(|| {
                let mut counters = l.counters.clone();
                forward(&cfg, &l.x, &case.dims, &l.w, Some(&case.targets), &mut counters, true)
                    .expect("forward")
            })
        });
        let mut counters = l.counters.clone();
        let rec =
            forward(&cfg, &l.x, &case.dims, &l.w, Some(&case.targets), &mut counters, true).expect("forward");
        let losses = combine(&[&rec], case.coefs).expect("combine");
        group.bench_function(format!("backward/{pool}"), |b| {
            b.iter(|| backward(&cfg, &rec, &l.w, &l.dy, &losses.scales).expect("backward"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_cpu);
criterion_main!(benches);
