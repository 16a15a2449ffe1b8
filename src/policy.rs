//! The layer policy, written once and shared by every layer front-end (the
//! CPU reference's [`crate::cpu::AiecLayer`], the device's
//! [`crate::gpu::GpuLayer`], and the framework layers built on them): the step
//! counter, the update-interval rule, the train/eval switch and when the
//! counters reset.
//!
//! The rules (docs/SPEC.md, "Layer state"), which follow the published module:
//! * a forward in training mode increments the step `s` first, with or without
//!   targets; one in evaluation mode does not;
//! * with targets, a forward computes the decision, gate and loss parts (in
//!   evaluation mode too, where they use the reset counters); without targets it
//!   is the threshold alone;
//! * the counters update on a training forward with targets when
//!   `s % update_interval == 0`;
//! * switching to evaluation resets the counters (every call, as the published
//!   `train(False)` does); nothing else does, except an explicit reset.
//!
//! A front-end asks [`LayerPolicy::plan`] what a forward does, runs it, and
//! only if it succeeded calls [`LayerPolicy::commit`]: bad input then leaves
//! the step unchanged.

use crate::error::{AiecError, Result};

/// The step counter and train/eval mode of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerPolicy {
    update_interval: u64,
    step: u64,
    training: bool,
}

/// What one forward does, decided before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// Run the decision, counting and gate units (the forward has targets).
    pub aux: bool,
    /// Update the counters in this forward.
    pub update: bool,
    /// The step counter after this forward.
    pub next_step: u64,
}

impl LayerPolicy {
    /// A layer in training mode at step 0; `update_interval >= 1`.
    pub fn new(update_interval: u64) -> Result<Self> {
        if update_interval == 0 {
            return Err(AiecError::ZeroUpdateInterval);
        }
        Ok(LayerPolicy { update_interval, step: 0, training: true })
    }

    /// What a forward with (`has_targets`) or without targets does now.
    pub fn plan(&self, has_targets: bool) -> StepPlan {
        if !self.training {
            return StepPlan { aux: has_targets, update: false, next_step: self.step };
        }
        let next = self.step + 1;
        StepPlan {
            aux: has_targets,
            update: has_targets && next % self.update_interval == 0,
            next_step: next,
        }
    }

    /// Records that the planned forward ran.
    pub fn commit(&mut self, plan: StepPlan) {
        self.step = plan.next_step;
    }

    /// Training forwards so far (the step counter `s`).
    pub fn step(&self) -> u64 {
        self.step
    }
    /// Sets the step counter, e.g. from a checkpoint: with the weights and the
    /// counters it is the layer's whole state, and it decides on which steps
    /// the counters update.
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }
    /// The update interval.
    pub fn update_interval(&self) -> u64 {
        self.update_interval
    }
    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }
    /// Training mode.
    pub fn train(&mut self) {
        self.training = true;
    }
    /// Evaluation mode. The caller resets its counters (always: every switch
    /// to evaluation clears them).
    pub fn eval(&mut self) {
        self.training = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_of_the_spec() {
        let mut p = LayerPolicy::new(3).unwrap();
        let mut updates = Vec::new();
        for _ in 0..7 {
            let plan = p.plan(true);
            assert!(plan.aux);
            if plan.update {
                updates.push(plan.next_step);
            }
            p.commit(plan);
        }
        assert_eq!(updates, [3, 6], "the first update is on the update_interval-th forward");
        let without = p.plan(false);
        assert_eq!((without.aux, without.update, without.next_step), (false, false, 8), "counts the step");
        p.commit(without);
        p.eval();
        let e = p.plan(true);
        assert_eq!((e.aux, e.update, e.next_step), (true, false, 8), "evaluation: aux, no update, no step");
        p.train();
        let uncommitted = p.plan(true);
        assert_eq!(uncommitted.next_step, 9);
        assert_eq!(p.step(), 8, "a plan that was not committed (a failed forward) moves nothing");
        assert!(matches!(LayerPolicy::new(0), Err(AiecError::ZeroUpdateInterval)));
    }
}
