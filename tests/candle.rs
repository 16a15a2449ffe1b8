//! The candle layer (`aiec::candle`, feature `candle`): `dx` and `dW` from
//! candle's autograd against the CPU reference with the AIEC losses included,
//! for every pooling mode, one and two layers, the gate active, counting on and
//! off, on both backends (the CPU reference; the kernels on the simulator
//! through views of candle's memory); the caller's gradient scaling; `W`
//! trained by AdamW through its `Var`; the layer policy and evaluation reset;
//! bad input as typed errors that change nothing.
#![cfg(feature = "candle")]

mod common;
#[path = "common/candle.rs"]
mod support;

use aiec::candle::{aiec_error, combine, losses, Aiec};
use aiec::cpu::{self, AiecLayer, LossCoefs};
use aiec::{AiecConfig, AiecError, Counters, Pool};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use common::compare::{close, exact, tolerance};
use support::{case, judge, values, Run};

/// Every pooling mode, one and two layers, counting on and off, on `run`.
fn every_case(run: Run) {
    let mut failed = Vec::new();
    let (mut ex, mut ew, mut n) = (0.0f64, 0.0f64, 0);
    for pool in Pool::ALL {
        for layers in [1, 2] {
            for update in [false, true] {
                let c =
                    case(100 + layers as u64 * 10 + update as u64, pool, layers, update, LossCoefs::PAPER);
                match judge(run, &c, 1.0) {
                    Ok((x, w)) => (ex, ew) = (ex.max(x), ew.max(w)),
                    Err(e) => failed.push(format!("{pool}, {layers} layer(s), update {update}: {e}")),
                }
                n += 1;
            }
        }
    }
    println!(
        "candle {run:?}: {}/{n} cases (4 pools x 1, 2 layers x counting off, on; gate active) match the \
         reference: max error dx {ex:.1e}, dW {ew:.1e}; counters exact; aux, gate, N",
        n - failed.len()
    );
    for f in &failed {
        println!("  FAILED {f}");
    }
    assert!(failed.is_empty(), "{} of {n} failed", failed.len());
}

#[test]
fn gradients_match_the_reference_on_every_pool_with_one_and_two_layers() {
    every_case(Run::Reference);
}

#[test]
fn f64_inputs_run_the_reference_in_f64() {
    every_case(Run::Reference64);
}

#[cfg(feature = "sim")]
#[test]
fn the_kernels_on_candle_memory_match_the_reference() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        every_case(Run::Kernels(dtype));
    }
}

#[test]
fn gradient_scaling_by_the_caller_reaches_dx_and_dw() {
    #[cfg_attr(not(feature = "sim"), allow(unused_mut))]
    let mut runs = vec![Run::Reference];
    #[cfg(feature = "sim")]
    runs.push(Run::Kernels(DType::F32));
    for run in runs {
        for (scale, coefs) in [
            (0.125, LossCoefs::PAPER),
            (1024.0, LossCoefs::PAPER),
            (3.0, LossCoefs::new(0.3, 50.0).unwrap()),
            (1.0, LossCoefs::new(0.0, 200.0).unwrap()),
            (1.0, LossCoefs::new(1.0, 0.0).unwrap()),
        ] {
            let c = case(7, Pool::AvgToken, 2, true, coefs);
            let (ex, ew) =
                judge(run, &c, scale).unwrap_or_else(|e| panic!("{run:?}, x{scale}, {coefs:?}: {e}"));
            println!(
                "candle {run:?}: loss x {scale} with aux_coef {}, gate_coef {}: dx {ex:.1e}, dW {ew:.1e} \
                 against the reference's gradient x {scale}",
                coefs.aux_coef, coefs.gate_coef
            );
        }
    }
}

