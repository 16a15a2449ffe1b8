//! The candle custom ops of one [`super::Aiec`] forward, and the record they
//! share.
//!
//! * [`ForwardOp`] `(x, W) -> y` runs the crate's whole forward once, in its
//!   `cpu_fwd`, under the layer's policy (threshold; with targets pooling,
//!   logits, counting on update steps, gate), keeps what the backward needs in
//!   a [`Record`], and returns `y`. Its backward is `dx = keep ? dy : 0`.
//! * [`TermsOp`] `(x, W) -> [sum_b CE_b, S]` reads that record (nothing is
//!   recomputed); its backward turns `(d ce_sum, dS)` into `dx` and `dW` by the
//!   crate's backward with those as its loss scales.
//!
//! Both only translate: the forward is [`crate::cpu::forward`] (or
//! [`crate::gpu::fused`] on the simulator), the backward
//! [`crate::cpu::backward`] (or `fused::backward`).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};

use crate::config::AiecConfig;
use crate::counters::Counters;
use crate::cpu::parts::pass_gradient;
use crate::cpu::{self, parts::cross_entropy, Float, ForwardRecord, LossScales};
use crate::error::AiecError;
use crate::policy::LayerPolicy;

use super::error::{dtype_error, host_slice, unsupported, IntoCandle};
use super::loss::Terms;
use super::Backend;

/// A layer's mutable state: what [`crate::policy::LayerPolicy`] rules, the
/// counters, and the terms of the last forward.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) counters: Counters,
    pub(crate) policy: LayerPolicy,
    pub(crate) terms: Option<Terms>,
}

/// Locks the state; a panic elsewhere while it was held leaves it usable
/// (every change to it is a single assignment).
pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one forward keeps for its backward and its terms.
pub(crate) struct Record {
    cfg: AiecConfig,
    /// The shape of `x` (and `y`, `dx`).
    dims: Vec<usize>,
    saved: Saved,
}

/// The record of the backend that ran the forward.
enum Saved {
    /// The CPU reference in `f32` (`y` moved out into candle's storage); the
    /// forward's `W`.
    F32(ForwardRecord<f32>, Vec<f32>),
    /// The CPU reference in `f64`; `W` widened.
    F64(ForwardRecord<f64>, Vec<f64>),
    /// The kernels on the simulator.
    #[cfg(feature = "sim")]
    Kernels(super::sim::KernelRecord),
}

/// The CPU reference's forward in `F`, `y` moved out of the record.
fn reference_forward<F: Float + WithDType>(
    cfg: &AiecConfig,
    x: &[F],
    dims: &[usize],
    w: &[f32],
    targets: Option<&[i64]>,
    counters: &mut Counters,
    update: bool,
) -> crate::error::Result<(Vec<F>, ForwardRecord<F>, Vec<F>)> {
    let w: Vec<F> = w.iter().map(|&v| <F as Float>::from_f64(v as f64)).collect();
    let mut rec = cpu::forward(cfg, x, dims, &w, targets, counters, update)?;
    let y = std::mem::take(&mut rec.y);
    Ok((y, rec, w))
}

/// `y` of a [`crate::cpu::forward`]: the forward the whole layer runs, once.
pub(crate) struct ForwardOp {
    pub(crate) cfg: AiecConfig,
    pub(crate) backend: Backend,
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) targets: Option<Vec<i64>>,
    pub(crate) record: Arc<OnceLock<Record>>,
}

impl CustomOp2 for ForwardOp {
    fn name(&self) -> &'static str {
        "aiec"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cfg = &self.cfg;
        let dims = l1.dims().to_vec();
        let w = host_slice::<f32>(s2, l2, "W")?;
        let targets = self.targets.as_deref();
        let mut st = lock(&self.state);
        let plan = st.policy.plan(targets.is_some());
        let counters = &mut st.counters;
        // Every check happens inside the core's forward, before anything is
        // counted; the step moves only once it succeeded.
        let (y, saved) = match (&self.backend, s1) {
            (Backend::Reference, CpuStorage::F32(_)) => {
                let x = host_slice::<f32>(s1, l1, "x")?;
                let (y, rec, w) =
                    reference_forward(cfg, x, &dims, w, targets, counters, plan.update).candle()?;
                (CpuStorage::F32(y), Saved::F32(rec, w))
            }
            (Backend::Reference, CpuStorage::F64(_)) => {
                let x = host_slice::<f64>(s1, l1, "x")?;
                let (y, rec, w) =
                    reference_forward(cfg, x, &dims, w, targets, counters, plan.update).candle()?;
                (CpuStorage::F64(y), Saved::F64(rec, w))
            }
            #[cfg(feature = "sim")]
            (Backend::Kernels(dev), s) => {
                let layer = super::sim::HostLayer { w, counters, update: plan.update };
                let (y, rec) = super::sim::forward(dev, cfg, s, l1, layer, targets)?;
                (y, Saved::Kernels(rec))
            }
            (backend, s) => return Err(dtype_error(backend, s.dtype())),
        };
        st.policy.commit(plan);
        drop(st);
        let shape = Shape::from_dims(&dims);
        if self.record.set(Record { cfg: *cfg, dims, saved }).is_err() {
            return Err(unsupported("an aiec forward op was applied twice".into()));
        }
        Ok((y, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() {
            return Ok((None, None)); // an input that needs no gradient (data)
        }
        let dx = dy.contiguous()?.apply_op1_no_bwd(&ThresholdBackward { record: self.record.clone() })?;
        Ok((Some(dx), None))
    }
}

fn recorded(record: &OnceLock<Record>) -> candle_core::Result<&Record> {
    record.get().ok_or_else(|| unsupported("the aiec forward op has not run".into()))
}

/// `dx = dy` where the forward's keep mask is set (NOT `x <= tau`), else 0.
struct ThresholdBackward {
    record: Arc<OnceLock<Record>>,
}

impl CustomOp1 for ThresholdBackward {
    fn name(&self) -> &'static str {
        "aiec-threshold-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let rec = recorded(&self.record)?;
        if l.dims() != rec.dims.as_slice() {
            return Err(super::error::to_candle(AiecError::ShapeMismatch {
                what: "dy",
                expected: rec.dims.clone(),
                got: l.dims().to_vec(),
            }));
        }
        // The threshold's gradient with the forward's keep mask (NaN passes):
        // `cpu::parts::pass_gradient`, the rule `cpu::backward` ends with.
        fn masked<F: Float>(keep: &[bool], dy: &[F]) -> Vec<F> {
            let mut dx = vec![F::ZERO; dy.len()];
            pass_gradient(dy, keep, &mut dx);
            dx
        }
        let dx = match &rec.saved {
            Saved::F32(r, _) => CpuStorage::F32(masked(&r.keep, host_slice::<f32>(s, l, "dy")?)),
            Saved::F64(r, _) => CpuStorage::F64(masked(&r.keep, host_slice::<f64>(s, l, "dy")?)),
            #[cfg(feature = "sim")]
            Saved::Kernels(k) => super::sim::bwd_x(&rec.cfg, k, s, l)?,
        };
        Ok((dx, Shape::from_dims(&rec.dims)))
    }
}

