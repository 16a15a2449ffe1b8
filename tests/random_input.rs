//! Random sizes (zero, small and huge), wrong-length vectors, edited records and
//! loss scales of other combines, thrown at the public Rust entry points by a
//! seeded loop: none may panic or abort, and a call that returns an error must
//! leave the layer's weights, counters and step as they were.
//!
//! "Huge" sizes are at least 2^46 elements, so that any buffer of them is past
//! what a 64-bit process can address (47 bits of user space) and its allocation
//! fails whatever the kernel's overcommit setting: a typed error, never a
//! process-killing allocation.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use aiec::cpu::{self, AiecLayer, ForwardRecord, LossCoefs, LossScales};
use aiec::gpu::{self, GpuLayer, GpuRecord};
use aiec::init::SplitMix64;
use aiec::{AiecConfig, AiecError, Counters, DType, Device, Pool, Tensor};
use common::devices::devices;

/// Runs `f`, failing the test with `what` if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("panicked: {what}"))
}

/// A random draw of the loop: `below(n)` in `0..n`.
struct Draw(SplitMix64);

impl Draw {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    /// Mostly 1 to 5; sometimes 0, a huge size, or next to `usize::MAX`.
    fn size(&mut self) -> usize {
        match self.below(10) {
            0 => 0,
            1 => 1 << (46 + self.below(17)),
            2 => usize::MAX - self.below(3) as usize,
            _ => 1 + self.below(5) as usize,
        }
    }
    /// A shape of rank 0 to 4 of [`Draw::size`]s.
    fn shape(&mut self) -> Vec<usize> {
        (0..self.below(5)).map(|_| self.size()).collect()
    }
    fn pool(&mut self) -> Pool {
        Pool::ALL[self.below(4) as usize]
    }
    fn tau(&mut self) -> f64 {
        [0.0, 0.25, -1.0, f64::NAN, f64::INFINITY, 1e39, 3.5e38, f32::MAX as f64][self.below(8) as usize]
    }
    /// Targets: usually in `0..classes`, sometimes out of range; `b` of them,
    /// sometimes one more or one less.
    fn targets(&mut self, b: usize, classes: usize) -> Vec<i64> {
        let n = match self.below(8) {
            0 => b + 1,
            1 => b.saturating_sub(1),
            _ => b,
        };
        (0..n)
            .map(|_| match self.below(16) {
                0 => classes as i64,
                1 => -1,
                _ => self.below(classes as u64) as i64,
            })
            .collect()
    }
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.0.uniform(-1.0, 2.0) as f32).collect()
    }
    /// An input shape for `cfg`: usually valid (a small batch, maybe 0),
    /// otherwise random.
    fn dims(&mut self, cfg: &AiecConfig) -> Vec<usize> {
        if self.chance(3) {
            return self.shape();
        }
        let (b, p) = (self.below(4) as usize, 1 + self.below(3) as usize);
        cpu::gradcheck::dims_for(cfg.pool(), b, cfg.channels(), p)
    }
    /// Counters for a layer of `K`, `C`: of another size, or edited to wrong lengths.
    fn counters(&mut self, classes: usize, channels: usize) -> Counters {
        let (k, c) = match self.below(4) {
            0 => (1 + self.below(5) as usize, 1 + self.below(5) as usize),
            _ => (classes, channels),
        };
        let mut out = Counters::new(k, c);
        match self.below(5) {
            0 => out.act.truncate(self.below(k as u64 * c as u64) as usize),
            1 => out.inh.push(1),
            2 => out.total.clear(),
            3 => out.total.push(1),
            _ => {}
        }
        out
    }
}

/// The whole state of a CPU layer.
fn cpu_state(l: &AiecLayer<f32>) -> (Vec<f32>, Counters, u64) {
    (l.weights().to_vec(), l.counters().clone(), l.step())
}

/// A configuration from random sizes: checked against what `AiecConfig` promises.
fn random_config(d: &mut Draw) -> Option<AiecConfig> {
    let (c, k, tau, pool) = (d.size(), d.size(), d.tau(), d.pool());
    let cfg = no_panic("AiecConfig::new", || AiecConfig::with_interval(c, k, tau, 1 + d.below(3), pool));
    let fits = c.checked_mul(k).and_then(|n| n.checked_mul(8)).is_some_and(|b| b <= isize::MAX as usize);
    let valid = c > 0 && k > 0 && fits && tau >= 0.0 && (tau as f32).is_finite();
    assert_eq!(cfg.is_ok(), valid, "C = {c}, K = {k}, tau = {tau}: {cfg:?}");
    cfg.ok()
}

