//! Golden parity of the CPU reference: every case of the project's copy of the
//! shared golden set (and of `AIEC_GOLDEN_DIR` when set), in `f64` and `f32`.

mod common;

use common::golden::{dirs, load_dir};
use common::runner::{run_cpu, run_golden};

#[test]
fn golden_cpu_reference() {
    let mut failed = Vec::new();
    for (dir, label) in dirs() {
        let cases = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!cases.is_empty(), "no cases in {label}");
        for (precision, s) in [
            ("f64", run_golden("cpu", "f64", &label, &cases, run_cpu::<f64>)),
            ("f32", run_golden("cpu", "f32", &label, &cases, run_cpu::<f32>)),
        ] {
            if s.passed != s.total {
                failed.push(format!("cpu-{precision} ({label}): {}/{} passed", s.passed, s.total));
            }
        }
    }
    assert!(failed.is_empty(), "golden failures: {failed:?}");
}
