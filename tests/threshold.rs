//! The threshold kernels (`kernels/threshold.cu`) against the CPU reference, on
//! every device present, for f32, f16 and bf16, on random and odd shapes,
//! misaligned pointers, and in place. Threshold is exact: results compare bit
//! for bit.

mod common;

use aiec::cpu::{backward, forward, LossScales};
use aiec::launch::threshold_fwd;
use aiec::ops::threshold;
use aiec::{AiecConfig, AiecError, Counters, DType, Device, Element, Pool, Tensor};
use common::devices::{activations, devices};
use half::{bf16, f16};

const SIZES: [usize; 7] = [1, 7, 31, 1023, 4097, 65_537, 300_001];

/// The CPU reference's threshold and its gradient, on `x` widened to f32.
fn reference<T: Element>(x: &[T], dy: &[T], tau: f32) -> (Vec<T>, Vec<T>) {
    let n = x.len();
    let cfg = AiecConfig::new(n, 1, tau as f64, Pool::None).unwrap();
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let dyf: Vec<f32> = dy.iter().map(|v| v.to_f32()).collect();
    let mut counters = Counters::new(1, n);
    let rec = forward(&cfg, &xf, &[1, n], &vec![0.0; n], None, &mut counters, false).unwrap();
    let g = backward(&cfg, &rec, &vec![0.0; n], &dyf, &LossScales::zero()).unwrap();
    // Kept elements are copied bit for bit (NaN payloads too); dropped ones are +0.
    let keep = |i: usize, v: f32| if v.to_bits() == 0 && !rec.keep[i] { T::from_f32(0.0) } else { x_or(v) };
    fn x_or<T: Element>(v: f32) -> T {
        T::from_f32(v)
    }
    let y = (0..n).map(|i| if rec.keep[i] { x[i] } else { keep(i, rec.y[i]) }).collect();
    let dx = (0..n).map(|i| if rec.keep[i] { dy[i] } else { keep(i, g.dx[i]) }).collect();
    (y, dx)
}

fn bits<T: Element>(v: &[T]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

fn assert_bits<T: Element>(what: &str, got: &[T], want: &[T]) {
    let (g, w) = (bits(got), bits(want));
    let bad: Vec<usize> = (0..g.len()).filter(|&i| g[i] != w[i]).take(5).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} differ; first: {:?}",
        (0..g.len()).filter(|&i| g[i] != w[i]).count(),
        g.len(),
        bad.iter().map(|&i| (i, got[i].to_f32(), want[i].to_f32())).collect::<Vec<_>>()
    );
}

fn check_dtype<T: Element>(dev: &Device) {
    for (si, &n) in SIZES.iter().enumerate() {
        for tau in [0.0f32, 0.5] {
            let seed = 31 * si as u64 + (tau * 8.0) as u64;
            let x: Vec<T> = activations(seed, n, tau).into_iter().map(T::from_f32).collect();
            let dy: Vec<T> = activations(seed + 1000, n, tau).into_iter().map(T::from_f32).collect();
            let (want_y, want_dx) = reference(&x, &dy, tau);
            let what = format!("{} {} n={n} tau={tau}", dev.label(), T::DTYPE);

            let xt = Tensor::from_slice(dev, &x, &[n]).unwrap();
            let y = threshold::forward(&xt, tau).unwrap();
            assert_bits(&format!("y {what}"), &y.to_vec::<T>().unwrap(), &want_y);

            let dyt = Tensor::from_slice(dev, &dy, &[n]).unwrap();
            let dx = threshold::backward(&xt, &dyt, tau).unwrap();
            assert_bits(&format!("dx {what}"), &dx.to_vec::<T>().unwrap(), &want_dx);

            let mut inplace = Tensor::from_slice(dev, &dy, &[n]).unwrap();
            threshold::backward_inplace(&xt, &mut inplace, tau).unwrap();
            assert_bits(&format!("dx in place {what}"), &inplace.to_vec::<T>().unwrap(), &want_dx);
        }
    }
}

