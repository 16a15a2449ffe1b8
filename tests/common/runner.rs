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

/// Runs `case` with the fused kernels on `dev`, activations in `T` (inputs
/// rounded to `T`; weights, counters and all sums in `f32`).
pub fn run_gpu<T: aiec::Element>(dev: &aiec::Device, case: &GoldenCase) -> Result<Outputs, String> {
    use aiec::gpu::{self, GpuCounters};
    use aiec::{Buffer, Tensor};
    let e = |e: aiec::AiecError| e.to_string();
    let cfg = config(case);
    let mut records = Vec::new();
    let mut state = Vec::new();
    for l in &case.layers {
        let x: Vec<T> = l.x.iter().map(|&v| T::from_f32(v as f32)).collect();
        let w: Vec<f32> = l.w.iter().map(|&v| v as f32).collect();
        let xt = Tensor::from_slice(dev, &x, &case.dims).map_err(e)?;
        let wb = Buffer::from_slice(dev, &w).map_err(e)?;
        let counters = Counters::from_parts(
            case.classes,
            case.channels,
            l.act_in.clone(),
            l.inh_in.clone(),
            l.total_in.clone(),
        )
        .map_err(e)?;
        let mut gc = GpuCounters::from_host(dev, &counters).map_err(e)?;
        let rec = gpu::forward(&cfg, &xt, &wb, Some(&case.targets), &mut gc, case.update).map_err(e)?;
        records.push(rec);
        state.push((wb, gc));
    }
    let refs: Vec<_> = records.iter().collect();
    let coefs = LossCoefs::new(case.aux_coef, case.gate_coef).map_err(|e| e.to_string())?;
    let losses = gpu::combine(&refs, coefs).map_err(e)?;
    let read = losses.read().map_err(e)?;
    let mut out = Outputs {
        layers: Vec::new(),
        aux_loss: read.aux as f64,
        gate_loss: read.gate as f64,
        gate_count: read.gate_count as i64,
    };
    let widen = |v: Vec<f32>| v.into_iter().map(|a| a as f64).collect::<Vec<f64>>();
    for ((rec, (wb, gc)), l) in records.iter().zip(&state).zip(&case.layers) {
        let dy: Vec<T> = l.dy.iter().map(|&v| T::from_f32(v as f32)).collect();
        let dyt = Tensor::from_slice(dev, &dy, &case.dims).map_err(e)?;
        let g = gpu::backward(&cfg, rec, wb, &dyt, &losses).map_err(e)?;
        let aux = rec.aux.as_ref().expect("forward with targets");
        let counters = gc.to_host().map_err(e)?;
        let to64 = |t: &Tensor| -> Result<Vec<f64>, String> {
            Ok(t.to_vec::<T>().map_err(e)?.into_iter().map(|v| v.to_f32() as f64).collect())
        };
        out.layers.push(LayerOutputs {
            y: to64(rec.y().map_err(e)?)?,
            v: widen(aux.v.to_vec().map_err(e)?),
            logits: widen(aux.logits.to_vec().map_err(e)?),
            mask: aux.mask.to_vec().map_err(e)?,
            act: counters.act,
            inh: counters.inh,
            total: counters.total,
            gate_sum_sq: aux.stats.to_vec().map_err(e)?[0].sum_sq as f64,
            dx: to64(&g.dx)?,
            dw: widen(g.dw.to_vec().map_err(e)?),
        });
    }
    Ok(out)
}

/// The case with `x` and `dy` rounded through `T` (what a reduced-precision
/// backend actually sees), for a CPU reference run on the same inputs.
pub fn rounded_case<T: aiec::Element>(case: &GoldenCase) -> GoldenCase {
    let mut c = case.clone();
    for l in &mut c.layers {
        for v in l.x.iter_mut().chain(l.dy.iter_mut()) {
            *v = T::from_f32(*v as f32).to_f32() as f64;
        }
    }
    c
}

/// Samples whose top two reference logits are closer than `margin` (but not
/// exactly tied: exact ties come from identical rows and stay exact), per layer.
pub fn near_tied(reference: &Outputs, classes: usize, margin: f64) -> Vec<Vec<usize>> {
    reference
        .layers
        .iter()
        .map(|l| {
            l.logits
                .chunks(classes.max(1))
                .enumerate()
                .filter(|(_, row)| {
                    let mut s: Vec<f64> = row.to_vec();
                    s.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
                    s.len() > 1 && s[0] - s[1] > 0.0 && s[0] - s[1] < margin
                })
                .map(|(b, _)| b)
                .collect()
        })
        .collect()
}

