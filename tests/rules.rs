//! Small hand-computed cases, one per rule of the spec.

use aiec::cpu::op::{argmax, cross_entropy};
use aiec::cpu::{backward, combine, forward, AiecLayer, LossCoefs, LossScales};
use aiec::{AiecConfig, Counters, Pool};
use approx::assert_relative_eq;

fn none_cfg(c: usize, k: usize, tau: f64) -> AiecConfig {
    AiecConfig::new(c, k, tau, Pool::None).unwrap()
}

#[test]
fn nan_passes_the_threshold_and_its_gradient() {
    let cfg = none_cfg(3, 2, 0.0);
    let mut counters = Counters::new(2, 3);
    let x = [f32::NAN, 1.5, -1.0];
    let rec = forward(&cfg, &x, &[1, 3], &[0.0; 6], None, &mut counters, false).unwrap();
    assert!(rec.y[0].is_nan());
    assert_eq!(&rec.y[1..], &[1.5, 0.0]);
    let g = backward(&cfg, &rec, &[0.0; 6], &[2.0, 3.0, 4.0], &LossScales::zero()).unwrap();
    assert_eq!(g.dx, [2.0, 3.0, 0.0]);
}

#[test]
fn x_equal_to_tau_gives_zero_and_zero_gradient() {
    let tau = 0.5;
    let cfg = none_cfg(3, 2, tau);
    let mut counters = Counters::new(2, 3);
    let above = f64::from_bits(0.5f64.to_bits() + 1);
    let x = [0.5, above, 0.25];
    let rec = forward(&cfg, &x, &[1, 3], &[0.0; 6], None, &mut counters, false).unwrap();
    assert_eq!(rec.y, [0.0, above, 0.0]);
    let g = backward(&cfg, &rec, &[0.0; 6], &[1.0, 1.0, 1.0], &LossScales::zero()).unwrap();
    assert_eq!(g.dx, [0.0, 1.0, 0.0]);
}

#[test]
fn argmax_ties_take_the_lowest_index_and_nan_is_largest() {
    assert_eq!(argmax(&[1.0f64, 3.0, 3.0, 2.0]), 1);
    assert_eq!(argmax(&[3.0f64, 3.0]), 0);
    assert_eq!(argmax(&[1.0f64, f64::NAN, 5.0, f64::NAN]), 1);
    assert_eq!(argmax(&[f64::NEG_INFINITY, f64::NEG_INFINITY]), 0);
}

#[test]
fn an_argmax_tie_counts_for_the_lowest_class_only() {
    // Decision rows 0 and 1 are identical, so logits tie and pred = 0.
    let cfg = none_cfg(2, 3, 0.0);
    let w = [1.0, 1.0, 1.0, 1.0, -1.0, -1.0];
    let x = [1.0, 0.0, 2.0, 0.0];
    let mut counters = Counters::new(3, 2);
    forward(&cfg, &x, &[2, 2], &w, Some(&[0, 1]), &mut counters, true).unwrap();
    assert_eq!(counters.total, [2, 1, 1]);
    assert_eq!(counters.act, [1, 0, 0, 0, 0, 0]);
    assert_eq!(counters.inh, [0, 1, 0, 0, 0, 0]);
}

#[test]
fn hand_computed_forward_and_backward() {
    // C = 2, K = 2, B = 1, none pooling.
    let cfg = none_cfg(2, 2, 0.0);
    let w = [0.5, -0.5, -1.0, 2.0];
    let x = [1.0, -1.0];
    let mut counters = Counters::new(2, 2);
    let rec = forward(&cfg, &x, &[1, 2], &w, Some(&[0]), &mut counters, true).unwrap();
    let aux = rec.aux.as_ref().unwrap();
    assert_eq!(rec.y, [1.0, 0.0]);
    assert_eq!(aux.v, [1.0, 0.0]);
    assert_eq!(aux.logits, [0.5, -1.0]);
    // pred 0 == t 0: v0 > 0 -> act, v1 == 0 -> inh.
    assert_eq!(
        (counters.act.clone(), counters.inh.clone(), counters.total.clone()),
        (vec![1, 0, 0, 0], vec![0, 1, 0, 0], vec![2, 1])
    );
    // irrelevant[0, 1]: act 0 <= inh 1 and W[0, 1] = -0.5 <= 0.
    assert_eq!(aux.mask, [0, 1]);
    assert_eq!((aux.gate_sum_sq, aux.gate_count), (0.0, 1));

    let coefs = LossCoefs::new(1.0, 5.0).unwrap();
    let losses = combine(&[&rec], coefs).unwrap();
    let e = (-1.5f64).exp();
    assert_relative_eq!(losses.aux, (1.0 + e).ln(), max_relative = 1e-15);
    assert_eq!(losses.gate, 0.0);
    assert_eq!(losses.scales.gate_scale, 10.0);
    let (p0, p1) = (1.0 / (1.0 + e), e / (1.0 + e));
    let g = backward(&cfg, &rec, &w, &[0.25, 0.75], &losses.scales).unwrap();
    let dv0 = (p0 - 1.0) * 0.5 - p1; // W[0, 0] = 0.5, W[1, 0] = -1
    assert_relative_eq!(g.dx[0], 0.25 + dv0, max_relative = 1e-15);
    assert_eq!(g.dx[1], 0.0);
    assert_relative_eq!(g.dw[0], p0 - 1.0, max_relative = 1e-15);
    assert_relative_eq!(g.dw[2], p1, max_relative = 1e-15);
    assert_eq!((g.dw[1], g.dw[3]), (0.0, 0.0));
}