/// Edits a record's public fields so that it no longer fits its layer.
fn spoil(d: &mut Draw, rec: &mut ForwardRecord<f32>) {
    match (d.below(6), rec.aux.as_mut()) {
        (0, _) => {
            rec.keep.pop();
        }
        (1, _) => rec.dims.batch += 1,
        (2, Some(a)) => {
            a.logits.pop();
        }
        (3, Some(a)) => a.targets.iter_mut().for_each(|t| *t = a.classes),
        (4, Some(a)) => a.classes += 1,
        (_, Some(a)) => {
            a.v.pop();
        }
        _ => {}
    }
}

/// One random call on a CPU layer (or the op level on its state), checking
/// that it does not panic and that an error changes nothing.
fn cpu_call(d: &mut Draw, l: &mut AiecLayer<f32>, records: &mut Vec<ForwardRecord<f32>>) {
    let cfg = *l.config();
    let before = cpu_state(l);
    let err: Option<AiecError> = match d.below(6) {
        0 => {
            let c = d.counters(cfg.classes(), cfg.channels());
            no_panic("set_counters", || l.set_counters(c)).err()
        }
        1 => {
            let n = if d.chance(2) { before.0.len() } else { d.size().min(64) };
            let w = d.values(n);
            no_panic("set_weights", || l.set_weights(&w)).err()
        }
        2 => {
            // The op level, on counters that may be broken: they are unchanged on error.
            let mut c = d.counters(cfg.classes(), cfg.channels());
            let (dims, kept) = (d.dims(&cfg), c.clone());
            let n = dims.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).unwrap_or(7).min(4096);
            let (x, t) = (d.values(n), d.targets(dims.first().copied().unwrap_or(0).min(8), cfg.classes()));
            let r = no_panic("cpu::forward", || {
                cpu::forward(&cfg, &x, &dims, l.weights(), Some(&t), &mut c, true)
            });
            if r.is_err() {
                assert_eq!(c, kept, "cpu::forward changed the counters it refused");
            }
            None
        }
        3 => {
            let dims = d.dims(&cfg);
            let n = dims.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).unwrap_or(7).min(4096);
            let extra = d.chance(8) as usize;
            let x = d.values(n + extra);
            let t = d.targets(dims.first().copied().unwrap_or(0).min(8), cfg.classes());
            let with_targets = !d.chance(4);
            let r = no_panic("forward", || l.forward(&x, &dims, with_targets.then_some(t.as_slice())));
            match r {
                Ok(rec) => {
                    records.push(rec);
                    return;
                }
                Err(e) => Some(e),
            }
        }
        4 if !records.is_empty() => {
            let mut rec = records[d.below(records.len() as u64) as usize].clone();
            if d.chance(4) {
                spoil(d, &mut rec);
            }
            let scales = combine_some(d, records).map_or_else(LossScales::zero, |l| l.scales);
            let extra = d.chance(6) as usize;
            let dy = d.values(rec.keep.len() + extra);
            no_panic("backward", || l.backward(&rec, &dy, &scales)).err()
        }
        _ => {
            combine_some(d, records);
            None
        }
    };
    if let Some(e) = err {
        assert!(!e.to_string().is_empty());
        assert_eq!(cpu_state(l), before, "state changed after {e}");
    }
}

/// `cpu::combine` of a random choice of `records` (maybe none, maybe spoiled).
fn combine_some(d: &mut Draw, records: &[ForwardRecord<f32>]) -> Option<cpu::Losses<f32>> {
    let mut chosen: Vec<ForwardRecord<f32>> = (0..d.below(3))
        .filter_map(|_| records.get(d.below(records.len().max(1) as u64) as usize).cloned())
        .collect();
    if d.chance(6) {
        if let Some(r) = chosen.first_mut() {
            spoil(d, r);
        }
    }
    let refs: Vec<&ForwardRecord<f32>> = chosen.iter().collect();
    no_panic("cpu::combine", || cpu::combine(&refs, LossCoefs::PAPER)).ok()
}