/// `[sum_b CE_b, S]` of the record the [`ForwardOp`] left.
pub(crate) struct TermsOp {
    pub(crate) record: Arc<OnceLock<Record>>,
}

impl Record {
    /// `N` of a forward with targets.
    pub(crate) fn gate_count(&self) -> Option<u64> {
        match &self.saved {
            Saved::F32(r, _) => r.aux.as_ref().map(|a| a.gate_count),
            Saved::F64(r, _) => r.aux.as_ref().map(|a| a.gate_count),
            #[cfg(feature = "sim")]
            Saved::Kernels(k) => k.gate_count(),
        }
    }
}

fn no_targets() -> candle_core::Error {
    unsupported("the aiec terms of a forward without targets".into())
}

/// `[sum_b CE_b, S]` in `F` from a reference record.
fn reference_terms<F: Float + WithDType>(r: &ForwardRecord<F>) -> candle_core::Result<Vec<F>> {
    let aux = r.aux.as_ref().ok_or_else(no_targets)?;
    let k = aux.classes;
    let mut ce = F::ZERO;
    for (b, &t) in aux.targets.iter().enumerate() {
        ce += cross_entropy(&aux.logits[b * k..(b + 1) * k], t);
    }
    Ok(vec![ce, aux.gate_sum_sq])
}

/// `dx`, `dW` of the terms from the reference's backward with `dy = 0` and the
/// incoming gradients as the loss scales.
fn reference_terms_backward<F: Float + WithDType>(
    cfg: &AiecConfig,
    r: &ForwardRecord<F>,
    w: &[F],
    d_ce: f64,
    d_s: f64,
) -> candle_core::Result<(Vec<F>, Vec<f32>)> {
    // d(sum_b CE_b)/dlogits = softmax - onehot, and dS/dv = 2 v mask: the
    // reference's scales with aux_scale = d_ce and gate_scale = 2 dS.
    let scales = LossScales::unbound(<F as Float>::from_f64(d_ce), <F as Float>::from_f64(2.0 * d_s));
    let zeros = vec![F::ZERO; r.keep.len()];
    let g = cpu::backward(cfg, r, w, &zeros, &scales).candle()?;
    Ok((g.dx, g.dw.into_iter().map(|v| Float::to_f64(v) as f32).collect()))
}

impl CustomOp2 for TermsOp {
    fn name(&self) -> &'static str {
        "aiec-terms"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let rec = recorded(&self.record)?;
        let terms = match &rec.saved {
            Saved::F32(r, _) => CpuStorage::F32(reference_terms(r)?),
            Saved::F64(r, _) => CpuStorage::F64(reference_terms(r)?),
            #[cfg(feature = "sim")]
            Saved::Kernels(k) => CpuStorage::F32(k.terms().ok_or_else(no_targets)?),
        };
        Ok((terms, Shape::from_dims(&[2])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _terms: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() && !w.track_op() {
            return Ok((None, None));
        }
        let rec = recorded(&self.record)?;
        let g = grad.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let (d_ce, d_s) = (g[0], g[1]);
        let dev = x.device();
        let (k, c) = (rec.cfg.classes(), rec.cfg.channels());
        let (dx, dw) = match &rec.saved {
            Saved::F32(r, w) => {
                let (dx, dw) = reference_terms_backward(&rec.cfg, r, w, d_ce, d_s)?;
                (Tensor::from_vec(dx, rec.dims.as_slice(), dev)?, dw)
            }
            Saved::F64(r, w) => {
                let (dx, dw) = reference_terms_backward(&rec.cfg, r, w, d_ce, d_s)?;
                (Tensor::from_vec(dx, rec.dims.as_slice(), dev)?, dw)
            }
            #[cfg(feature = "sim")]
            Saved::Kernels(kr) => super::sim::backward_terms(&rec.cfg, kr, d_ce, d_s, &rec.dims, dev)?,
        };
        let dw = w.track_op().then(|| Tensor::from_vec(dw, (k, c), dev)).transpose()?;
        Ok((x.track_op().then_some(dx), dw))
    }
}