#[test]
fn pooling_modes_by_hand() {
    // One sample, T = 2 tokens (or H*W = 2), C = 2.
    let mut counters = Counters::new(1, 2);
    let w = [1.0, 1.0];
    let tok = [1.0, -2.0, 3.0, 4.0]; // [1, 2, 2]: token 0 = (1, -2), token 1 = (3, 4)
    let v = |pool: Pool, dims: &[usize], x: &[f64], c: &mut Counters| {
        let cfg = AiecConfig::new(2, 1, 0.0, pool).unwrap();
        forward(&cfg, x, dims, &w, Some(&[0]), c, false).unwrap().aux.unwrap().v
    };
    assert_eq!(v(Pool::Token, &[1, 2, 2], &tok, &mut counters), [1.0, 0.0]);
    assert_eq!(v(Pool::AvgToken, &[1, 2, 2], &tok, &mut counters), [2.0, 2.0]);
    // [1, 2, 1, 2]: channel 0 = (1, -2), channel 1 = (3, 4).
    assert_eq!(v(Pool::AvgHw, &[1, 2, 1, 2], &tok, &mut counters), [0.5, 3.5]);
    assert_eq!(v(Pool::None, &[1, 2], &tok[..2], &mut counters), [1.0, 0.0]);

    // unpool: token sends dv to token 0 only; averaging spreads dv / P. With
    // K = 1 the aux gradient is 0 (softmax = onehot); W <= 0 and fresh counters
    // mask every channel, so dv = gate_scale * v.
    let w_neg = [-1.0, -1.0];
    let scales = LossScales::unbound(1.0, 1.0);
    let dx = |pool: Pool, c: &mut Counters| {
        let cfg = AiecConfig::new(2, 1, 0.0, pool).unwrap();
        let rec = forward(&cfg, &tok, &[1, 2, 2], &w_neg, Some(&[0]), c, false).unwrap();
        assert_eq!(rec.aux.as_ref().unwrap().mask, [1, 1]);
        backward(&cfg, &rec, &w_neg, &[1.0; 4], &scales).unwrap().dx
    };
    // token: v = (1, 0), dv = (1, 0) lands on token 0; x = -2 blocks its gradient.
    assert_eq!(dx(Pool::Token, &mut counters), [2.0, 0.0, 1.0, 1.0]);
    // avg_token: v = (2, 2), dv / T = (1, 1) on both tokens.
    assert_eq!(dx(Pool::AvgToken, &mut counters), [2.0, 0.0, 2.0, 2.0]);
}

#[test]
fn counters_move_only_on_update_steps_and_for_correct_samples() {
    let cfg = AiecConfig::with_interval(2, 2, 0.0, 3, Pool::None).unwrap();
    // Row 0 favours channel 0, row 1 channel 1.
    let mut layer = AiecLayer::with_weights(cfg, vec![1.0, -1.0, -1.0, 1.0]).unwrap();
    assert_eq!(layer.counters().total, [1, 1], "total starts at 1");
    let x = [2.0, 0.0, 3.0, 0.0]; // both samples predict class 0
    let t = [0i64, 1]; // sample 0 correct, sample 1 wrong
    layer.forward(&x, &[2, 2], Some(&t)).unwrap();
    layer.forward(&x, &[2, 2], None).unwrap(); // a training forward without targets still counts a step
    assert_eq!(layer.step(), 2);
    assert_eq!(layer.counters(), &Counters::new(2, 2), "no update before step 3");
    let rec = layer.forward(&x, &[2, 2], Some(&t)).unwrap();
    assert!(rec.aux.unwrap().updated);
    assert_eq!(layer.counters().act, [1, 0, 0, 0]);
    assert_eq!(layer.counters().inh, [0, 1, 0, 0]);
    assert_eq!(layer.counters().total, [2, 1]);
    let rec = layer.forward(&x, &[2, 2], Some(&t)).unwrap();
    assert!(!rec.aux.unwrap().updated);
    assert_eq!(layer.counters().total, [2, 1], "step 4 is not an update step");
}

