//! Support for tests/candle.rs: a random case of `aiec::cpu::gradcheck`
//! (`L` layers sharing one target vector, counters that leave about half
//! the channels inactive) run through the candle layer on a backend, and
//! judged against the reference's analytic gradients, counters and losses.

use aiec::candle::{losses, Aiec};
use aiec::cpu::gradcheck::{analytic, random_case, Case, CaseShape};
use aiec::cpu::{self, LossCoefs};
use aiec::{AiecConfig, Counters, Pool};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::common::compare::{close, exact, tolerance};

pub type R<T> = Result<T, String>;

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A tensor's values, widened.
pub fn values(t: &Tensor) -> R<Vec<f64>> {
    t.flatten_all().and_then(|t| t.to_dtype(DType::F64)).and_then(|t| t.to_vec1::<f64>()).map_err(s)
}

/// Which backend a test body runs on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Run {
    /// The CPU reference in f32.
    Reference,
    /// The CPU reference in f64.
    Reference64,
    /// The kernels on the simulator, activations in `dtype`.
    #[cfg(feature = "sim")]
    Kernels(DType),
}

impl Run {
    pub fn dtype(self) -> DType {
        match self {
            Run::Reference => DType::F32,
            Run::Reference64 => DType::F64,
            #[cfg(feature = "sim")]
            Run::Kernels(d) => d,
        }
    }
    /// The tolerance of `dx` (activation precision) and of `dW` (f32, or the
    /// activations' when they are coarser). In f16 and bf16, candle's `dx` is
    /// the sum of two parts each rounded to the activation type (the
    /// threshold's `keep ? dy : 0` and the terms' `keep ? unpool(dv) : 0`; see
    /// `aiec::candle`), so it is judged at twice the tolerance of one rounding.
    pub fn tolerances(self) -> (f64, f64) {
        match self.dtype() {
            DType::F64 => (tolerance("f64"), tolerance("f32")),
            DType::F32 => (tolerance("f32"), tolerance("f32")),
            _ => (2.0 * tolerance("bf16"), tolerance("bf16")),
        }
    }
    pub fn layer(self, cfg: AiecConfig, vb: VarBuilder) -> R<Aiec> {
        let l = Aiec::new(cfg, vb).map_err(s)?;
        match self {
            Run::Reference | Run::Reference64 => Ok(l),
            #[cfg(feature = "sim")]
            Run::Kernels(_) => l.on_device(aiec::Device::sim()).map_err(s),
        }
    }
}

/// A value as the activations of `dtype` hold it.
fn round(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F64 => v,
        DType::F32 => v as f32 as f64,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        d => panic!("no rounding for {d:?}"),
    }
}

/// `case` as the candle run sees it: `x` and `dy` rounded to the activations'
/// precision, `W` to f32 (the reference then runs in f64 on those values).
fn rounded(case: &Case, dtype: DType) -> Case {
    let mut c = case.clone();
    for l in &mut c.layers {
        l.x.iter_mut().for_each(|v| *v = round(*v, dtype));
        l.dy.iter_mut().for_each(|v| *v = round(*v, dtype));
        l.w.iter_mut().for_each(|v| *v = *v as f32 as f64);
    }
    c
}

/// The configuration whose first training forward updates (interval 1) or not (interval 2).
fn config_for(case: &Case) -> AiecConfig {
    let c = case.cfg;
    let interval = if case.update { 1 } else { 2 };
    AiecConfig::with_interval(c.channels(), c.classes(), c.tau(), interval, c.pool()).unwrap()
}

/// What one candle step of `case` gave.
struct Got {
    dx: Vec<Vec<f64>>,
    dw: Vec<Vec<f64>>,
    counters: Vec<Counters>,
    aux: f64,
    gate: f64,
    gate_count: u64,
}

