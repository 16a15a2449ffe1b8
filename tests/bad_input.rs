//! One test per bad input of the spec's list: each returns the right typed error
//! and leaves `W`, the counters and the step exactly as they were.
//!
//! "Tensors on different devices" has no CPU counterpart (the reference has one
//! device); the GPU layer's tests cover it. The tests after the spec's list
//! cover misuse of the Rust API that once panicked, aborted or was accepted:
//! each runs on the CPU reference and on every device present.

mod common;

use aiec::cpu::{backward, combine, forward, AiecLayer, LossCoefs, LossScales};
use aiec::gpu::{self, GpuLayer};
use aiec::{AiecConfig, AiecError, Counters, Pool, Tensor};
use common::devices::devices;

/// A layer that has taken one update already (interval 1), so that a bad call
/// that slipped through would visibly move the counters or the step.
fn layer(pool: Pool) -> AiecLayer<f64> {
    let cfg = AiecConfig::with_interval(3, 4, 0.0, 1, pool).unwrap();
    let mut l = AiecLayer::new(cfg, 9).unwrap();
    let dims = aiec::cpu::gradcheck::dims_for(pool, 2, 3, 2);
    let n: usize = dims.iter().product();
    let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    l.forward(&x, &dims, Some(&[1, 2])).unwrap();
    l
}

type Snapshot = (Vec<f64>, Counters, u64);

fn snapshot(l: &AiecLayer<f64>) -> Snapshot {
    (l.weights().to_vec(), l.counters().clone(), l.step())
}

/// Runs a bad forward on a fresh layer and checks the error and the state.
fn bad_forward(pool: Pool, x_len: usize, dims: &[usize], targets: Option<&[i64]>) -> AiecError {
    let mut l = layer(pool);
    let before = snapshot(&l);
    let err = l.forward(&vec![0.5; x_len], dims, targets).unwrap_err();
    assert_eq!(snapshot(&l), before, "state changed after {err}");
    assert!(!err.to_string().is_empty());
    err
}

#[test]
fn shape_that_does_not_fit_the_pooling_mode() {
    let e = bad_forward(Pool::AvgHw, 12, &[2, 3, 2], Some(&[0, 1]));
    assert!(matches!(e, AiecError::RankMismatch { pool: Pool::AvgHw, expected: 4, .. }), "{e}");
    assert!(e.to_string().contains("[2, 3, 2]"), "{e}");
    let e = bad_forward(Pool::None, 6, &[2, 3, 1], None);
    assert!(matches!(e, AiecError::RankMismatch { expected: 2, .. }), "{e}");
}

#[test]
fn channels_not_matching_the_layer() {
    // [B, T, C] with C = 5 for a layer of C = 3.
    let e = bad_forward(Pool::Token, 20, &[2, 2, 5], Some(&[0, 1]));
    assert!(matches!(e, AiecError::ChannelMismatch { expected: 3, got: 5, .. }), "{e}");
    // avg_hw reads C from dims[1].
    let e = bad_forward(Pool::AvgHw, 16, &[2, 2, 2, 2], Some(&[0, 1]));
    assert!(matches!(e, AiecError::ChannelMismatch { expected: 3, got: 2, .. }), "{e}");
}

#[test]
fn classes_not_matching_the_layer() {
    let mut l = layer(Pool::None);
    let before = snapshot(&l);
    let e = l.set_weights(&[0.0; 5 * 3]).unwrap_err();
    assert_eq!(e, AiecError::LengthMismatch { what: "W [K, C]", expected: 12, got: 15 });
    let e = l.set_counters(Counters::new(5, 3)).unwrap_err();
    assert!(matches!(e, AiecError::LengthMismatch { expected: 4, got: 5, .. }), "{e}");
    assert_eq!(snapshot(&l), before);
    // Op level: W or counters of another K.
    let cfg = *l.config();
    let mut counters = Counters::new(4, 3);
    let e = forward(&cfg, &[1.0; 6], &[2, 3], &[0.0; 15], Some(&[0, 1]), &mut counters, true).unwrap_err();
    assert!(matches!(e, AiecError::LengthMismatch { what: "W [K, C]", expected: 12, got: 15 }), "{e}");
    let mut other = Counters::new(5, 3);
    let e = forward(&cfg, &[1.0; 6], &[2, 3], &[0.0; 12], Some(&[0, 1]), &mut other, true).unwrap_err();
    assert!(matches!(e, AiecError::LengthMismatch { .. }), "{e}");
    assert_eq!((counters, other), (Counters::new(4, 3), Counters::new(5, 3)));
}

