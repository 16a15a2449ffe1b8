//! Comparison against a reference with a per-precision tolerance, printing the
//! first offenders (NaN and Inf included) on mismatch.

use std::fmt::Write;

/// Elements below this fraction of a tensor's largest magnitude are judged
/// relative to that fraction (see [`elem_error`]).
pub const FLOOR: f64 = 0.1;

/// Relative tolerances per precision (values and gradients). Integer results
/// (counters, masks, counts) always compare exactly.
pub fn tolerance(precision: &str) -> f64 {
    match precision {
        "f64" => 1e-9,
        "f32" => 1e-5,
        "f16" | "bf16" => 1e-2,
        other => panic!("no tolerance for precision {other}"),
    }
}

/// Per-element relative error `|a - b| / max(|b|, FLOOR * max_j |b_j|)`:
/// relative for the large elements, and relative to the tensor's scale for
/// elements that a sum made small by cancellation (their absolute error is set
/// by the magnitude of the terms, not by their own). Two NaNs, or equal
/// infinities, are equal.
pub fn elem_error(a: f64, b: f64, scale: f64) -> f64 {
    if a.is_nan() && b.is_nan() {
        return 0.0;
    }
    if a.is_nan() || b.is_nan() {
        return f64::INFINITY;
    }
    if a == b {
        return 0.0;
    }
    let denom = b.abs().max(FLOOR * scale);
    if denom == 0.0 || !denom.is_finite() {
        return f64::INFINITY;
    }
    (a - b).abs() / denom
}

/// Largest [`elem_error`] of `got` against `want`, or a message naming the first
/// offenders when it exceeds `rtol` (or the lengths differ).
pub fn close(what: &str, got: &[f64], want: &[f64], rtol: f64) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} elements, expected {}", got.len(), want.len()));
    }
    let scale = want.iter().filter(|v| v.is_finite()).fold(0.0f64, |m, v| m.max(v.abs()));
    let errs: Vec<f64> = got.iter().zip(want).map(|(&a, &b)| elem_error(a, b, scale)).collect();
    let max = errs.iter().copied().fold(0.0, f64::max);
    if max <= rtol {
        return Ok(max);
    }
    let mut msg = format!("{what}: max relative error {max:.3e} > {rtol:.0e}; first offenders:");
    for (i, _) in errs.iter().enumerate().filter(|(_, &e)| e > rtol).take(5) {
        let _ = write!(msg, "\n    [{i}] got {:e}, want {:e}", got[i], want[i]);
    }
    Err(msg)
}

/// Exact comparison of integer results, naming the first offenders.
pub fn exact<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} elements, expected {}", got.len(), want.len()));
    }
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let mut msg = format!("{what}: {} of {} differ; first offenders:", bad.len(), got.len());
    for &i in bad.iter().take(5) {
        let _ = write!(msg, "\n    [{i}] got {:?}, want {:?}", got[i], want[i]);
    }
    Err(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_catches_nan_and_small_errors() {
        assert!(close("t", &[1.0, f64::NAN], &[1.0, f64::NAN], 1e-9).is_ok());
        assert!(close("t", &[1.0, 0.0], &[1.0, f64::NAN], 1e-9).is_err());
        assert!(close("t", &[1.0 + 1e-6], &[1.0], 1e-9).is_err());
        assert!(close("t", &[f64::INFINITY], &[f64::INFINITY], 1e-9).is_ok());
        assert!(close("t", &[f64::INFINITY], &[f64::NEG_INFINITY], 1e-9).is_err());
        assert!(exact("m", &[1u8, 0], &[1u8, 1]).is_err());
    }
}
