//! Runs golden cases on a backend and judges the results. A backend is a
//! function from a case to its [`Outputs`]; the judging is written once.

use aiec::cpu::{backward, combine, forward, Float, LossCoefs};
use aiec::{AiecConfig, Counters, Pool};

use super::compare::{close, exact, tolerance};
use super::golden::GoldenCase;

/// What a backend computed for one layer, widened to `f64`.
#[derive(Debug, Clone, Default)]
pub struct LayerOutputs {
    pub y: Vec<f64>,
    pub v: Vec<f64>,
    pub logits: Vec<f64>,
    pub mask: Vec<u8>,
    pub act: Vec<i64>,
    pub inh: Vec<i64>,
    pub total: Vec<i64>,
    pub gate_sum_sq: f64,
    pub dx: Vec<f64>,
    pub dw: Vec<f64>,
}

/// What a backend computed for one case.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub layers: Vec<LayerOutputs>,
    pub aux_loss: f64,
    pub gate_loss: f64,
    pub gate_count: i64,
}

/// Largest errors of one case (or of many, merged with [`Errors::merge`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors {
    pub y: f64,
    pub v: f64,
    pub logits: f64,
    pub dx: f64,
    pub dw: f64,
    pub losses: f64,
}

impl Errors {
    pub fn merge(&mut self, o: &Errors) {
        self.y = self.y.max(o.y);
        self.v = self.v.max(o.v);
        self.logits = self.logits.max(o.logits);
        self.dx = self.dx.max(o.dx);
        self.dw = self.dw.max(o.dw);
        self.losses = self.losses.max(o.losses);
    }
}

/// The layer configuration of a case.
pub fn config(case: &GoldenCase) -> AiecConfig {
    AiecConfig::new(case.channels, case.classes, case.tau, case.pool).expect("golden config is valid")
}

/// Runs `case` on the CPU reference in precision `F` (inputs rounded to `F`).
pub fn run_cpu<F: Float>(case: &GoldenCase) -> Result<Outputs, String> {
    let cfg = config(case);
    let cast = |v: &[f64]| v.iter().map(|&a| F::from_f64(a)).collect::<Vec<F>>();
    let widen = |v: &[F]| v.iter().map(|a| a.to_f64()).collect::<Vec<f64>>();
    let mut records = Vec::new();
    let mut counters_out = Vec::new();
    let mut inputs = Vec::new();
    for l in &case.layers {
        let (x, w, dy) = (cast(&l.x), cast(&l.w), cast(&l.dy));
        let mut counters = Counters::from_parts(
            case.classes,
            case.channels,
            l.act_in.clone(),
            l.inh_in.clone(),
            l.total_in.clone(),
        )
        .map_err(|e| e.to_string())?;
        let rec = forward(&cfg, &x, &case.dims, &w, Some(&case.targets), &mut counters, case.update)
            .map_err(|e| e.to_string())?;
        records.push(rec);
        counters_out.push(counters);
        inputs.push((w, dy));
    }
    let refs: Vec<_> = records.iter().collect();
    let coefs = LossCoefs::new(case.aux_coef, case.gate_coef).map_err(|e| e.to_string())?;
    let losses = combine(&refs, coefs).map_err(|e| e.to_string())?;
    let mut out = Outputs {
        layers: Vec::new(),
        aux_loss: losses.aux.to_f64(),
        gate_loss: losses.gate.to_f64(),
        gate_count: losses.gate_count as i64,
    };
    for ((rec, counters), (w, dy)) in records.iter().zip(counters_out).zip(&inputs) {
        let g = backward(&cfg, rec, w, dy, &losses.scales).map_err(|e| e.to_string())?;
        let aux = rec.aux.as_ref().expect("forward with targets");
        out.layers.push(LayerOutputs {
            y: widen(&rec.y),
            v: widen(&aux.v),
            logits: widen(&aux.logits),
            mask: aux.mask.clone(),
            act: counters.act,
            inh: counters.inh,
            total: counters.total,
            gate_sum_sq: aux.gate_sum_sq.to_f64(),
            dx: widen(&g.dx),
            dw: widen(&g.dw),
        });
    }
    Ok(out)
}

/// Judges `got` against the case's expected values at the tolerance of
/// `precision`; counters, masks and the gate count compare exactly.
pub fn judge(case: &GoldenCase, got: &Outputs, precision: &str) -> Result<Errors, String> {
    let rtol = tolerance(precision);
    let mut e = Errors::default();
    if got.layers.len() != case.layers.len() {
        return Err(format!("{} layers, expected {}", got.layers.len(), case.layers.len()));
    }
    for (l, (g, want)) in got.layers.iter().zip(&case.layers).enumerate() {
        let n = |s: &str| format!("l{l}.{s}");
        e.y = e.y.max(close(&n("y"), &g.y, &want.y, rtol)?);
        e.v = e.v.max(close(&n("v"), &g.v, &want.v, rtol)?);
        e.logits = e.logits.max(close(&n("logits"), &g.logits, &want.logits, rtol)?);
        exact(&n("mask"), &g.mask, &want.mask)?;
        exact(&n("act"), &g.act, &want.act)?;
        exact(&n("inh"), &g.inh, &want.inh)?;
        exact(&n("total"), &g.total, &want.total)?;
        e.losses = e.losses.max(close(&n("gate_sum_sq"), &[g.gate_sum_sq], &[want.gate_sum_sq], rtol)?);
        e.dx = e.dx.max(close(&n("dx"), &g.dx, &want.dx, rtol)?);
        e.dw = e.dw.max(close(&n("dw"), &g.dw, &want.dw, rtol)?);
    }
    e.losses = e.losses.max(close("aux_loss", &[got.aux_loss], &[case.aux_loss], rtol)?);
    e.losses = e.losses.max(close("gate_loss", &[got.gate_loss], &[case.gate_loss], rtol)?);
    exact("gate_count", &[got.gate_count], &[case.gate_count])?;
    Ok(e)
}

/// The result of one backend and precision over one folder of cases.
#[derive(Debug, Clone, Default)]
pub struct GoldenSummary {
    pub passed: usize,
    pub total: usize,
    /// `(case name, message)` of every failure.
    pub failures: Vec<(String, String)>,
    /// Max errors per pooling mode, over the passing cases.
    pub per_pool: Vec<(Pool, Errors)>,
}

/// Runs every case of `cases` on `run` and judges it at `precision`. Prints
/// `golden <backend>-<precision>: P/N cases passed (<label>)` and, for each
/// failure, the case name and its first offending elements.
pub fn run_golden(
    backend: &str,
    precision: &str,
    label: &str,
    cases: &[GoldenCase],
    run: impl Fn(&GoldenCase) -> Result<Outputs, String>,
) -> GoldenSummary {
    let mut s = GoldenSummary { total: cases.len(), ..Default::default() };
    for case in cases {
        match run(case).and_then(|out| judge(case, &out, precision)) {
            Ok(e) => {
                s.passed += 1;
                match s.per_pool.iter_mut().find(|(p, _)| *p == case.pool) {
                    Some((_, acc)) => acc.merge(&e),
                    None => s.per_pool.push((case.pool, e)),
                }
            }
            Err(msg) => s.failures.push((case.name.clone(), msg)),
        }
    }
    println!("golden {backend}-{precision}: {}/{} cases passed ({label})", s.passed, s.total);
    for (name, msg) in &s.failures {
        println!("  FAILED {name}: {msg}");
    }
    s
}
