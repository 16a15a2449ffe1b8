//! Layer level on a device, mirroring [`crate::cpu::AiecLayer`]: owns `W` and
//! the counters in device memory and a [`Workspace`] for its per-step
//! buffers, and applies the shared layer policy ([`LayerPolicy`]: step
//! counter, update interval, train/eval).

use crate::alloc;
use crate::buffer::Buffer;
use crate::config::AiecConfig;
use crate::counters::Counters;
use crate::device::Device;
use crate::error::{AiecError, Result};
use std::sync::Arc;

use crate::gpu::counters::GpuCounters;
use crate::gpu::dp::CountSum;
use crate::gpu::loss::GpuLosses;
use crate::gpu::op::{self, GpuGradients, GradsMut, LayerStep, Targets};
use crate::gpu::record::{GpuRecord, RankSum};
use crate::gpu::workspace::Workspace;
use crate::init::xavier_values;
use crate::policy::LayerPolicy;
use crate::tensor::Tensor;
use crate::view::{TensorMut, TensorRef};

/// One AIEC layer on a device. Starts in training mode.
pub struct GpuLayer {
    cfg: AiecConfig,
    w: Buffer<f32>,
    counters: GpuCounters,
    policy: LayerPolicy,
    ws: Workspace,
    count_sum: Option<Arc<dyn CountSum>>,
}

impl GpuLayer {
    /// Xavier-uniform weights from `seed`, the same values as
    /// [`crate::cpu::AiecLayer::new`] with that seed (rounded to `f32`).
    pub fn new(device: &Device, cfg: AiecConfig, seed: u64) -> Result<Self> {
        let (k, c) = (cfg.classes(), cfg.channels());
        let mut w = alloc::filled("W [K, C] (host copy)", k * c, 0f32)?;
        for (o, v) in w.iter_mut().zip(xavier_values(k, c, seed)) {
            *o = v as f32;
        }
        Self::with_weights(device, cfg, &w)
    }