#[test]
fn threshold_matches_the_reference_on_every_device() {
    for dev in devices() {
        check_dtype::<f32>(&dev);
        check_dtype::<f16>(&dev);
        check_dtype::<bf16>(&dev);
        println!("threshold: {} f32/f16/bf16 on {:?} elements: bitwise equal", dev.label(), SIZES);
    }
}

/// Pointers that are not 16-byte aligned, and differently aligned from each
/// other, take the scalar path (or the vector path after a scalar head).
#[test]
fn threshold_handles_misaligned_pointers() {
    fn run<T: Element>(dev: &Device) {
        let n = 1000;
        let x: Vec<T> = activations(5, n + 16, 0.0).into_iter().map(T::from_f32).collect();
        let xt = Tensor::from_slice(dev, &x, &[n + 16]).unwrap();
        let size = T::DTYPE.size() as u64;
        for (xo, yo) in [(1usize, 1usize), (1, 2), (3, 0), (0, 5), (7, 7)] {
            let yt = Tensor::zeros(dev, T::DTYPE, &[n + 16]).unwrap();
            let m = n - 3;
            let plan = threshold_fwd(
                T::DTYPE,
                m as u64,
                xt.address() + xo as u64 * size,
                yt.address() + yo as u64 * size,
                0.0,
                dev.limits(),
            )
            .unwrap();
            // SAFETY: both ranges [off, off + m) lie inside their n + 16 element
            // buffers on `dev`; `yt` is not used elsewhere during the launch.
            unsafe { dev.launch(&plan) }.unwrap();
            let got = yt.to_vec::<T>().unwrap();
            let (want, _) = reference(&x[xo..xo + m], &x[xo..xo + m], 0.0);
            assert_bits(&format!("{} {} x+{xo} y+{yo}", dev.label(), T::DTYPE), &got[yo..yo + m], &want);
            assert!(bits(&got[..yo]).iter().chain(&bits(&got[yo + m..])).all(|&b| b == 0), "wrote outside");
        }
    }
    for dev in devices() {
        run::<f32>(&dev);
        run::<f16>(&dev);
        run::<bf16>(&dev);
    }
}

#[test]
fn threshold_rejects_bad_tensors() {
    for dev in devices() {
        let x = Tensor::from_slice(&dev, &[1.0f32, -1.0], &[2]).unwrap();
        let dy16 = Tensor::from_slice(&dev, &[f16::ONE, f16::ONE], &[2]).unwrap();
        let e = threshold::backward(&x, &dy16, 0.0).unwrap_err();
        assert_eq!(e, AiecError::DTypeMismatch { what: "dy", expected: DType::F32, got: DType::F16 });
        let dy3 = Tensor::from_slice(&dev, &[1.0f32; 3], &[3]).unwrap();
        assert!(matches!(threshold::backward(&x, &dy3, 0.0), Err(AiecError::ShapeMismatch { .. })));
        assert!(matches!(threshold::forward(&x, -1.0), Err(AiecError::InvalidTau { .. })));
        assert!(matches!(threshold::forward(&x, f32::NAN), Err(AiecError::InvalidTau { .. })));
        assert!(matches!(x.to_vec::<bf16>(), Err(AiecError::DTypeMismatch { .. })));
        assert!(matches!(
            Tensor::from_slice(&dev, &[1.0f32; 3], &[2, 2]),
            Err(AiecError::LengthMismatch { .. })
        ));
        // Empty tensors launch nothing and succeed.
        let before = dev.stats().launches;
        let e0 = Tensor::from_slice::<f32>(&dev, &[], &[0, 4]).unwrap();
        assert_eq!(threshold::forward(&e0, 0.0).unwrap().shape(), &[0, 4]);
        assert_eq!(dev.stats().launches, before);
    }
    #[cfg(feature = "sim")]
    {
        // Tensors on two different devices.
        let (a, b) = (Device::sim(), Device::sim());
        let x = Tensor::from_slice(&a, &[1.0f32], &[1]).unwrap();
        let mut y = Tensor::zeros(&b, DType::F32, &[1]).unwrap();
        assert!(matches!(threshold::forward_into(&x, &mut y, 0.0), Err(AiecError::DeviceMismatch { .. })));
    }
}
