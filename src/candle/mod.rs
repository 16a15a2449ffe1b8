//! AIEC as a layer of a [candle](https://github.com/huggingface/candle) model,
//! trained by candle's autograd (cargo feature `candle`).
//!
//! ```
//! use aiec::candle::{losses, Aiec};
//! use aiec::{AiecConfig, Pool};
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Optimizer, VarBuilder, VarMap};
//!
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
//! // C = 8 channels, K = 3 classes, tau = 0, a [B, C] input; W from a seed.
//! let cfg = AiecConfig::new(8, 3, 0.0, Pool::None).map_err(aiec::candle::to_candle)?;
//! let act = Aiec::new_seeded(cfg, vb.pp("aiec"), 7)?;
//! let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-3)?;
//!
//! let x = Tensor::randn(0f32, 1.0, (4, 8), &dev)?;
//! let targets = Tensor::new(&[0u32, 2, 1, 2], &dev)?;
//! let y = act.forward(&x, Some(&targets))?;                // [B, C], like a ReLU
//! let task = y.sqr()?.mean_all()?;                         // the rest of your model
//! let aiec = losses(&[&act])?;                             // every AIEC layer, in any order
//! let loss = (task + aiec.paper_objective()?)?;            // + 1 * aux + 200 * gate
//! opt.backward_step(&loss)?;                               // trains W with the rest
//! println!("aux {:.3} gate {:.3}", aiec.values()?.aux, aiec.values()?.gate);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! # What goes into candle's graph
//!
//! A forward with targets adds two custom ops on `(x, W)` to the graph, both
//! reading one record of one run of the crate's forward (the layer's policy
//! decides the step and whether the counters update; nothing is computed twice):
//!
//! * `y = aiec(x, W)`, the layer's output; its backward is the threshold's,
//!   `dx = keep ? dy : 0` (`keep` = NOT `x <= tau`, from the core's forward);
//! * `terms = aiec-terms(x, W) = [sum_b CE_b, S]` ([`Terms`]); its backward
//!   takes the incoming `(d ce_sum, dS)` as the loss scales of the crate's
//!   backward (`aux_scale = d ce_sum`, `gate_scale = 2 dS`; `dy = 0`) and
//!   returns its `dx = keep ? unpool(dv) : 0` and `dW = dlogits^T v`.
//!
//! candle adds the two `dx`, which gives the spec's `dx = keep ? dy +
//! unpool(dv) : 0`. [`losses`] / [`combine`] turn the terms of `L` layers into
//! `aux = sum_l ce_sum_l / (L B)` and `gate = sum_l S_l / max(sum_l N_l, 1)`
//! with ordinary candle ops (`N` is a count, not differentiated: the mask is a
//! constant of the step, as in the spec), and the caller writes
//! `loss = task + aux_coef * aux + gate_coef * gate`.
//!
//! **Why this design.** A candle custom op has one output, and the fused op's
//! own backward (`gpu::fused::backward`) folds the losses in with fixed
//! factors (`aux_coef / (L B)`, `2 gate_coef / sum N`). Folding them in behind
//! candle's back would silently ignore anything the caller does to the loss:
//! a loss scale, `loss / n` for gradient accumulation, another coefficient, a
//! schedule. Here the two losses are ordinary nodes of the caller's loss, so
//! any such scaling reaches `d ce_sum` and `dS`, and through them `dx` and `dW`,
//! exactly (tested). The losses need all layers' `N` before any backward (the
//! gate's normalisation is over all layers), which candle's graph provides for
//! free. **The cost** is memory traffic: the terms' backward makes a pass over
//! activation-sized memory of its own (a zero `dy` in, a `dx` out) and candle
//! adds the two `dx`, three passes where the fused backward makes one; and in
//! f16 and bf16 one more rounding, as each part of `dx` is rounded to the
//! activation type before candle adds them (the tests allow twice the
//! tolerance of one rounding there). On candle's CPU tensors the layer's
//! `O(B K C)` work and the model's matrix products around it dominate, so
//! this is the simple, exact choice. Fusing the two backwards into one
//! `fused::backward` (`dy` and the two gradients together) would need the
//! terms' backward to hand its gradients to the threshold's behind candle's
//! back, relying on the order candle runs them in; this adapter does not.
//!
//! # Backends
//!
//! | candle tensor | backend | dtypes of `x` |
//! | --- | --- | --- |
//! | CPU | [`Backend::Reference`] (default): [`crate::cpu::forward`] / [`crate::cpu::backward`] | f32, f64 (`W` widened; `dW` f32) |
//! | CPU, feature `sim` | [`Backend::Kernels`] ([`Aiec::on_device`] with [`crate::Device::sim`]): the real kernels through [`crate::gpu::fused`] on views of candle's memory ([`crate::TensorRef::host`]) | f32, f16, bf16 |
//! | CUDA, Metal | none in this crate: a typed error (candle's "no cuda implementation for aiec"); see [`cuda`] for running the op on candle's own CUDA memory and stream | |
//!
//! Any other dtype is [`crate::AiecError::Unsupported`]. `W` is always an f32
//! [`candle_core::Var`] `[K, C]` (the spec's float32 parameter), and the
//! terms are f32 (f64 for an f64 input).
//!
//! # State
//!
//! The counters, the step and train/eval follow the one
//! [`crate::policy::LayerPolicy`] of every layer front-end (docs/SPEC.md,
//! "Layer state"): a training forward increments the step, the counters
//! update when `step % update_interval == 0` on a forward with targets, and
//! [`Aiec::eval`] resets the counters. Like candle's layers, `forward` takes
//! `&self`; the state sits behind a mutex. Bad input is an error before any
//! state changes (weights, counters, step); the error is an
//! [`crate::AiecError`] inside the candle error ([`aiec_error`] takes it out).

