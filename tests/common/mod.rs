//! Shared test support: the golden-case loader, the tolerance table and
//! comparisons, and the backend runners. Included by the integration tests and,
//! through `#[path]`, by `examples/verify.rs`, so each check is written once.
#![allow(dead_code)]

pub mod compare;
pub mod devices;
pub mod golden;
pub mod runner;
#[cfg(feature = "sim")]
pub mod views;
