//! Errors across the boundary: an [`AiecError`] travels inside a candle error
//! (so `?` works in candle code) and can be taken out again, typed.

use candle_core::{CpuStorage, Layout, WithDType};

use crate::error::AiecError;

use super::Backend;

/// The candle error for an [`AiecError`]: `candle_core::Error::WrappedContext`
/// holding the typed error, with its message as the context (candle prints
/// both), plus a backtrace when `RUST_BACKTRACE` asks for one.
pub fn to_candle(err: AiecError) -> candle_core::Error {
    let context = err.to_string();
    candle_core::Error::WrappedContext { wrapped: Box::new(err), context }.bt()
}

/// The [`AiecError`] inside a candle error made by this module, looking
/// through candle's backtrace, context and path wrappers; `None` for an error
/// candle raised itself (a device or dtype mismatch of its own, say).
pub fn aiec_error(err: &candle_core::Error) -> Option<&AiecError> {
    use candle_core::Error as E;
    match err {
        E::WrappedContext { wrapped, .. } => wrapped.downcast_ref::<AiecError>(),
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            aiec_error(inner)
        }
        _ => None,
    }
}

/// `Result<T, AiecError>` into a candle result.
pub(crate) trait IntoCandle<T> {
    fn candle(self) -> candle_core::Result<T>;
}

impl<T> IntoCandle<T> for crate::error::Result<T> {
    fn candle(self) -> candle_core::Result<T> {
        self.map_err(to_candle)
    }
}

/// An `Unsupported` error, as a candle error.
pub(crate) fn unsupported(what: String) -> candle_core::Error {
    to_candle(AiecError::Unsupported { what })
}

/// The `x` data of a CPU storage, contiguous (`Aiec` makes it so).
pub(crate) fn host_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    let Some((start, end)) = l.contiguous_offsets() else {
        return Err(unsupported(format!("{what} of shape {:?} is not contiguous", l.dims())));
    };
    Ok(&data[start..end])
}

pub(crate) fn dtype_error(backend: &Backend, dtype: candle_core::DType) -> candle_core::Error {
    let supported = match backend {
        Backend::Reference => "the CPU reference backend takes f32 and f64",
        #[cfg(feature = "sim")]
        Backend::Kernels(_) => "the kernels backend takes f32, f16 and bf16",
    };
    unsupported(format!("x of dtype {dtype:?}: {supported}"))
}
