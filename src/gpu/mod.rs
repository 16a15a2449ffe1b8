//! The fused AIEC op on a [`crate::Device`] (CUDA or the simulator), in the
//! same three levels as the CPU reference, name for name:
//! * [`op`]: `forward` / `backward` of one layer (3 + 2 launches, no host sync);
//! * [`loss`]: `combine` the records of `L` layers on the device;
//! * [`layer`]: `GpuLayer` owns `W`, the counters, the step, train/eval.

pub mod layer;
pub mod loss;
pub mod op;

pub use layer::GpuLayer;
pub use loss::{combine, GpuLosses};
pub use op::{backward, backward_inplace, forward, GpuAux, GpuCounters, GpuGradients, GpuRecord};
