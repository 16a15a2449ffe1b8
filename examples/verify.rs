//! The main job: verify every backend present against the spec.
//!
//! For each backend it runs the finite-difference gradient check and the golden
//! parity (the project's golden copy, and `AIEC_GOLDEN_DIR` when set), and prints
//! one table of max errors per pooling mode and precision. Exits non-zero on any
//! failure.
//!
//! `cargo run --release --example verify`

#[path = "../tests/common/mod.rs"]
mod common;

use aiec::cpu::gradcheck::{check, random_case, CaseShape};
use aiec::cpu::LossCoefs;
use aiec::{AiecConfig, Device, DeviceKind, Element, Pool};
use common::compare::tolerance;
use common::golden::{dirs, inputs_only, load_dir, GoldenCase};
use common::runner::{judge_against, rounded_case, run_cpu, run_golden, run_gpu, Errors, GoldenSummary};
use half::{bf16, f16};

/// One line of the table.
struct Row {
    backend: String,
    precision: &'static str,
    pool: Pool,
    check: String,
    y: Option<f64>,
    dx: f64,
    dw: f64,
    counters: &'static str,
    pass: bool,
}

const GRAD_TOL: f64 = 1e-6;

impl Row {
    /// A passing row with the largest errors of one pooling mode.
    fn errors(backend: &str, precision: &'static str, pool: Pool, check: &str, e: &Errors) -> Row {
        Row {
            backend: backend.to_string(),
            precision,
            pool,
            check: check.to_string(),
            y: Some(e.y.max(e.v).max(e.logits)),
            dx: e.dx,
            dw: e.dw,
            counters: "exact",
            pass: true,
        }
    }

    /// A failing row: `failed` of `total` cases did not pass.
    fn failed(backend: &str, precision: &'static str, check: &str, failed: usize, total: usize) -> Row {
        Row {
            backend: backend.to_string(),
            precision,
            pool: Pool::None,
            check: format!("{check}: {failed} of {total} FAILED"),
            y: None,
            dx: f64::NAN,
            dw: f64::NAN,
            counters: "?",
            pass: false,
        }
    }
}

fn gradcheck_rows() -> Vec<Row> {
    let coefs = LossCoefs::new(0.7, 3.0).expect("valid coefficients");
    Pool::ALL
        .into_iter()
        .map(|pool| {
            let (mut dx, mut dw, mut n) = (0.0f64, 0.0f64, 0);
            for (i, (tau, layers, update)) in
                [(0.0, 1, false), (0.3, 1, true), (0.0, 2, true), (0.3, 2, false)].into_iter().enumerate()
            {
                let cfg = AiecConfig::new(6, 5, tau, pool).expect("valid config");
                let shape = CaseShape { batch: 4, channels: 6, classes: 5, positions: 3, layers };
                let case = random_case(77 + i as u64, cfg, shape, coefs, update);
                let r = check(&case, 1e-5).expect("gradcheck runs");
                dx = dx.max(r.dx);
                dw = dw.max(r.dw);
                n += 1;
            }
            Row {
                backend: "cpu".into(),
                precision: "f64",
                pool,
                check: format!("gradcheck x{n}"),
                y: None,
                dx,
                dw,
                counters: "-",
                pass: dx.max(dw) < GRAD_TOL,
            }
        })
        .collect()
}

fn golden_rows(backend: &str, precision: &'static str, label: &str, s: &GoldenSummary) -> Vec<Row> {
    let check = format!("golden {label}");
    let mut rows: Vec<Row> = Pool::ALL
        .into_iter()
        .filter_map(|pool| {
            let (_, e) = s.per_pool.iter().find(|(p, _)| *p == pool)?;
            Some(Row::errors(backend, precision, pool, &check, e))
        })
        .collect();
    if !s.failures.is_empty() {
        rows.push(Row::failed(backend, precision, &check, s.failures.len(), s.total));
    }
    rows
}

/// Judges one device in precision `T` against the CPU reference run on the
/// same rounded inputs; returns `(passed, per-pool errors, failures)`.
fn device_vs_cpu<T: Element>(
    dev: &Device,
    cases: &[GoldenCase],
) -> (usize, Vec<(Pool, Errors)>, Vec<String>) {
    let rtol = tolerance(T::DTYPE.name());
    let mut per: Vec<(Pool, Errors)> = Vec::new();
    let (mut passed, mut failures) = (0, Vec::new());
    for c in cases {
        let rounded = rounded_case::<T>(c);
        let r = run_cpu::<f64>(&rounded).and_then(|want| {
            run_gpu::<T>(dev, c).and_then(|got| judge_against(&rounded, &got, &want, rtol, 1e-4))
        });
        match r {
            Ok((e, _)) => {
                passed += 1;
                match per.iter_mut().find(|(p, _)| *p == c.pool) {
                    Some((_, acc)) => acc.merge(&e),
                    None => per.push((c.pool, e)),
                }
            }
            Err(m) => failures.push(format!("{}: {m}", c.name)),
        }
    }
    (passed, per, failures)
}

