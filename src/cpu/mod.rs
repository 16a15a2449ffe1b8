//! The CPU reference: the judge of every other backend.
//!
//! Three layers that the GPU path mirrors name for name:
//! * [`op`]: stateless `forward` / `backward` of one layer;
//! * [`loss`]: `combine` the records of `L` layers into the aux and gate losses
//!   and the scales their backward needs;
//! * [`layer`]: `AiecLayer`, which owns `W`, the counters, the step and the
//!   train/eval switch.

pub mod buffers;
pub mod float;
pub mod gradcheck;
pub mod layer;
pub mod loss;
pub mod op;
pub mod parts;
pub mod scales;

pub use float::Float;
pub use layer::AiecLayer;
pub use loss::{combine, LossCoefs, Losses};
pub use op::{backward, forward, AuxRecord, ForwardRecord, Gradients};
pub use scales::LossScales;