/// Judges reduced-precision (or reordered) results `got` against a CPU
/// reference `want` run on the same inputs: values at `rtol`; counters, masks
/// and the gate count exactly, except for the classes of near-tied samples
/// (whose argmax may legitimately differ) and what depends on them. Returns the
/// errors and the number of samples skipped.
pub fn judge_against(
    case: &GoldenCase,
    got: &Outputs,
    want: &Outputs,
    rtol: f64,
    margin: f64,
) -> Result<(Errors, usize), String> {
    let mut e = Errors::default();
    let ties = near_tied(want, case.classes, margin);
    let mut skipped = 0;
    let (k, c) = (case.classes, case.channels);
    let mut any_skip = false;
    for (l, (g, w)) in got.layers.iter().zip(&want.layers).enumerate() {
        let n = |s: &str| format!("l{l}.{s}");
        let skip_classes: Vec<usize> = if case.update {
            ties[l].iter().map(|&b| case.targets[b] as usize).collect()
        } else {
            Vec::new()
        };
        let skip_sample = |b: usize| skip_classes.contains(&(case.targets[b] as usize));
        skipped += (0..case.batch).filter(|&b| skip_sample(b)).count();
        any_skip |= !skip_classes.is_empty();
        e.y = e.y.max(close(&n("y"), &g.y, &w.y, rtol)?);
        e.v = e.v.max(close(&n("v"), &g.v, &w.v, rtol)?);
        e.logits = e.logits.max(close(&n("logits"), &g.logits, &w.logits, rtol)?);
        e.dw = e.dw.max(close(&n("dw"), &g.dw, &w.dw, rtol)?);
        let keep_k: Vec<usize> = (0..k).filter(|kk| !skip_classes.contains(kk)).collect();
        let rows =
            |v: &[i64]| keep_k.iter().flat_map(|&kk| v[kk * c..(kk + 1) * c].to_vec()).collect::<Vec<_>>();
        exact(&n("act"), &rows(&g.act), &rows(&w.act))?;
        exact(&n("inh"), &rows(&g.inh), &rows(&w.inh))?;
        let tot = |v: &[i64]| keep_k.iter().map(|&kk| v[kk]).collect::<Vec<_>>();
        exact(&n("total"), &tot(&g.total), &tot(&w.total))?;
        let keep_b: Vec<usize> = (0..case.batch).filter(|&b| !skip_sample(b)).collect();
        let brows =
            |v: &[u8]| keep_b.iter().flat_map(|&b| v[b * c..(b + 1) * c].to_vec()).collect::<Vec<_>>();
        exact(&n("mask"), &brows(&g.mask), &brows(&w.mask))?;
        if skip_classes.is_empty() {
            e.dx = e.dx.max(close(&n("dx"), &g.dx, &w.dx, rtol)?);
            e.losses = e.losses.max(close(&n("gate_sum_sq"), &[g.gate_sum_sq], &[w.gate_sum_sq], rtol)?);
        }
    }
    e.losses = e.losses.max(close("aux_loss", &[got.aux_loss], &[want.aux_loss], rtol)?);
    if !any_skip {
        e.losses = e.losses.max(close("gate_loss", &[got.gate_loss], &[want.gate_loss], rtol)?);
        exact("gate_count", &[got.gate_count], &[want.gate_count])?;
    }
    Ok((e, skipped))
}

/// The expected values of a golden case (float64, from the independent
/// reference) as [`Outputs`], to judge a backend with [`judge_against`].
pub fn expected(case: &GoldenCase) -> Outputs {
    Outputs {
        layers: case
            .layers
            .iter()
            .map(|l| LayerOutputs {
                y: l.y.clone(),
                v: l.v.clone(),
                logits: l.logits.clone(),
                mask: l.mask.clone(),
                act: l.act.clone(),
                inh: l.inh.clone(),
                total: l.total.clone(),
                gate_sum_sq: l.gate_sum_sq,
                dx: l.dx.clone(),
                dw: l.dw.clone(),
            })
            .collect(),
        aux_loss: case.aux_loss,
        gate_loss: case.gate_loss,
        gate_count: case.gate_count,
    }
}
