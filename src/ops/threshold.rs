//! The threshold unit on a device (`kernels/threshold.cu`): `y = x` where NOT
//! `x <= tau`, else 0, and its gradient. Judged by the threshold step of
//! [`crate::cpu::forward`].

use crate::error::{AiecError, Result};
use crate::launch;
use crate::tensor::Tensor;

fn check_tau(tau: f32) -> Result<()> {
    if !tau.is_finite() || tau < 0.0 {
        return Err(AiecError::InvalidTau { tau: tau as f64 });
    }
    Ok(())
}

/// `y = threshold(x)` into an existing `y` of the same device, type and shape.
pub fn forward_into(x: &Tensor, y: &mut Tensor, tau: f32) -> Result<()> {
    check_tau(tau)?;
    x.expect_like("y", y)?;
    let dev = x.device();
    if let Some(plan) =
        launch::threshold_fwd(x.dtype(), x.len() as u64, x.address(), y.address(), tau, dev.limits())
    {
        // SAFETY: x and y are live buffers of this device with `len` elements of
        // the plan's type (checked above); `y` is borrowed mutably, so nothing
        // else touches it during the launch, and it cannot alias `x`.
        unsafe { dev.launch(&plan) }?;
    }
    Ok(())
}

/// `y = threshold(x)`, a new tensor.
pub fn forward(x: &Tensor, tau: f32) -> Result<Tensor> {
    let mut y = Tensor::unwritten(x.device(), x.dtype(), x.shape())?; // written in full
    forward_into(x, &mut y, tau)?;
    Ok(y)
}

/// `dx = dy` where NOT `x <= tau`, else 0, written over `dy` (in place).
pub fn backward_inplace(x: &Tensor, dy: &mut Tensor, tau: f32) -> Result<()> {
    check_tau(tau)?;
    x.expect_like("dy", dy)?;
    let dev = x.device();
    let a = dy.address();
    if let Some(plan) = launch::threshold_bwd(x.dtype(), x.len() as u64, x.address(), a, a, tau, dev.limits())
    {
        // SAFETY: as in `forward_into`; the kernel allows dx == dy.
        unsafe { dev.launch(&plan) }?;
    }
    Ok(())
}

/// `dx = dy` where NOT `x <= tau`, else 0, a new tensor.
pub fn backward(x: &Tensor, dy: &Tensor, tau: f32) -> Result<Tensor> {
    check_tau(tau)?;
    x.expect_like("dy", dy)?;
    let dev = x.device();
    let dx = Tensor::unwritten(dev, x.dtype(), x.shape())?; // written in full
    if let Some(plan) = launch::threshold_bwd(
        x.dtype(),
        x.len() as u64,
        x.address(),
        dy.address(),
        dx.address(),
        tau,
        dev.limits(),
    ) {
        // SAFETY: as in `forward_into`; `dx` is fresh and owned here.
        unsafe { dev.launch(&plan) }?;
    }
    Ok(dx)
}