#[test]
fn target_outside_the_classes() {
    for bad in [4i64, -1, i64::MAX, i64::MIN] {
        let e = bad_forward(Pool::AvgToken, 12, &[2, 2, 3], Some(&[0, bad]));
        assert_eq!(e, AiecError::TargetOutOfRange { index: 1, value: bad, classes: 4 });
        assert!(e.to_string().contains(&bad.to_string()), "{e}");
    }
    // The first sample is valid and correctly predicted or not: nothing may move.
    let e = bad_forward(Pool::None, 6, &[2, 3], Some(&[7, 0]));
    assert!(matches!(e, AiecError::TargetOutOfRange { index: 0, value: 7, classes: 4 }));
}

#[test]
fn target_count_not_matching_the_batch() {
    let e = bad_forward(Pool::None, 6, &[2, 3], Some(&[0, 1, 2]));
    assert_eq!(e, AiecError::TargetCountMismatch { batch: 2, got: 3 });
}

#[test]
fn input_length_not_matching_its_shape() {
    let e = bad_forward(Pool::None, 7, &[2, 3], Some(&[0, 1]));
    assert_eq!(e, AiecError::LengthMismatch { what: "x", expected: 6, got: 7 });
}

#[test]
fn tau_negative_or_not_finite() {
    for tau in [-1e-9, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = AiecConfig::new(3, 4, tau, Pool::None).unwrap_err();
        assert!(matches!(e, AiecError::InvalidTau { .. }), "{e}");
    }
}

#[test]
fn update_interval_zero() {
    assert_eq!(AiecConfig::with_interval(3, 4, 0.0, 0, Pool::None), Err(AiecError::ZeroUpdateInterval));
}

#[test]
fn empty_dimension_where_not_allowed() {
    let e = bad_forward(Pool::Token, 0, &[2, 0, 3], Some(&[0, 1]));
    assert!(matches!(e, AiecError::EmptyDimension { what: "tokens T", .. }), "{e}");
    let e = bad_forward(Pool::AvgHw, 0, &[2, 3, 4, 0], Some(&[0, 1]));
    assert!(matches!(e, AiecError::EmptyDimension { what: "H and W", .. }), "{e}");
    assert!(matches!(AiecConfig::new(0, 4, 0.0, Pool::None), Err(AiecError::EmptyDimension { .. })));
    assert!(matches!(AiecConfig::new(3, 0, 0.0, Pool::None), Err(AiecError::EmptyDimension { .. })));
}

#[test]
fn bad_backward_and_loss_inputs() {
    let mut l = layer(Pool::None);
    let rec = l.forward(&[1.0; 6], &[2, 3], Some(&[0, 1])).unwrap();
    let before = snapshot(&l);
    let losses = combine(&[&rec], LossCoefs::PAPER).unwrap();
    let e = l.backward(&rec, &[0.0; 5], &losses.scales).unwrap_err();
    assert_eq!(e, AiecError::LengthMismatch { what: "dy", expected: 6, got: 5 });
    let e = backward(l.config(), &rec, &[0.0; 3], &[0.0; 6], &losses.scales).unwrap_err();
    assert!(matches!(e, AiecError::LengthMismatch { what: "W [K, C]", .. }), "{e}");
    // Layers that do not share the targets, or a record without targets.
    let other = l.forward(&[1.0; 6], &[2, 3], Some(&[1, 1])).unwrap();
    let after_other = snapshot(&l);
    assert!(matches!(
        combine(&[&rec, &other], LossCoefs::PAPER),
        Err(AiecError::LayerMismatch { layer: 1, .. })
    ));
    let plain = l.forward(&[1.0; 6], &[2, 3], None).unwrap();
    assert!(matches!(combine(&[&plain], LossCoefs::PAPER), Err(AiecError::LayerMismatch { layer: 0, .. })));
    for (a, g) in [(f64::NAN, 1.0), (1.0, -2.0), (f64::INFINITY, 0.0)] {
        assert!(matches!(LossCoefs::new(a, g), Err(AiecError::InvalidCoefficient { .. })));
    }
    assert!(before.2 < after_other.2, "the valid forwards did count steps");
}