#[test]
fn stacked_layers_chain_through_candles_graph() {
    // x -> AIEC -> y1 -> AIEC -> y2, loss = <y2, dy> + the paper's objective of both.
    let dev = Device::Cpu;
    let cfg = AiecConfig::with_interval(9, 4, 0.0, 1, Pool::AvgHw).unwrap();
    let dims = [5usize, 9, 3, 2];
    let n: usize = dims.iter().product();
    let mut rng = aiec::init::SplitMix64::new(11);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform(-0.5, 1.5) as f32).collect();
    let dy: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let targets = [3i64, 0, 2, 1, 3];

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let (a1, a2) =
        (Aiec::new_seeded(cfg, vb.pp("a1"), 1).unwrap(), Aiec::new_seeded(cfg, vb.pp("a2"), 2).unwrap());
    let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), &dims, &dev).unwrap()).unwrap();
    let t = Tensor::new(&targets, &dev).unwrap();
    let y1 = a1.forward(&xv, Some(&t)).unwrap();
    let y2 = a2.forward(&y1, Some(&t)).unwrap();
    let task = (y2 * Tensor::from_vec(dy.clone(), &dims, &dev).unwrap()).unwrap().sum_all().unwrap();
    let l = losses(&[&a1, &a2]).unwrap();
    let grads = (task + l.paper_objective().unwrap()).unwrap().backward().unwrap();

    let mut c1 = AiecLayer::<f32>::new(cfg, 1).unwrap();
    let mut c2 = AiecLayer::<f32>::new(cfg, 2).unwrap();
    let r1 = c1.forward(&x, &dims, Some(&targets)).unwrap();
    let r2 = c2.forward(&r1.y, &dims, Some(&targets)).unwrap();
    let cl = cpu::combine(&[&r1, &r2], LossCoefs::PAPER).unwrap();
    let g2 = c2.backward(&r2, &dy, &cl.scales).unwrap();
    let g1 = c1.backward(&r1, &g2.dx, &cl.scales).unwrap();
    let w = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
    let tol = tolerance("f32");
    let ex = close("dx", &values(grads.get(&xv).unwrap()).unwrap(), &w(&g1.dx), tol).unwrap();
    let e1 = close("dW1", &values(grads.get(a1.weight()).unwrap()).unwrap(), &w(&g1.dw), tol).unwrap();
    let e2 = close("dW2", &values(grads.get(a2.weight()).unwrap()).unwrap(), &w(&g2.dw), tol).unwrap();
    exact("counters 1", &[a1.counters()], &[c1.counters().clone()]).unwrap();
    exact("counters 2", &[a2.counters()], &[c2.counters().clone()]).unwrap();
    assert!(cl.gate_count > 0, "the gate masked nothing");
    println!(
        "candle: two stacked layers (avg_hw, counting on, N = {}): dx {ex:.1e}, dW1 {e1:.1e}, dW2 {e2:.1e}; \
         counters exact",
        cl.gate_count
    );
}

#[test]
fn adamw_trains_w_through_its_var() {
    let dev = Device::Cpu;
    let cfg = AiecConfig::with_interval(12, 3, 0.0, 1, Pool::None).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let layer = Aiec::new_seeded(cfg, vb.pp("act"), 42).unwrap();
    let mut reference = AiecLayer::<f32>::new(cfg, 42).unwrap();
    let w0 = values(layer.weight()).unwrap();
    exact("W from the seed", &w0, &reference.weights().iter().map(|&v| v as f64).collect::<Vec<_>>())
        .unwrap();
    let vars = varmap.all_vars();
    assert_eq!(vars.len(), 1);
    assert_eq!(vars[0].id(), layer.weight().id(), "W is the VarMap's variable");

    let (b, c) = (8, 12);
    let mut rng = aiec::init::SplitMix64::new(5);
    let x: Vec<f32> = (0..b * c).map(|_| rng.uniform(-1.0, 2.0) as f32).collect();
    let targets: Vec<i64> = (0..b).map(|i| (i % 3) as i64).collect();
    let xt = Tensor::from_vec(x.clone(), (b, c), &dev).unwrap();
    let tt = Tensor::new(targets.as_slice(), &dev).unwrap();
    let params = candle_nn::ParamsAdamW { lr: 0.01, ..Default::default() };
    let mut opt = candle_nn::AdamW::new(vars, params.clone()).unwrap();
    layer.forward(&xt, Some(&tt)).unwrap();
    opt.backward_step(&losses(&[&layer]).unwrap().paper_objective().unwrap()).unwrap();

    // AdamW's first step from the reference's dW.
    let rec = reference.forward(&x, &[b, c], Some(&targets)).unwrap();
    let cl = cpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
    let g = reference.backward(&rec, &vec![0.0; b * c], &cl.scales).unwrap().dw;
    let want: Vec<f64> = w0
        .iter()
        .zip(&g)
        .map(|(&w, &g)| {
            let g = g as f64;
            w * (1.0 - params.lr * params.weight_decay) - params.lr * g / (g.abs() + params.eps)
        })
        .collect();
    let w1 = values(layer.weight()).unwrap();
    let err = close("W after one AdamW step", &w1, &want, tolerance("f32")).unwrap();
    assert!(w1.iter().zip(&w0).filter(|(a, b)| a != b).count() > 0, "W did not move");

    // The next forward uses the new W.
    reference.set_weights(&w1.iter().map(|&v| v as f32).collect::<Vec<_>>()).unwrap();
    layer.forward(&xt, Some(&tt)).unwrap();
    let rec = reference.forward(&x, &[b, c], Some(&targets)).unwrap();
    let cl = cpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
    let v = losses(&[&layer]).unwrap().values().unwrap();
    close("aux after the step", &[v.aux], &[cl.aux as f64], tolerance("f32")).unwrap();
    exact("counters after two steps", &[layer.counters()], &[reference.counters().clone()]).unwrap();
    println!("candle: AdamW step on W through its Var matches AdamW on the reference's dW ({err:.1e}); the next forward sees it");
}

