//! Layer level of the CPU reference: owns `W` and the counters, and applies
//! the shared layer policy ([`crate::policy::LayerPolicy`]: step counter,
//! update interval, train/eval) on top of the stateless op.

use crate::alloc;
use crate::config::AiecConfig;
use crate::counters::Counters;
use crate::cpu::float::Float;
use crate::cpu::op::{self, ForwardRecord, Gradients};
use crate::cpu::scales::LossScales;
use crate::error::{AiecError, Result};
use crate::init::xavier_values;
use crate::policy::LayerPolicy;

/// One AIEC layer on the CPU. Starts in training mode, like a fresh PyTorch module.
#[derive(Debug, Clone)]
pub struct AiecLayer<F> {
    cfg: AiecConfig,
    w: Vec<F>,
    counters: Counters,
    policy: LayerPolicy,
}

impl<F: Float> AiecLayer<F> {
    /// A layer with Xavier-uniform weights from `seed` (`U(-a, a)`, `a = sqrt(6 / (K + C))`).
    /// A `K * C` the host cannot hold is [`AiecError::OutOfMemory`], not an abort.
    pub fn new(cfg: AiecConfig, seed: u64) -> Result<Self> {
        let (k, c) = (cfg.classes(), cfg.channels());
        let mut w = alloc::filled("W [K, C]", k * c, F::ZERO)?;
        for (o, v) in w.iter_mut().zip(xavier_values(k, c, seed)) {
            *o = F::from_f64(v);
        }
        Self::from_parts(cfg, w)
    }

    /// A layer with the given weights `[K, C]`.
    pub fn with_weights(cfg: AiecConfig, w: Vec<F>) -> Result<Self> {
        let kc = cfg.classes() * cfg.channels();
        if w.len() != kc {
            return Err(AiecError::LengthMismatch { what: "W [K, C]", expected: kc, got: w.len() });
        }
        Self::from_parts(cfg, w)
    }

    fn from_parts(cfg: AiecConfig, w: Vec<F>) -> Result<Self> {
        let counters = Counters::try_new(cfg.classes(), cfg.channels())?;
        let policy = LayerPolicy::new(cfg.update_interval())?;
        Ok(AiecLayer { cfg, w, counters, policy })
    }

    /// The configuration.
    pub fn config(&self) -> &AiecConfig {
        &self.cfg
    }
    /// `W`, `[K, C]`.
    pub fn weights(&self) -> &[F] {
        &self.w
    }
    /// Replaces `W` (e.g. after an optimiser step); the length must be `K * C`.
    pub fn set_weights(&mut self, w: &[F]) -> Result<()> {
        if w.len() != self.w.len() {
            return Err(AiecError::LengthMismatch { what: "W [K, C]", expected: self.w.len(), got: w.len() });
        }
        self.w.copy_from_slice(w);
        Ok(())
    }
    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Replaces the counters (e.g. from a checkpoint); `K` and `C` must match.
    pub fn set_counters(&mut self, counters: Counters) -> Result<()> {
        counters.check(self.cfg.classes(), self.cfg.channels())?;
        self.counters = counters;
        Ok(())
    }
    /// Training forwards so far (the step counter `s`).
    pub fn step(&self) -> u64 {
        self.policy.step()
    }
    /// Sets the step counter, e.g. from a checkpoint: with the weights and the
    /// counters it is the layer's whole state, and it decides on which steps
    /// the counters update (`s % update_interval == 0`).
    pub fn set_step(&mut self, step: u64) {
        self.policy.set_step(step);
    }
    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        self.policy.is_training()
    }
    /// Training mode: forwards count steps and, with targets, may update the counters.
    pub fn train(&mut self) {
        self.policy.train();
    }
    /// Evaluation mode: no step, no update; resets the counters (spec).
    pub fn eval(&mut self) {
        self.policy.eval();
        self.counters.reset();
    }
    /// Resets the counters to `act = inh = 0`, `total = 1`.
    pub fn reset_counters(&mut self) {
        self.counters.reset();
    }

    /// The forward of this layer (`x` in the layout of the pooling mode, shape `dims`).
    ///
    /// The policy ([`LayerPolicy`]) decides: in training mode the step counter
    /// increments first, and with `targets` the counters update when
    /// `step % update_interval == 0`; with targets the decision and gate units
    /// run (in evaluation mode too, on the reset counters, without updating
    /// them); without targets the result is the threshold alone. On error
    /// nothing (weights, counters, step) changes.
    pub fn forward(&mut self, x: &[F], dims: &[usize], targets: Option<&[i64]>) -> Result<ForwardRecord<F>> {
        let plan = self.policy.plan(targets.is_some());
        let record = op::forward(&self.cfg, x, dims, &self.w, targets, &mut self.counters, plan.update)?;
        self.policy.commit(plan);
        Ok(record)
    }

    /// The backward of a forward of this layer; `scales` come from
    /// [`crate::cpu::loss::combine`] over all layers sharing the targets.
    pub fn backward(
        &self,
        record: &ForwardRecord<F>,
        dy: &[F],
        scales: &LossScales<F>,
    ) -> Result<Gradients<F>> {
        op::backward(&self.cfg, record, &self.w, dy, scales)
    }
}