/// Counters whose public vectors were edited to the wrong lengths: each one
/// breaks a different vector of a layer with `K = 4`, `C = 3`.
fn broken_counters() -> Vec<(Counters, &'static str)> {
    let mut out = Vec::new();
    type Edit = (&'static str, fn(&mut Counters));
    let edits: [Edit; 3] = [
        ("counters act [K, C]", |c| c.act.truncate(5)),
        ("counters inh [K, C]", |c| c.inh.push(0)),
        ("counters total [K]", |c| c.total.clear()),
    ];
    for (what, edit) in edits {
        let mut c = Counters::new(4, 3);
        edit(&mut c);
        out.push((c, what));
    }
    out
}

#[test]
fn counters_with_vectors_of_the_wrong_length_are_refused() {
    for (bad, what) in broken_counters() {
        // The layer, and the op the layer calls.
        let mut l = layer(Pool::None);
        let before = snapshot(&l);
        let e = l.set_counters(bad.clone()).unwrap_err();
        assert!(matches!(e, AiecError::LengthMismatch { what: w, .. } if w == what), "{e}");
        assert_eq!(snapshot(&l), before);
        let mut c = bad.clone();
        let e =
            forward(l.config(), &[1.0; 6], &[2, 3], l.weights(), Some(&[0, 1]), &mut c, true).unwrap_err();
        assert!(matches!(e, AiecError::LengthMismatch { what: w, .. } if w == what), "{e}");
        assert_eq!(c, bad, "the op changed the counters it refused");
        l.forward(&[1.0; 6], &[2, 3], Some(&[0, 1])).unwrap();
        // Every device's layer.
        for dev in devices() {
            let mut g = GpuLayer::new(&dev, *l.config(), 9).unwrap();
            let before = (g.weights().unwrap(), g.counters().unwrap(), g.step());
            let e = g.set_counters(&bad).unwrap_err();
            assert!(
                matches!(e, AiecError::LengthMismatch { what: w, .. } if w == what),
                "{}: {e}",
                dev.label()
            );
            assert_eq!((g.weights().unwrap(), g.counters().unwrap(), g.step()), before);
        }
    }
}

#[test]
fn a_layer_no_allocation_can_hold_is_an_error() {
    // K * C * 8 bytes past isize::MAX: refused by the configuration, where it is first known.
    for (k, c) in [(1usize << 31, 1usize << 31), (usize::MAX, 2), (1 << 62, 1)] {
        let e = AiecConfig::new(c, k, 0.0, Pool::None).unwrap_err();
        assert_eq!(e, AiecError::ShapeOverflow { dims: vec![k, c] });
    }
    // 2^48 elements: a valid configuration, but more memory than a process can address.
    let cfg = AiecConfig::new(1 << 24, 1 << 24, 0.0, Pool::None).unwrap();
    let e = AiecLayer::<f32>::new(cfg, 1).unwrap_err();
    assert!(matches!(e, AiecError::OutOfMemory { bytes, .. } if bytes == 4 << 48), "{e}");
    for dev in devices() {
        let e = GpuLayer::new(&dev, cfg, 1).err().expect("accepted");
        assert!(
            matches!(e, AiecError::OutOfMemory { .. } | AiecError::Driver { .. }),
            "{}: {e}",
            dev.label()
        );
    }
}

#[cfg(feature = "sim")]
#[test]
fn a_simulator_tensor_the_host_cannot_hold_is_an_error() {
    let dev = aiec::Device::sim();
    let e = Tensor::zeros(&dev, aiec::DType::F32, &[1 << 30, 1 << 29]).unwrap_err();
    assert!(matches!(e, AiecError::OutOfMemory { bytes, .. } if bytes == 1 << 61), "{e}");
    assert!(e.to_string().contains(dev.label()), "{e}");
    let e = Tensor::zeros(&dev, aiec::DType::F16, &[1 << 62, 2]).unwrap_err();
    assert_eq!(e, AiecError::ShapeOverflow { dims: vec![1 << 62, 2] });
    assert_eq!(Tensor::zeros(&dev, aiec::DType::F32, &[3, 5]).unwrap().to_vec::<f32>().unwrap(), [0.0; 15]);
}

#[test]
fn tau_infinite_as_the_kernels_f32_is_refused() {
    for tau in [1e39, 3.5e38, f64::MAX] {
        let e = AiecConfig::new(3, 4, tau, Pool::None).unwrap_err();
        assert_eq!(e, AiecError::InvalidTau { tau });
        assert!(e.to_string().contains("infinite as the kernels' f32"), "{e}");
    }
    // The largest f32 is finite, and so is a value that rounds down to it.
    for tau in [f32::MAX as f64, 3.4028235e38] {
        assert!(AiecConfig::new(3, 4, tau, Pool::None).is_ok(), "{tau}");
    }
}

#[cfg(feature = "sim")]
#[test]
fn two_simulators_have_two_labels() {
    let (a, b) = (aiec::Device::sim(), aiec::Device::sim());
    assert_ne!(a.label(), b.label());
    let cfg = AiecConfig::new(3, 4, 0.0, Pool::None).unwrap();
    let mut l = GpuLayer::new(&a, cfg, 1).unwrap();
    let x = Tensor::from_slice(&b, &[1.0f32; 6], &[2, 3]).unwrap();
    let e = l.forward(&x, Some(&[0, 1])).unwrap_err();
    let AiecError::DeviceMismatch { expected, got, .. } = &e else { panic!("{e}") };
    assert_ne!(expected, got, "{e}");
    assert!(e.to_string().contains(a.label()) && e.to_string().contains(b.label()), "{e}");
}

#[test]
fn a_backward_error_names_the_tensor_it_checked() {
    use aiec::gpu::fused::{bwd_x, Dx};
    use aiec::layout::Sizes;
    for dev in devices() {
        let cfg = AiecConfig::new(3, 4, 0.0, Pool::None).unwrap();
        let dims = cfg.plan_input(&[2, 3]).unwrap();
        let keep = aiec::Buffer::<u32>::zeros(&dev, Sizes::of(&dims, 4).keep).unwrap();
        let dv = aiec::Buffer::<f32>::zeros(&dev, 6).unwrap();
        let t = |shape: &[usize]| Tensor::zeros(&dev, aiec::DType::F32, shape).unwrap();
        let (dy_bad, mut dx_ok) = (t(&[3, 2]), t(&[2, 3]));
        let dx = Dx::Into { dy: &dy_bad.view(), dx: &mut dx_ok.view_mut() };
        let e = bwd_x(&cfg, &dims, &keep.view(), &dv.view(), dx).unwrap_err();
        assert_eq!(e, AiecError::ShapeMismatch { what: "dy", expected: vec![2, 3], got: vec![3, 2] });
        let (dy_ok, mut dx_bad) = (t(&[2, 3]), t(&[6]));
        let dx = Dx::Into { dy: &dy_ok.view(), dx: &mut dx_bad.view_mut() };
        let e = bwd_x(&cfg, &dims, &keep.view(), &dv.view(), dx).unwrap_err();
        assert_eq!(e, AiecError::ShapeMismatch { what: "dx", expected: vec![2, 3], got: vec![6] });
    }
}

/// The error every backend gives for layers of different batch sizes.
fn assert_batch_mismatch(e: AiecError, got: usize, batch: usize) {
    let want = format!("batch B = {got} differs from layer 0's {batch}");
    assert!(matches!(&e, AiecError::LayerMismatch { layer: 1, reason } if *reason == want), "{e}");
}

#[test]
fn layers_of_different_batch_sizes_do_not_combine() {
    let mut l = layer(Pool::None);
    let r2 = l.forward(&[1.0; 6], &[2, 3], Some(&[0, 1])).unwrap();
    let r3 = l.forward(&[1.0; 9], &[3, 3], Some(&[0, 1, 2])).unwrap();
    assert_batch_mismatch(combine(&[&r2, &r3], LossCoefs::PAPER).unwrap_err(), 3, 2);
    for dev in devices() {
        let mut g = GpuLayer::new(&dev, *l.config(), 9).unwrap();
        let x2 = Tensor::from_slice(&dev, &[1.0f32; 6], &[2, 3]).unwrap();
        let x3 = Tensor::from_slice(&dev, &[1.0f32; 9], &[3, 3]).unwrap();
        let g2 = g.forward(&x2, Some(&[0, 1])).unwrap();
        let g3 = g.forward(&x3, Some(&[0, 1, 2])).unwrap();
        assert_batch_mismatch(gpu::combine(&[&g2, &g3], LossCoefs::PAPER).unwrap_err(), 3, 2);
    }
}

#[test]
fn no_layers_do_not_combine_on_any_backend() {
    let e = combine::<f64>(&[], LossCoefs::PAPER).unwrap_err();
    assert!(matches!(e, AiecError::LayerMismatch { layer: 0, .. }), "{e}");
    let e = gpu::combine(&[], LossCoefs::PAPER).unwrap_err();
    assert!(matches!(e, AiecError::LayerMismatch { layer: 0, .. }), "{e}");
}

/// What a backward handed another combine's scales must say: its record and
/// batch, and the records and batch the scales were made for.
fn assert_foreign(e: AiecError, record: u64, batch: usize, scales_batch: usize, scales_records: &[u64]) {
    let want =
        AiecError::ForeignScales { record, batch, scales_batch, scales_records: scales_records.to_vec() };
    assert_eq!(e, want, "{e}");
}

#[test]
fn a_backward_refuses_the_scales_of_another_combine() {
    let (mut a, mut b) = (layer(Pool::None), layer(Pool::None));
    let a2 = a.forward(&[1.0; 6], &[2, 3], Some(&[0, 1])).unwrap();
    let a3 = a.forward(&[1.0; 9], &[3, 3], Some(&[0, 1, 2])).unwrap();
    let b2 = b.forward(&[0.5; 6], &[2, 3], Some(&[0, 1])).unwrap();
    let id = |r: &aiec::cpu::ForwardRecord<f64>| r.aux.as_ref().unwrap().id.get();
    let of_a2 = combine(&[&a2], LossCoefs::PAPER).unwrap();
    let of_b2 = combine(&[&b2], LossCoefs::PAPER).unwrap();
    // Another batch of the same layer; the same batch of another layer.
    assert_foreign(a.backward(&a3, &[0.0; 9], &of_a2.scales).unwrap_err(), id(&a3), 3, 2, &[id(&a2)]);
    assert_foreign(a.backward(&a2, &[0.0; 6], &of_b2.scales).unwrap_err(), id(&a2), 2, 2, &[id(&b2)]);
    // Scales of a combine the record was in, and unbound ones, are accepted.
    let both = combine(&[&a2, &b2], LossCoefs::PAPER).unwrap();
    a.backward(&a2, &[0.0; 6], &both.scales).unwrap();
    b.backward(&b2, &[0.0; 6], &both.scales).unwrap();
    a.backward(&a3, &[0.0; 9], &LossScales::zero()).unwrap();
    for dev in devices() {
        let cfg = *a.config();
        let (ga, gb) = (GpuLayer::new(&dev, cfg, 1).unwrap(), GpuLayer::new(&dev, cfg, 2).unwrap());
        let (mut ga, mut gb) = (ga, gb);
        let x2 = Tensor::from_slice(&dev, &[1.0f32; 6], &[2, 3]).unwrap();
        let x3 = Tensor::from_slice(&dev, &[1.0f32; 9], &[3, 3]).unwrap();
        let a2 = ga.forward(&x2, Some(&[0, 1])).unwrap();
        let a3 = ga.forward(&x3, Some(&[0, 1, 2])).unwrap();
        let b2 = gb.forward(&x2, Some(&[0, 1])).unwrap();
        let of_a2 = gpu::combine(&[&a2], LossCoefs::PAPER).unwrap();
        let of_b2 = gpu::combine(&[&b2], LossCoefs::PAPER).unwrap();
        let launches = dev.stats().launches;
        let e = ga.backward(&a3, &x3, &of_a2).unwrap_err();
        assert_foreign(e, a3.id().get(), 3, 2, &[a2.id().get()]);
        let e = ga.backward(&a2, &x2, &of_b2).unwrap_err();
        assert_foreign(e, a2.id().get(), 2, 2, &[b2.id().get()]);
        assert_eq!(dev.stats().launches, launches, "{}: a refused backward launched", dev.label());
        let both = gpu::combine(&[&a2, &b2], LossCoefs::PAPER).unwrap();
        ga.backward(&a2, &x2, &both).unwrap();
        gb.backward(&b2, &x2, &both).unwrap();
        assert_eq!(both.read().unwrap().scales.origin().unwrap().records(), [a2.id(), b2.id()]);
    }
}