/// Random cases whose gradients the device must reproduce (the CPU's are
/// checked against finite differences above).
fn gradient_cases() -> Vec<GoldenCase> {
    let coefs = LossCoefs::new(0.7, 3.0).expect("valid coefficients");
    let mut v = Vec::new();
    for (i, pool) in Pool::ALL.into_iter().enumerate() {
        for (j, (tau, layers, update)) in [(0.0, 1, false), (0.3, 2, true)].into_iter().enumerate() {
            let cfg = AiecConfig::new(37, 11, tau, pool).expect("valid config");
            let shape = CaseShape { batch: 9, channels: 37, classes: 11, positions: 5, layers };
            let seed = 500 + 10 * i as u64 + j as u64;
            v.push(inputs_only(format!("grad#{seed} {pool}"), &random_case(seed, cfg, shape, coefs, update)));
        }
    }
    v
}

fn device_rows<T: Element>(
    dev: &Device,
    backend: &str,
    check: &str,
    cases: &[GoldenCase],
    ok: &mut bool,
) -> Vec<Row> {
    let (passed, per, failures) = device_vs_cpu::<T>(dev, cases);
    for f in failures.iter().take(3) {
        println!("  FAILED {backend}-{}: {f}", T::DTYPE);
    }
    *ok &= passed == cases.len();
    let mut rows: Vec<Row> =
        per.into_iter().map(|(pool, e)| Row::errors(backend, T::DTYPE.name(), pool, check, &e)).collect();
    if passed != cases.len() {
        rows.push(Row::failed(backend, T::DTYPE.name(), check, cases.len() - passed, cases.len()));
    }
    rows
}

fn main() {
    println!("aiec verify: gradient check and golden parity on every backend present");
    let (devices, why) = aiec::available_devices();
    let names: Vec<&str> = devices.iter().map(|d| d.label()).collect();
    println!(
        "backends: cpu reference (f64, f32); {}",
        if names.is_empty() { "no device".into() } else { names.join(", ") }
    );
    if let Some(e) = why {
        println!("no GPU here, CUDA not verified: {e}");
    }
    println!();

    let mut rows = gradcheck_rows();
    let mut ok = true;
    for (dir, label) in dirs() {
        let cases = match load_dir(&dir) {
            Ok(c) => c,
            Err(e) => {
                println!("cannot load golden cases: {e}");
                ok = false;
                continue;
            }
        };
        let s64 = run_golden("cpu", "f64", &label, &cases, run_cpu::<f64>);
        let s32 = run_golden("cpu", "f32", &label, &cases, run_cpu::<f32>);
        rows.extend(golden_rows("cpu", "f64", &label, &s64));
        rows.extend(golden_rows("cpu", "f32", &label, &s32));
        for dev in &devices {
            let b = match dev.kind() {
                DeviceKind::Sim => "sim",
                DeviceKind::Cuda => "cuda",
            };
            let s = run_golden(b, "f32", &label, &cases, |c| run_gpu::<f32>(dev, c));
            rows.extend(golden_rows(b, "f32", &label, &s));
            let check = format!("golden {label} vs cpu");
            rows.extend(device_rows::<f16>(dev, b, &check, &cases, &mut ok));
            rows.extend(device_rows::<bf16>(dev, b, &check, &cases, &mut ok));
        }
    }
    let grads = gradient_cases();
    for dev in &devices {
        let b = if dev.kind() == DeviceKind::Sim { "sim" } else { "cuda" };
        rows.extend(device_rows::<f32>(dev, b, "grad vs cpu-f64", &grads, &mut ok));
    }
    println!();

    println!(
        "{:<8} {:<5} {:<10} {:<34} {:>10} {:>10} {:>10} {:>9} {:>6} {:>6}",
        "backend", "prec", "pool", "check", "max y/v/z", "max dx", "max dW", "counters", "tol", "result"
    );
    for r in &rows {
        let tol = if r.check.starts_with("gradcheck") { GRAD_TOL } else { tolerance(r.precision) };
        let y = r.y.map_or("-".to_string(), |v| format!("{v:.2e}"));
        println!(
            "{:<8} {:<5} {:<10} {:<34} {:>10} {:>10.2e} {:>10.2e} {:>9} {:>6.0e} {:>6}",
            r.backend,
            r.precision,
            r.pool.name(),
            r.check,
            y,
            r.dx,
            r.dw,
            r.counters,
            tol,
            if r.pass { "pass" } else { "FAIL" }
        );
        ok &= r.pass;
    }
    println!();
    if ok {
        println!("verify: all checks passed");
    } else {
        println!("verify: FAILED");
        std::process::exit(1);
    }
}
