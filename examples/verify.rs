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
use aiec::{AiecConfig, Pool};
use common::compare::tolerance;
use common::golden::{dirs, load_dir};
use common::runner::{run_cpu, run_golden, GoldenSummary};

/// One line of the table.
struct Row {
    backend: &'static str,
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
                backend: "cpu",
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

fn golden_rows(backend: &'static str, precision: &'static str, label: &str, s: &GoldenSummary) -> Vec<Row> {
    let mut rows: Vec<Row> = Pool::ALL
        .into_iter()
        .filter_map(|pool| {
            let (_, e) = s.per_pool.iter().find(|(p, _)| *p == pool)?;
            Some(Row {
                backend,
                precision,
                pool,
                check: format!("golden {label}"),
                y: Some(e.y.max(e.v).max(e.logits)),
                dx: e.dx,
                dw: e.dw,
                counters: "exact",
                pass: true,
            })
        })
        .collect();
    if !s.failures.is_empty() {
        rows.push(Row {
            backend,
            precision,
            pool: Pool::None,
            check: format!("golden {label}: {} of {} cases FAILED", s.failures.len(), s.total),
            y: None,
            dx: f64::NAN,
            dw: f64::NAN,
            counters: "?",
            pass: false,
        });
    }
    rows
}

fn main() {
    println!("aiec verify: gradient check and golden parity on every backend present");
    println!("backends: cpu (reference, f64 and f32); the CUDA and simulator backends are not part of this build yet");
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
    }
    println!();

    println!(
        "{:<8} {:<5} {:<10} {:<28} {:>10} {:>10} {:>10} {:>9} {:>6} {:>6}",
        "backend", "prec", "pool", "check", "max y/v/z", "max dx", "max dW", "counters", "tol", "result"
    );
    for r in &rows {
        let tol = if r.check.starts_with("gradcheck") { GRAD_TOL } else { tolerance(r.precision) };
        let y = r.y.map_or("-".to_string(), |v| format!("{v:.2e}"));
        println!(
            "{:<8} {:<5} {:<10} {:<28} {:>10} {:>10.2e} {:>10.2e} {:>9} {:>6.0e} {:>6}",
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