#[test]
fn evaluation_resets_the_counters_and_follows_the_layer_policy() {
    let dev = Device::Cpu;
    let cfg = AiecConfig::with_interval(6, 3, 0.0, 2, Pool::Token).unwrap();
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev);
    let layer = Aiec::new_seeded(cfg, vb, 3).unwrap();
    let mut reference = AiecLayer::<f32>::new(cfg, 3).unwrap();
    let dims = [4usize, 5, 6];
    let n: usize = dims.iter().product();
    let mut rng = aiec::init::SplitMix64::new(9);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 2.0) as f32).collect();
    let targets = [0i64, 1, 2, 1];
    let xt = Tensor::from_vec(x.clone(), &dims, &dev).unwrap();
    let tt = Tensor::new(&targets, &dev).unwrap();
    let same = |what: &str, layer: &Aiec, reference: &AiecLayer<f32>| {
        exact(what, &[layer.counters()], &[reference.counters().clone()]).unwrap();
        assert_eq!(layer.step(), reference.step(), "{what}: step");
        assert_eq!(layer.is_training(), reference.is_training(), "{what}: mode");
    };
    for _ in 0..4 {
        layer.forward(&xt, Some(&tt)).unwrap();
        reference.forward(&x, &dims, Some(&targets)).unwrap();
    }
    same("after 4 training forwards", &layer, &reference);
    assert!(layer.counters() != Counters::new(3, 6), "steps 2 and 4 counted");

    layer.eval();
    reference.eval();
    same("after eval()", &layer, &reference);
    assert_eq!(layer.counters(), Counters::new(3, 6), "eval() resets the counters");
    let y = layer.forward(&xt, Some(&tt)).unwrap();
    let rec = reference.forward(&x, &dims, Some(&targets)).unwrap();
    same("an evaluation forward with targets", &layer, &reference);
    let w = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
    exact("y in evaluation", &values(&y).unwrap(), &w(&rec.y)).unwrap();
    let cl = cpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
    let v = losses(&[&layer]).unwrap().values().unwrap();
    close("gate on the reset counters", &[v.gate], &[cl.gate as f64], tolerance("f32")).unwrap();
    exact("N on the reset counters", &[v.gate_count], &[cl.gate_count]).unwrap();

    // A snapshot restored in evaluation mode stays; eval() again resets again.
    let snapshot = Counters::from_parts(3, 6, vec![2; 18], vec![1; 18], vec![4; 3]).unwrap();
    layer.set_counters(snapshot.clone()).unwrap();
    layer.forward(&xt, Some(&tt)).unwrap();
    assert_eq!(layer.counters(), snapshot, "no update in evaluation mode");
    layer.eval();
    assert_eq!(layer.counters(), Counters::new(3, 6), "every eval() resets");

    // Back to training: steps count again; the Module forward is the threshold and counts a step.
    layer.train();
    reference.train();
    let y = xt.apply(&layer).unwrap();
    reference.forward(&x, &dims, None).unwrap();
    exact(
        "Module forward = threshold",
        &values(&y).unwrap(),
        &w(&xt.relu().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()),
    )
    .unwrap();
    same("a training forward without targets", &layer, &reference);
    assert!(layer.terms().is_none(), "a forward without targets keeps no terms");
    let e = losses(&[&layer]).unwrap_err();
    assert!(matches!(aiec_error(&e), Some(AiecError::LayerMismatch { layer: 0, .. })), "{e}");
    layer.forward(&xt, Some(&tt)).unwrap();
    reference.forward(&x, &dims, Some(&targets)).unwrap();
    same("a training forward on an update step", &layer, &reference);
    println!(
        "candle: step, update interval, eval() reset (every call), evaluation forwards (no step, no update), \
         Module forward: as the reference layer"
    );
}