#[test]
fn eval_resets_counters_and_moves_nothing() {
    let cfg = AiecConfig::with_interval(2, 2, 0.0, 1, Pool::None).unwrap();
    let mut layer = AiecLayer::with_weights(cfg, vec![1.0f32, -1.0, -1.0, 1.0]).unwrap();
    layer.forward(&[2.0, 0.0], &[1, 2], Some(&[0])).unwrap();
    assert_eq!(layer.counters().total, [2, 1]);
    layer.eval();
    assert_eq!(layer.counters(), &Counters::new(2, 2));
    // Without targets: the threshold alone.
    let rec = layer.forward(&[2.0, -1.0], &[1, 2], None).unwrap();
    assert!(rec.aux.is_none());
    assert_eq!(rec.y, [2.0, 0.0]);
    // With targets (the published module's contract): logits and the mask from
    // the reset counters (act = inh = 0, so a channel is irrelevant where
    // W <= 0), no update, no step.
    let rec = layer.forward(&[2.0, -1.0], &[1, 2], Some(&[0])).unwrap();
    let aux = rec.aux.unwrap();
    assert!(!aux.updated);
    assert_eq!(aux.logits, [2.0, -2.0]);
    assert_eq!(aux.mask, [0, 1], "W[0] = [1, -1]: channel 1 is irrelevant to class 0");
    assert_eq!((layer.step(), layer.counters().total.clone()), (1, vec![1, 1]), "eval moves nothing");
    layer.train();
    layer.forward(&[2.0, 0.0], &[1, 2], Some(&[0])).unwrap();
    assert_eq!((layer.step(), layer.counters().total.clone()), (2, vec![2, 1]));
    layer.reset_counters();
    assert_eq!(layer.counters(), &Counters::new(2, 2));
}

#[test]
fn gate_loss_and_gradient_vanish_when_nothing_is_masked() {
    // All weights positive: no channel is irrelevant, so N = 0.
    let cfg = AiecConfig::new(3, 2, 0.0, Pool::AvgToken).unwrap();
    let w = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let x = [1.0, -1.0, 0.5, 2.0, 0.0, -0.5];
    let mut counters = Counters::new(2, 3);
    let rec = forward(&cfg, &x, &[1, 2, 3], &w, Some(&[1]), &mut counters, false).unwrap();
    let with_gate = combine(&[&rec], LossCoefs::new(1.0, 200.0).unwrap()).unwrap();
    let without = combine(&[&rec], LossCoefs::new(1.0, 0.0).unwrap()).unwrap();
    assert_eq!((with_gate.gate, with_gate.gate_count, with_gate.scales.gate_scale), (0.0, 0, 0.0));
    let dy = [0.3; 6];
    let a = backward(&cfg, &rec, &w, &dy, &with_gate.scales).unwrap();
    let b = backward(&cfg, &rec, &w, &dy, &without.scales).unwrap();
    assert_eq!(a, b);
}

#[test]
fn empty_batch_is_a_no_op_with_shaped_outputs() {
    let cfg = AiecConfig::with_interval(4, 3, 0.0, 1, Pool::Token).unwrap();
    let mut layer = AiecLayer::<f32>::new(cfg, 1).unwrap();
    let rec = layer.forward(&[], &[0, 5, 4], Some(&[])).unwrap();
    let aux = rec.aux.as_ref().unwrap();
    assert!(rec.y.is_empty() && aux.v.is_empty() && aux.logits.is_empty() && aux.mask.is_empty());
    assert_eq!(layer.counters(), &Counters::new(3, 4));
    let losses = combine(&[&rec], LossCoefs::PAPER).unwrap();
    assert_eq!((losses.aux, losses.gate, losses.rows), (0.0, 0.0, 0));
    let g = layer.backward(&rec, &[], &losses.scales).unwrap();
    assert!(g.dx.is_empty());
    assert_eq!(g.dw, vec![0.0; 12]);
}

#[test]
fn cross_entropy_is_stable_for_large_logits() {
    assert_relative_eq!(
        cross_entropy(&[1000.0f64, 0.0], 0),
        (1.0 + (-1000.0f64).exp()).ln(),
        epsilon = 1e-12
    );
    assert_relative_eq!(cross_entropy(&[1000.0f64, 0.0], 1), 1000.0, max_relative = 1e-12);
    assert!(cross_entropy(&[f64::NAN, 0.0], 1).is_nan());
}