pub mod cuda;
mod error;
mod loss;
mod ops;
#[cfg(feature = "sim")]
mod sim;

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Tensor, Var};
use candle_nn::VarBuilder;

use crate::config::AiecConfig;
use crate::counters::Counters;
use crate::error::AiecError;
use crate::init::xavier_uniform;
use crate::policy::LayerPolicy;

pub use error::{aiec_error, to_candle};
pub use loss::{combine, losses, LossValues, Losses, Terms};

use error::IntoCandle;
use ops::{lock, ForwardOp, State, TermsOp};

/// Where a layer's op runs.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The CPU reference ([`crate::cpu`]), on candle CPU tensors of f32 or f64.
    Reference,
    /// The kernels on a simulator device ([`crate::gpu::fused`] on views of
    /// candle's CPU memory), f32, f16 and bf16.
    #[cfg(feature = "sim")]
    Kernels(crate::Device),
}

/// An AIEC layer for candle models: `W` `[K, C]` (a [`Var`] from the
/// [`VarBuilder`], so candle-nn's optimisers train it), the counters, the
/// step and train/eval. Starts in training mode.
pub struct Aiec {
    cfg: AiecConfig,
    w: Tensor,
    backend: Backend,
    pub(crate) state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Aiec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.state);
        write!(
            f,
            "Aiec(C = {}, K = {}, {}, {:?}, step {}, {})",
            self.cfg.channels(),
            self.cfg.classes(),
            self.cfg.pool(),
            self.backend,
            st.policy.step(),
            if st.policy.is_training() { "train" } else { "eval" }
        )
    }
}

impl Aiec {
    /// `W` `[K, C]` f32 as `weight` of `vb`: Xavier-uniform (`U(-a, a)`,
    /// `a = sqrt(6 / (K + C))`) from candle's generator when `vb` creates it (a
    /// [`candle_nn::VarMap`]), or the stored tensor when `vb` has one.
    pub fn new(cfg: AiecConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (k, c) = (cfg.classes(), cfg.channels());
        let a = (6.0 / (k + c) as f64).sqrt();
        let w = vb.get_with_hints_dtype(
            (k, c),
            "weight",
            candle_nn::Init::Uniform { lo: -a, up: a },
            DType::F32,
        )?;
        let policy = LayerPolicy::new(cfg.update_interval()).candle()?;
        let state = State { counters: Counters::try_new(k, c).candle()?, policy, terms: None };
        Ok(Aiec { cfg, w, backend: Backend::Reference, state: Arc::new(Mutex::new(state)) })
    }

    /// As [`Aiec::new`], then `W` set to [`crate::init::xavier_uniform`] of
    /// `seed` (the values of [`crate::cpu::AiecLayer::new`] with that seed,
    /// rounded to f32; candle's own generator cannot be seeded). `W` must be a
    /// variable (a `VarBuilder` over a `VarMap`).
    pub fn new_seeded(cfg: AiecConfig, vb: VarBuilder, seed: u64) -> candle_core::Result<Self> {
        let layer = Self::new(cfg, vb)?;
        if !layer.w.is_variable() {
            return Err(to_candle(AiecError::Unsupported {
                what: "a seeded W needs a VarBuilder that creates variables (a VarMap)".into(),
            }));
        }
        let (k, c) = (cfg.classes(), cfg.channels());
        let w: Vec<f32> = xavier_uniform(k, c, seed).into_iter().map(|v| v as f32).collect();
        Var::from_tensor(&layer.w)?.set(&Tensor::from_vec(w, (k, c), layer.w.device())?)?;
        Ok(layer)
    }