/// The layer's whole state: W, counters, step, mode, the kept terms' values.
fn state(layer: &Aiec) -> (Vec<f64>, Counters, u64, bool, Option<Vec<f64>>) {
    let terms = layer.terms().map(|t| values(t.tensor()).unwrap());
    (values(layer.weight()).unwrap(), layer.counters(), layer.step(), layer.is_training(), terms)
}

#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let dev = Device::Cpu;
    let cfg = AiecConfig::with_interval(7, 5, 0.0, 1, Pool::None).unwrap();
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev);
    #[cfg_attr(not(feature = "sim"), allow(unused_mut))]
    let mut layers = vec![("reference", Aiec::new_seeded(cfg, vb.pp("r"), 1).unwrap())];
    #[cfg(feature = "sim")]
    layers.push((
        "kernels",
        Aiec::new_seeded(cfg, vb.pp("k"), 1).unwrap().on_device(aiec::Device::sim()).unwrap(),
    ));
    let x = Tensor::ones((4, 7), DType::F32, &dev).unwrap();
    let good = Tensor::new(&[0u32, 1, 2, 3], &dev).unwrap();
    type Check = fn(&AiecError) -> bool;
    let cases: Vec<(&str, Tensor, Option<Tensor>, Check)> = vec![
        (
            "C = 6 for a layer of C = 7",
            Tensor::ones((4, 6), DType::F32, &dev).unwrap(),
            Some(good.clone()),
            |e| matches!(e, AiecError::ChannelMismatch { expected: 7, got: 6, .. }),
        ),
        (
            "a 3-d input for pooling none",
            Tensor::ones((4, 7, 1), DType::F32, &dev).unwrap(),
            Some(good.clone()),
            |e| matches!(e, AiecError::RankMismatch { .. }),
        ),
        ("target 9 of K = 5", x.clone(), Some(Tensor::new(&[0u32, 9, 1, 2], &dev).unwrap()), |e| {
            matches!(e, AiecError::TargetOutOfRange { index: 1, value: 9, classes: 5 })
        }),
        ("target -1", x.clone(), Some(Tensor::new(&[0i64, 1, -1, 2], &dev).unwrap()), |e| {
            matches!(e, AiecError::TargetOutOfRange { index: 2, value: -1, .. })
        }),
        ("3 targets for B = 4", x.clone(), Some(Tensor::new(&[0u32, 1, 2], &dev).unwrap()), |e| {
            matches!(e, AiecError::TargetCountMismatch { batch: 4, got: 3 })
        }),
        ("float targets", x.clone(), Some(Tensor::new(&[0f32, 1., 2., 3.], &dev).unwrap()), |e| {
            matches!(e, AiecError::Unsupported { .. })
        }),
        ("2-d targets", x.clone(), Some(Tensor::zeros((4, 1), DType::U32, &dev).unwrap()), |e| {
            matches!(e, AiecError::Unsupported { .. })
        }),
        ("a u32 input", Tensor::ones((4, 7), DType::U32, &dev).unwrap(), Some(good.clone()), |e| {
            matches!(e, AiecError::Unsupported { .. })
        }),
    ];
    let mut checked = 0;
    for (name, layer) in &layers {
        // A good step first, so that there are terms and counts to keep.
        layer.forward(&x, Some(&good)).unwrap();
        let before = state(layer);
        let mut all =
            cases.iter().map(|(a, b, c, d)| (a.to_string(), b.clone(), c.clone(), *d)).collect::<Vec<_>>();
        let odd_dtype = if *name == "reference" { DType::BF16 } else { DType::F64 };
        all.push((
            format!("a {odd_dtype:?} input"),
            x.to_dtype(odd_dtype).unwrap(),
            Some(good.clone()),
            |e| matches!(e, AiecError::Unsupported { .. }),
        ));
        for (what, x, t, check) in &all {
            let err = layer.forward(x, t.as_ref()).expect_err(what);
            let typed = aiec_error(&err).unwrap_or_else(|| panic!("{name}, {what}: not an AiecError: {err}"));
            assert!(check(typed), "{name}, {what}: {typed:?}");
            assert!(before == state(layer), "{name}, {what}: the state changed");
            checked += 1;
        }
        let err = layer.set_counters(Counters::new(4, 7)).unwrap_err();
        assert!(matches!(aiec_error(&err), Some(AiecError::LengthMismatch { .. })), "{err}");
        let err = layer
            .terms()
            .map(|t| combine(&[&t]))
            .unwrap()
            .unwrap()
            .objective(LossCoefs { aux_coef: -1.0, gate_coef: 1.0 });
        assert!(matches!(aiec_error(&err.unwrap_err()), Some(AiecError::InvalidCoefficient { .. })));
        assert!(before == state(layer), "{name}: the state changed");
        checked += 2;
    }
    // Layers whose forwards had different targets do not combine.
    let (a, b) = (&layers[0].1, Aiec::new(cfg, vb.pp("other")).unwrap());
    b.forward(&x, Some(&Tensor::new(&[1u32, 1, 2, 3], &dev).unwrap())).unwrap();
    let e = losses(&[a, &b]).unwrap_err();
    assert!(matches!(aiec_error(&e), Some(AiecError::LayerMismatch { layer: 1, .. })), "{e}");
    let e = combine(&[]).unwrap_err();
    assert!(matches!(aiec_error(&e), Some(AiecError::LayerMismatch { .. })), "{e}");
    println!(
        "candle: {} bad inputs on {} backend(s) are typed AiecErrors; weights, counters, step, mode and terms \
         unchanged; mismatched layers do not combine",
        checked + 2,
        layers.len()
    );
}

