//! The fused AIEC op on a [`crate::Device`] (CUDA or the simulator), in the
//! same three levels as the CPU reference, name for name, over one level of
//! views:
//! * [`fused`]: the op on views, every buffer the caller's (what the
//!   framework adapters use): nothing allocated, copied or synchronised;
//! * [`op`]: `forward` / `backward` of one layer (3 + 2 launches, no host
//!   sync), per-step buffers from a [`Workspace`];
//! * [`loss`]: `combine` the records of `L` layers on the device;
//! * [`layer`]: `GpuLayer` owns `W`, the counters and a workspace, and
//!   applies the shared layer policy.

pub mod counters;
pub mod dp;
pub mod fused;
pub mod layer;
pub mod loss;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod op;
pub mod record;
pub mod workspace;

pub use counters::GpuCounters;
pub use fused::{DwMode, Dx};
pub use layer::GpuLayer;
pub use loss::{combine, combine_in, GpuLosses};
pub use op::{
    backward, backward_inplace, backward_with, forward, forward_with, GpuGradients, GradsMut, LayerStep,
    Targets,
};
pub use record::{GpuAux, GpuRecord};
pub use workspace::Workspace;
