//! Layer level on a device, mirroring [`crate::cpu::AiecLayer`]: owns `W` and
//! the counters in device memory, the step counter and the train/eval switch.

use crate::buffer::Buffer;
use crate::config::AiecConfig;
use crate::counters::Counters;
use crate::device::Device;
use crate::error::{AiecError, Result};
use crate::gpu::loss::GpuLosses;
use crate::gpu::op::{self, GpuCounters, GpuGradients, GpuRecord};
use crate::init::xavier_uniform;
use crate::tensor::Tensor;

/// One AIEC layer on a device. Starts in training mode.
pub struct GpuLayer {
    cfg: AiecConfig,
    w: Buffer<f32>,
    counters: GpuCounters,
    step: u64,
    training: bool,
}

impl GpuLayer {
    /// Xavier-uniform weights from `seed`, the same values as
    /// [`crate::cpu::AiecLayer::new`] with that seed (rounded to `f32`).
    pub fn new(device: &Device, cfg: AiecConfig, seed: u64) -> Result<Self> {
        let w: Vec<f32> =
            xavier_uniform(cfg.classes(), cfg.channels(), seed).into_iter().map(|v| v as f32).collect();
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
            step: 0,
            training: true,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AiecConfig {
        &self.cfg
    }
    /// `W` on the device.
    pub fn weights_buffer(&self) -> &Buffer<f32> {
        &self.w
    }
    /// `W`, downloaded.
    pub fn weights(&self) -> Result<Vec<f32>> {
        self.w.to_vec()
    }
    /// Replaces `W`; the length must be `K * C`.
    pub fn set_weights(&mut self, w: &[f32]) -> Result<()> {
        self.w.copy_from(w)
    }
    /// The counters, downloaded.
    pub fn counters(&self) -> Result<Counters> {
        self.counters.to_host()
    }
    /// Replaces the counters; `K` and `C` must match.
    pub fn set_counters(&mut self, counters: &Counters) -> Result<()> {
        counters.check(self.cfg.classes(), self.cfg.channels())?;
        self.counters = GpuCounters::from_host(self.w.device(), counters)?;
        Ok(())
    }
    /// Training forwards so far.
    pub fn step(&self) -> u64 {
        self.step
    }
    /// Sets the step counter, e.g. from a checkpoint (see
    /// [`crate::cpu::AiecLayer::set_step`]).
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }
    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }
    /// Training mode.
    pub fn train(&mut self) {
        self.training = true;
    }
    /// Evaluation mode: the threshold alone; resets the counters.
    pub fn eval(&mut self) -> Result<()> {
        self.training = false;
        self.counters.reset()
    }
    /// Resets the counters to `act = inh = 0`, `total = 1`.
    pub fn reset_counters(&mut self) -> Result<()> {
        self.counters.reset()
    }

    /// The forward; the same policy as [`crate::cpu::AiecLayer::forward`]. On
    /// error nothing (weights, counters, step) changes.
    pub fn forward(&mut self, x: &Tensor, targets: Option<&[i64]>) -> Result<GpuRecord> {
        if !self.training {
            if let Some(t) = targets {
                let plan = self.cfg.plan_input(x.shape())?;
                crate::cpu::op::check_targets(t, plan.batch, self.cfg.classes())?;
            }
            return op::forward(&self.cfg, x, &self.w, None, &mut self.counters, false);
        }
        let next = self.step + 1;
        let update = targets.is_some() && next % self.cfg.update_interval() == 0;
        let record = op::forward(&self.cfg, x, &self.w, targets, &mut self.counters, update)?;
        self.step = next;
        Ok(record)
    }

    /// The backward into a new `dx`.
    pub fn backward(&self, record: &GpuRecord, dy: &Tensor, losses: &GpuLosses) -> Result<GpuGradients> {
        op::backward(&self.cfg, record, &self.w, dy, losses)
    }

    /// The backward writing `dx` over `dy`; returns `dW`.
    pub fn backward_inplace(
        &self,
        record: &GpuRecord,
        dy: &mut Tensor,
        losses: &GpuLosses,
    ) -> Result<Buffer<f32>> {
        op::backward_inplace(&self.cfg, record, &self.w, dy, losses)
    }
}
