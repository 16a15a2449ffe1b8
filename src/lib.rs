//! # aiec
//!
//! Fused CUDA kernels for **AIEC** (Activation with Intrinsic-Extrinsic
//! Consensus, ICML 2026), and the CPU reference that judges them.
//!
//! AIEC is a training-time activation: its output is a plain threshold
//! (`y = x` where `x > tau`, else 0), and beside it three units run during
//! training: a decision unit (`logits = pool(y) W^T`, trained by an auxiliary
//! cross-entropy), a counting unit (per class, how often each channel fires on
//! correctly classified samples) and a consensus gate that penalises channels
//! which both judgements call irrelevant. The exact semantics are the
//! contract in the repository's `docs/SPEC.md`; [`cpu`] implements it plainly.
//!
//! ```
//! use aiec::{AiecConfig, Pool};
//! use aiec::cpu::{AiecLayer, combine, LossCoefs};
//!
//! // C = 4 channels, K = 3 classes, tau = 0, a [B, C] input.
//! let cfg = AiecConfig::new(4, 3, 0.0, Pool::None)?;
//! let mut layer = AiecLayer::<f32>::new(cfg, 42)?;
//! let x = [0.5, -1.0, 2.0, 0.0, 1.0, 1.0, -0.5, 3.0];
//! let rec = layer.forward(&x, &[2, 4], Some(&[0, 2]))?;
//! assert_eq!(rec.y, [0.5, 0.0, 2.0, 0.0, 1.0, 1.0, 0.0, 3.0]);
//! let losses = combine(&[&rec], LossCoefs::PAPER)?;
//! let grads = layer.backward(&rec, &[0.0; 8], &losses.scales)?;
//! assert_eq!(grads.dw.len(), 3 * 4);
//! # Ok::<(), aiec::AiecError>(())
//! ```
#![warn(missing_docs)]

mod alloc;
pub mod buffer;
#[cfg(feature = "candle")]
pub mod candle;
pub mod config;
pub mod counters;
pub mod cpu;
pub mod device;
pub mod dtype;
pub mod error;
pub mod gpu;
pub mod init;
pub mod launch;
pub mod layout;
pub mod nvrtc;
pub mod ops;
pub mod origin;
pub mod params;
pub mod policy;
mod pool;
pub mod resources;
pub mod tensor;
pub mod view;

/// This crate's version (`Cargo.toml`), for diagnostics.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use buffer::Buffer;
pub use config::{AiecConfig, InputDims, LossCoefs, Pool};
pub use counters::Counters;
pub use device::{available_devices, cuda_driver, CudaDriver, Device, DeviceKind, DeviceStats};
pub use dtype::{DType, Element};
pub use error::{AiecError, Result};
pub use tensor::Tensor;
pub use view::{SliceMut, SliceRef, TensorMut, TensorRef};

/// The README's examples compile and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