    /// The layer running on the kernels of `device`, which must be a simulator
    /// (its memory is host memory, as candle's CPU tensors are).
    #[cfg(feature = "sim")]
    pub fn on_device(mut self, device: crate::Device) -> candle_core::Result<Self> {
        if device.kind() != crate::DeviceKind::Sim {
            return Err(to_candle(AiecError::DeviceMismatch {
                what: "aiec::candle::Aiec on candle CPU tensors",
                expected: "a simulator device (Device::sim)".into(),
                got: device.label().to_string(),
            }));
        }
        self.backend = Backend::Kernels(device);
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &AiecConfig {
        &self.cfg
    }
    /// `W`, `[K, C]` f32 (the variable's tensor: an optimiser's update shows here).
    pub fn weight(&self) -> &Tensor {
        &self.w
    }
    /// Where the op runs.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The layer's forward: `y`, the shape and dtype of `x` (the layout of the
    /// pooling mode). With `targets` (`[B]` class indices, u8/u32/i16/i32/i64)
    /// the decision, counting and gate units run and the layer keeps the
    /// [`Terms`] that [`losses`] combines; without, `y` is the threshold alone.
    /// On error nothing changes (weights, counters, step, the kept terms).
    pub fn forward(&self, x: &Tensor, targets: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (y, terms) = self.forward_parts(x, targets)?;
        lock(&self.state).terms = terms;
        Ok(y)
    }

    /// [`Aiec::forward`] returning the terms instead of keeping them (for
    /// [`combine`]: several forwards of one layer before one backward).
    pub fn forward_parts(
        &self,
        x: &Tensor,
        targets: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Option<Terms>)> {
        let targets = targets.map(read_targets).transpose()?;
        let x = x.contiguous()?;
        let record = Arc::new(OnceLock::new());
        let op = ForwardOp {
            cfg: self.cfg,
            backend: self.backend.clone(),
            state: self.state.clone(),
            targets: targets.clone(),
            record: record.clone(),
        };
        let y = x.apply_op2(&self.w, op)?;
        let Some(targets) = targets else { return Ok((y, None)) };
        let gate_count = record.get().and_then(|r| r.gate_count()).unwrap_or(0);
        let tensor = x.apply_op2(&self.w, TermsOp { record })?;
        Ok((y, Some(Terms { tensor, gate_count, targets: Arc::new(targets) })))
    }

    /// The terms the last [`Aiec::forward`] kept (`None` after one without targets).
    pub fn terms(&self) -> Option<Terms> {
        lock(&self.state).terms.clone()
    }

    /// Training mode: forwards count steps and, with targets, may update the counters.
    pub fn train(&self) {
        lock(&self.state).policy.train();
    }
    /// Evaluation mode: no step, no update; resets the counters (every call, as the spec says).
    pub fn eval(&self) {
        let mut st = lock(&self.state);
        st.policy.eval();
        st.counters.reset();
    }
    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        lock(&self.state).policy.is_training()
    }
    /// Training forwards so far (the step `s`).
    pub fn step(&self) -> u64 {
        lock(&self.state).policy.step()
    }
    /// Sets the step, e.g. from a checkpoint (with `W` and the counters, the layer's whole state).
    pub fn set_step(&self, step: u64) {
        lock(&self.state).policy.set_step(step);
    }
    /// A copy of the counters.
    pub fn counters(&self) -> Counters {
        lock(&self.state).counters.clone()
    }
    /// Replaces the counters (a checkpoint, or a snapshot); `K` and `C` must match.
    pub fn set_counters(&self, counters: Counters) -> candle_core::Result<()> {
        counters.check(self.cfg.classes(), self.cfg.channels()).candle()?;
        lock(&self.state).counters = counters;
        Ok(())
    }
    /// Resets the counters to `act = inh = 0`, `total = 1`.
    pub fn reset_counters(&self) {
        lock(&self.state).counters.reset();
    }
}

/// The forward without targets (the threshold alone; a training-mode call
/// still counts a step), for `x.apply(&layer)` and [`candle_nn::Sequential`].
impl candle_core::Module for Aiec {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Aiec::forward(self, x, None)
    }
}

/// The targets as host indices: a 1-d tensor of an integer dtype.
fn read_targets(t: &Tensor) -> candle_core::Result<Vec<i64>> {
    let unsupported = |why: &str| {
        to_candle(AiecError::Unsupported {
            what: format!("targets of shape {:?} and dtype {:?}: {why}", t.dims(), t.dtype()),
        })
    };
    if t.rank() != 1 {
        return Err(unsupported("a 1-d tensor [B] of class indices is needed"));
    }
    match t.dtype() {
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 => {
            t.to_dtype(DType::I64)?.to_vec1::<i64>()
        }
        _ => Err(unsupported("class indices need an integer dtype (u8, u32, i16, i32, i64)")),
    }
}