#[test]
fn several_forwards_of_one_layer_combine_through_their_terms() {
    // Two micro-batches through one layer before one backward: forward_parts keeps
    // each forward's terms; their losses combine (and sum) as candle sees fit.
    let dev = Device::Cpu;
    let cfg = AiecConfig::with_interval(5, 2, 0.0, 1, Pool::None).unwrap();
    let varmap = VarMap::new();
    let layer = Aiec::new_seeded(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev), 8).unwrap();
    let mut reference = AiecLayer::<f32>::new(cfg, 8).unwrap();
    let xs = [
        vec![0.5f32, -1.0, 2.0, 0.0, 1.0, 1.0, 1.0, -0.5, 3.0, 0.25],
        vec![1.0f32, 2.0, -3.0, 0.5, -1.0, 0.0, 2.0, 1.0, 1.0, 1.0],
    ];
    let ts = [[0i64, 1], [1i64, 1]];
    let mut total: Option<Tensor> = None;
    let mut dw_want = vec![0f64; 10];
    for (x, t) in xs.iter().zip(&ts) {
        let (_, terms) = layer
            .forward_parts(
                &Tensor::from_vec(x.clone(), (2, 5), &dev).unwrap(),
                Some(&Tensor::new(t, &dev).unwrap()),
            )
            .unwrap();
        let l = combine(&[&terms.unwrap()]).unwrap().paper_objective().unwrap();
        total = Some(match total {
            None => l,
            Some(a) => (a + l).unwrap(),
        });
        let rec = reference.forward(x, &[2, 5], Some(t)).unwrap();
        let cl = cpu::combine(&[&rec], LossCoefs::PAPER).unwrap();
        let g = reference.backward(&rec, &[0.0; 10], &cl.scales).unwrap();
        dw_want.iter_mut().zip(&g.dw).for_each(|(a, &b)| *a += b as f64);
    }
    let grads = total.unwrap().backward().unwrap();
    let e = close(
        "dW summed over two forwards",
        &values(grads.get(layer.weight()).unwrap()).unwrap(),
        &dw_want,
        tolerance("f32"),
    )
    .unwrap();
    exact("counters", &[layer.counters()], &[reference.counters().clone()]).unwrap();
    println!(
        "candle: two forwards of one layer before one backward (forward_parts): dW {e:.1e}; counters exact"
    );
}