/// One step of `case` through candle: every layer an `Aiec` on its own `x`
/// (a `Var`) with the case's `W` and counters, the loss
/// `scale * (sum_l <y_l, dy_l> + aux_coef * aux + gate_coef * gate)`, and
/// candle's backward.
fn run_candle(run: Run, case: &Case, scale: f64) -> R<Got> {
    let dev = Device::Cpu;
    let dtype = run.dtype();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let cfg = config_for(case);
    let targets = Tensor::new(case.targets.as_slice(), &dev).map_err(s)?;
    let mut layers = Vec::new();
    let mut xs = Vec::new();
    let mut inner: Option<Tensor> = None;
    for (i, l) in case.layers.iter().enumerate() {
        let layer = run.layer(cfg, vb.pp(format!("layer{i}")))?;
        let w: Vec<f32> = l.w.iter().map(|&v| v as f32).collect();
        let (k, c) = (cfg.classes(), cfg.channels());
        Var::from_tensor(layer.weight())
            .and_then(|v| v.set(&Tensor::from_vec(w, (k, c), &dev)?))
            .map_err(s)?;
        layer.set_counters(l.counters.clone()).map_err(s)?;
        let to = |v: &[f64]| {
            Tensor::from_vec(v.to_vec(), case.dims.as_slice(), &dev).and_then(|t| t.to_dtype(dtype))
        };
        let x = Var::from_tensor(&to(&l.x).map_err(s)?).map_err(s)?;
        let dy = to(&l.dy).map_err(s)?;
        let y = layer.forward(&x, Some(&targets)).map_err(s)?;
        let term = (y * dy).and_then(|t| t.to_dtype(DType::F64)).and_then(|t| t.sum_all()).map_err(s)?;
        inner = Some(match inner {
            None => term,
            Some(acc) => (acc + term).map_err(s)?,
        });
        layers.push(layer);
        xs.push(x);
    }
    let refs: Vec<&Aiec> = layers.iter().collect();
    let aiec = losses(&refs).map_err(s)?;
    let objective = aiec.objective(case.coefs).and_then(|t| t.to_dtype(DType::F64)).map_err(s)?;
    let loss = (inner.unwrap() + objective).and_then(|t| t.affine(scale, 0.0)).map_err(s)?;
    let grads = loss.backward().map_err(s)?;
    let mut got = Got { dx: vec![], dw: vec![], counters: vec![], aux: 0.0, gate: 0.0, gate_count: 0 };
    for (layer, x) in layers.iter().zip(&xs) {
        got.dx.push(values(grads.get(x).ok_or("no dx")?)?);
        got.dw.push(values(grads.get(layer.weight()).ok_or("no dW")?)?);
        got.counters.push(layer.counters());
    }
    let v = aiec.values().map_err(s)?;
    (got.aux, got.gate, got.gate_count) = (v.aux, v.gate, v.gate_count);
    Ok(got)
}

/// The reference's counters, aux and gate loss of `case` (f64).
fn reference_forward(case: &Case) -> R<(Vec<Counters>, cpu::Losses<f64>)> {
    let mut counters = Vec::new();
    let mut recs = Vec::new();
    for l in &case.layers {
        let mut c = l.counters.clone();
        recs.push(
            cpu::forward(&case.cfg, &l.x, &case.dims, &l.w, Some(&case.targets), &mut c, case.update)
                .map_err(s)?,
        );
        counters.push(c);
    }
    let losses = cpu::combine(&recs.iter().collect::<Vec<_>>(), case.coefs).map_err(s)?;
    Ok((counters, losses))
}

/// Runs `case` on candle and judges every output against the reference;
/// returns the largest errors of dx and dW.
pub fn judge(run: Run, case: &Case, scale: f64) -> R<(f64, f64)> {
    let case = rounded(case, run.dtype());
    let got = run_candle(run, &case, scale)?;
    let want = analytic(&case).map_err(s)?;
    let (counters, losses) = reference_forward(&case)?;
    let (tol_x, tol_w) = run.tolerances();
    let (mut ex, mut ew) = (0.0f64, 0.0f64);
    for (l, w) in want.iter().enumerate() {
        let scaled = |v: &[f64]| v.iter().map(|a| a * scale).collect::<Vec<_>>();
        ex = ex.max(close(&format!("dx of layer {l}"), &got.dx[l], &scaled(&w.dx), tol_x)?);
        ew = ew.max(close(&format!("dW of layer {l}"), &got.dw[l], &scaled(&w.dw), tol_w)?);
        exact(&format!("act of layer {l}"), &got.counters[l].act, &counters[l].act)?;
        exact(&format!("inh of layer {l}"), &got.counters[l].inh, &counters[l].inh)?;
        exact(&format!("total of layer {l}"), &got.counters[l].total, &counters[l].total)?;
    }
    close("aux loss", &[got.aux], &[losses.aux], tol_w)?;
    close("gate loss", &[got.gate], &[losses.gate], tol_w)?;
    exact("gate count N", &[got.gate_count], &[losses.gate_count])?;
    if losses.gate_count == 0 {
        return Err("the gate masked nothing: the case does not test it".into());
    }
    Ok((ex, ew))
}

fn shape(layers: usize) -> CaseShape {
    // Odd, non-power-of-two sizes.
    CaseShape { batch: 6, channels: 7, classes: 5, positions: 3, layers }
}

pub fn case(seed: u64, pool: Pool, layers: usize, update: bool, coefs: LossCoefs) -> Case {
    let cfg = AiecConfig::new(7, 5, 0.0, pool).unwrap();
    random_case(seed, cfg, shape(layers), coefs, update)
}
