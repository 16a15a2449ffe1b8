//! Finite-difference gradient check (central differences, `f64`) of `dx` and
//! `dW` through the complete loss `sum_l <y_l, dy_l> + aux_coef * aux +
//! gate_coef * gate`, for every pooling mode, `tau = 0` and `tau > 0`, one and
//! two layers, with the gate loss active.

use aiec::cpu::gradcheck::{analytic, check, numeric, random_case, rel_error, CaseShape};
use aiec::cpu::{combine, forward, LossCoefs};
use aiec::{AiecConfig, Pool};

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

#[test]
fn gradients_match_central_differences() {
    let coefs = LossCoefs::new(0.7, 3.0).unwrap();
    let mut checked = 0;
    for (pi, pool) in Pool::ALL.into_iter().enumerate() {
        for tau in [0.0, 0.3] {
            for layers in [1, 2] {
                for update in [false, true] {
                    let cfg = AiecConfig::new(5, 4, tau, pool).unwrap();
                    let shape = CaseShape { batch: 3, channels: 5, classes: 4, positions: 3, layers };
                    let seed =
                        1000 + 100 * pi as u64 + 10 * layers as u64 + update as u64 + (tau * 10.0) as u64;
                    let case = random_case(seed, cfg, shape, coefs, update);
                    // The gate term must be live, or the check would not cover it.
                    let mut n = 0;
                    for l in &case.layers {
                        let mut counters = l.counters.clone();
                        let rec =
                            forward(&cfg, &l.x, &case.dims, &l.w, Some(&case.targets), &mut counters, update)
                                .unwrap();
                        n += combine(&[&rec], coefs).unwrap().gate_count;
                    }
                    assert!(n > 0, "{pool} tau={tau} L={layers}: no masked channel, gate loss not exercised");
                    let r = check(&case, H).unwrap();
                    println!(
                        "gradcheck {pool:9} tau={tau} L={layers} update={update}: dx {:.2e}, dW {:.2e}",
                        r.dx, r.dw
                    );
                    assert!(r.max() < TOL, "{pool} tau={tau} L={layers} update={update}: {r:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 32);
}

/// The check itself must be able to fail: a wrong gradient is caught.
#[test]
fn gradcheck_detects_a_wrong_gradient() {
    let cfg = AiecConfig::new(5, 4, 0.0, Pool::AvgToken).unwrap();
    let shape = CaseShape { batch: 3, channels: 5, classes: 4, positions: 3, layers: 1 };
    let case = random_case(7, cfg, shape, LossCoefs::new(1.0, 3.0).unwrap(), false);
    let num = numeric(&case, H).unwrap();
    assert!(rel_error(&analytic(&case).unwrap()[0].dx, &num[0].dx) < TOL);
    // The analytic pass with the gate coefficient doubled must be far off.
    let mut wrong = case.clone();
    wrong.coefs = LossCoefs::new(1.0, 6.0).unwrap();
    let bad = analytic(&wrong).unwrap();
    let err = rel_error(&bad[0].dx, &num[0].dx);
    assert!(err > 1e-3, "a doubled gate gradient went unnoticed: {err:e}");
}