#[test]
fn random_sizes_and_vectors_never_panic_the_cpu_reference() {
    let mut d = Draw(SplitMix64::new(2024));
    let (mut layers, mut calls) = (0, 0);
    for _ in 0..400 {
        let Some(cfg) = random_config(&mut d) else { continue };
        let seed = d.below(100);
        let Ok(mut l) = no_panic("AiecLayer::new", || AiecLayer::<f32>::new(cfg, seed)) else {
            assert!(cfg.classes() * cfg.channels() >= 1 << 46, "a small layer failed: {cfg:?}");
            continue;
        };
        layers += 1;
        let mut records = Vec::new();
        for _ in 0..20 {
            cpu_call(&mut d, &mut l, &mut records);
            calls += 1;
        }
    }
    assert!(layers > 20 && calls > 400, "too few layers ({layers}) or calls ({calls}) to prove anything");
}

/// The whole state of a device layer.
fn gpu_state(l: &GpuLayer) -> (Vec<f32>, Counters, u64) {
    (l.weights().unwrap(), l.counters().unwrap(), l.step())
}

/// One random call on a device layer, as [`cpu_call`].
fn gpu_call(d: &mut Draw, dev: &Device, l: &mut GpuLayer, records: &mut Vec<GpuRecord>) {
    let cfg = *l.config();
    let before = gpu_state(l);
    let err = match d.below(4) {
        0 => {
            let c = d.counters(cfg.classes(), cfg.channels());
            no_panic("GpuLayer::set_counters", || l.set_counters(&c)).err()
        }
        1 => {
            let dims = d.dims(&cfg);
            let dtype = [DType::F32, DType::F16][d.below(2) as usize];
            let Ok(x) = no_panic("Tensor::zeros", || Tensor::zeros(dev, dtype, &dims)) else { return };
            let t = d.targets(dims.first().copied().unwrap_or(0).min(8), cfg.classes());
            match no_panic("GpuLayer::forward", || l.forward(&x, (!d.chance(4)).then_some(t.as_slice()))) {
                Ok(rec) => {
                    records.push(rec);
                    return;
                }
                Err(e) => Some(e),
            }
        }
        2 if !records.is_empty() => {
            let pick = |d: &mut Draw| d.below(records.len() as u64) as usize;
            let chosen: Vec<&GpuRecord> = (0..1 + d.below(2)).map(|_| &records[pick(d)]).collect();
            let Ok(losses) = no_panic("gpu::combine", || gpu::combine(&chosen, LossCoefs::PAPER)) else {
                return;
            };
            let rec = &records[pick(d)];
            let Ok(dy) = Tensor::zeros(dev, DType::F32, &rec.dims.dims) else { return };
            no_panic("GpuLayer::backward", || l.backward(rec, &dy, &losses)).err()
        }
        _ => {
            let n = if d.chance(2) { before.0.len() } else { d.below(40) as usize };
            let w = d.values(n);
            no_panic("GpuLayer::set_weights", || l.set_weights(&w)).err()
        }
    };
    if let Some(e) = err {
        assert_eq!(gpu_state(l), before, "{}: state changed after {e}", dev.label());
    }
}

#[test]
fn random_sizes_and_vectors_never_panic_a_device_layer() {
    for dev in devices() {
        let mut d = Draw(SplitMix64::new(77));
        let mut calls = 0;
        for _ in 0..120 {
            let Some(cfg) = random_config(&mut d) else { continue };
            let Ok(mut l) = no_panic("GpuLayer::new", || GpuLayer::new(&dev, cfg, 3)) else {
                assert!(cfg.classes() * cfg.channels() >= 1 << 46, "{}: a small layer failed", dev.label());
                continue;
            };
            let mut records = Vec::new();
            for _ in 0..8 {
                gpu_call(&mut d, &dev, &mut l, &mut records);
                calls += 1;
            }
        }
        assert!(calls > 100, "{}: too few calls ({calls})", dev.label());
    }
}

#[cfg(feature = "sim")]
#[test]
fn random_shapes_never_panic_a_simulator_allocation() {
    let dev = Device::sim();
    let mut d = Draw(SplitMix64::new(5));
    for _ in 0..300 {
        let (shape, dtype) = (d.shape(), [DType::F32, DType::F16, DType::BF16][d.below(3) as usize]);
        let t = no_panic("Tensor::zeros", || Tensor::zeros(&dev, dtype, &shape));
        let n = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        match n {
            Some(n) if n < 1 << 20 => assert_eq!(t.unwrap().len(), n),
            _ => assert!(t.is_err(), "{shape:?} allocated"),
        }
    }
}