    /// A layer with the given weights `[K, C]`.
    pub fn with_weights(device: &Device, cfg: AiecConfig, w: &[f32]) -> Result<Self> {
        let kc = cfg.classes() * cfg.channels();
        if w.len() != kc {
            return Err(AiecError::LengthMismatch { what: "W [K, C]", expected: kc, got: w.len() });
        }
        Ok(GpuLayer {
            cfg,
            w: Buffer::from_slice(device, w)?,
            counters: GpuCounters::new(device, cfg.classes(), cfg.channels())?,
            policy: LayerPolicy::new(cfg.update_interval())?,
            ws: Workspace::new(device),
            count_sum: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AiecConfig {
        &self.cfg
    }
    /// The device.
    pub fn device(&self) -> &Device {
        self.w.device()
    }
    /// `W` on the device.
    pub fn weights_buffer(&self) -> &Buffer<f32> {
        &self.w
    }
    /// `W` on the device, writable (an optimiser step in place).
    pub fn weights_buffer_mut(&mut self) -> &mut Buffer<f32> {
        &mut self.w
    }
    /// `W`, downloaded.
    pub fn weights(&self) -> Result<Vec<f32>> {
        self.w.to_vec()
    }
    /// Replaces `W`; the length must be `K * C`.
    pub fn set_weights(&mut self, w: &[f32]) -> Result<()> {
        self.w.copy_from(w)
    }
    /// The counters on the device.
    pub fn counters_buffers(&self) -> &GpuCounters {
        &self.counters
    }
    /// The counters, downloaded.
    pub fn counters(&self) -> Result<Counters> {
        self.counters.to_host()
    }
    /// Replaces the counters; `K` and `C` must match.
    pub fn set_counters(&mut self, counters: &Counters) -> Result<()> {
        counters.check(self.cfg.classes(), self.cfg.channels())?;
        self.counters.copy_from_host(counters)
    }
    /// Data-parallel training: on every update step, sum the counts over the
    /// ranks with `sum` before the gate reads the counters, and normalise the
    /// gate loss of the records by the masked count of all ranks (see
    /// [`crate::gpu::dp`]); `None` counts and normalises this process's
    /// samples alone.
    pub fn set_count_sum(&mut self, sum: Option<Arc<dyn CountSum>>) {
        self.count_sum = sum;
    }
    /// The layer's workspace (its per-step buffers).
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }
    /// Training forwards so far.
    pub fn step(&self) -> u64 {
        self.policy.step()
    }
    /// Sets the step counter, e.g. from a checkpoint (see
    /// [`crate::cpu::AiecLayer::set_step`]).
    pub fn set_step(&mut self, step: u64) {
        self.policy.set_step(step);
    }
    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        self.policy.is_training()
    }
    /// Training mode.
    pub fn train(&mut self) {
        self.policy.train();
    }
    /// Evaluation mode: no step, no update; resets the counters.
    pub fn eval(&mut self) -> Result<()> {
        self.policy.eval();
        self.counters.reset()
    }
    /// Resets the counters to `act = inh = 0`, `total = 1`.
    pub fn reset_counters(&mut self) -> Result<()> {
        self.counters.reset()
    }

    /// The forward into a new `y` (in the record); the same policy as
    /// [`crate::cpu::AiecLayer::forward`]. On error nothing (weights, counters,
    /// step) changes.
    pub fn forward(&mut self, x: &Tensor, targets: Option<&[i64]>) -> Result<GpuRecord> {
        let plan = self.policy.plan(targets.is_some());
        let targets = targets.map(Targets::Host);
        let sum = self.count_sum.as_deref();
        let layer = LayerStep { w: &self.w.view(), counters: &mut self.counters, update: plan.update };
        let mut rec = op::forward_owned(&self.cfg, layer, x, targets, &self.ws, sum)?;
        rec.ranks = self.count_sum.clone().map(RankSum);
        self.policy.commit(plan);
        Ok(rec)
    }

    /// The forward into the caller's `y`, on host or device targets, with the
    /// layer's workspace: with device targets a steady step allocates nothing,
    /// copies nothing and waits for nothing (so it can be captured in a CUDA
    /// graph). On error nothing changes (a bad device target: see
    /// [`Targets::Device`]).
    pub fn forward_into(
        &mut self,
        x: &TensorRef,
        targets: Option<Targets>,
        y: &mut TensorMut,
    ) -> Result<GpuRecord> {
        let plan = self.policy.plan(targets.is_some());
        let sum = self.count_sum.as_deref();
        let layer = LayerStep { w: &self.w.view(), counters: &mut self.counters, update: plan.update };
        let mut rec = op::forward_with_sum(&self.cfg, layer, x, targets, &self.ws, y, sum)?;
        rec.ranks = self.count_sum.clone().map(RankSum);
        self.policy.commit(plan);
        Ok(rec)
    }

    /// The backward into a new `dx` and `dW`.
    pub fn backward(&self, record: &GpuRecord, dy: &Tensor, losses: &GpuLosses) -> Result<GpuGradients> {
        op::backward_owned(&self.cfg, record, &self.w.view(), dy, losses, &self.ws)
    }

    /// The backward writing `dx` over `dy`; returns a new `dW`.
    pub fn backward_inplace(
        &self,
        record: &GpuRecord,
        dy: &mut Tensor,
        losses: &GpuLosses,
    ) -> Result<Buffer<f32>> {
        op::backward_inplace_owned(&self.cfg, record, &self.w.view(), dy, losses, &self.ws)
    }

    /// The backward into the caller's `dx` and `dW` ([`GradsMut`]: `dx` into
    /// its own buffer or over `dy`, `dW` written or accumulated).
    pub fn backward_into(&self, record: &GpuRecord, out: GradsMut, losses: &GpuLosses) -> Result<()> {
        op::backward_with(&self.cfg, record, &self.w.view(), losses, &self.ws, out)
    }
}
