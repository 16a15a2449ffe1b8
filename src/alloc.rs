//! Host allocations that fail with a typed error instead of aborting the
//! process: a layer's state is sized by the caller (`K * C`), and a size the
//! machine cannot hold must be an [`AiecError::OutOfMemory`], not an abort.

use crate::error::{AiecError, Result};

/// `len` copies of `value` in a new vector, or [`AiecError::OutOfMemory`]
/// naming `what` and the bytes asked for ([`AiecError::ShapeOverflow`] when the
/// byte count does not even fit in `isize`).
pub(crate) fn filled<T: Clone>(what: &str, len: usize, value: T) -> Result<Vec<T>> {
    let bytes = len
        .checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| AiecError::ShapeOverflow { dims: vec![len] })?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| AiecError::OutOfMemory { what: what.to_string(), bytes })?;
    v.resize(len, value);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_the_host_cannot_hold_are_errors() {
        assert_eq!(filled("w", 3, 1.5f32).unwrap(), [1.5; 3]);
        assert_eq!(
            filled("w", usize::MAX, 0u8).unwrap_err(),
            AiecError::ShapeOverflow { dims: vec![usize::MAX] }
        );
        // 2^52 bytes: more than any x86-64 or aarch64 process can address.
        let e = filled("w", 1 << 49, 0i64).unwrap_err();
        assert_eq!(e, AiecError::OutOfMemory { what: "w".into(), bytes: 1 << 52 });
    }
}
