//! Launchers of the kernels on a [`crate::Device`]: check the tensors, build
//! the launch plan ([`crate::launch`]), launch. One file per kernel file.

pub mod convert;
pub mod threshold;
