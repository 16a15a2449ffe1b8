//! Element type conversions on a device (`kernels/convert.cu`), through the
//! same helpers the fused kernels use (`aiec::to_float` / `from_float`).

use crate::dtype::DType;
use crate::error::Result;
use crate::launch;
use crate::tensor::Tensor;

/// `x` widened to `f32` (exact).
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    let dev = x.device();
    let y = Tensor::unwritten(dev, DType::F32, x.shape())?; // the kernel writes every element
    if let Some(plan) =
        launch::convert_to_f32(x.dtype(), x.len() as u64, x.address(), y.address(), dev.limits())
    {
        // SAFETY: x has `len` elements of its type and y `len` f32s, both live
        // on this device; y is fresh and not aliased.
        unsafe { dev.launch(&plan) }?;
    }
    Ok(y)
}

/// `x` (`f32`) rounded to `dtype` (to nearest, ties to even).
pub fn from_f32(x: &Tensor, dtype: DType) -> Result<Tensor> {
    x.expect_dtype("x", DType::F32)?;
    let dev = x.device();
    let y = Tensor::unwritten(dev, dtype, x.shape())?;
    if let Some(plan) =
        launch::convert_from_f32(dtype, x.len() as u64, x.address(), y.address(), dev.limits())
    {
        // SAFETY: as in `to_f32`.
        unsafe { dev.launch(&plan) }?;
    }
    Ok(y)
}
