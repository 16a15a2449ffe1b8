//! The kernels' own f16/bf16 conversions (`kernels/common.cuh`, run through
//! `kernels/convert.cu`) against the `half` crate: all 65,536 bit patterns
//! widened, and over a million `f32` values (every f16/bf16 midpoint neighbour
//! plus random bit patterns) rounded, on every device present.
//!
//! Non-NaN results must be bit-identical. NaN results compare as "is NaN" on a
//! GPU (hardware `cvt` may canonicalise payloads) and bit for bit in the
//! simulator, which reproduces the `half` crate's payload rule.

mod common;

use aiec::init::SplitMix64;
use aiec::ops::convert;
use aiec::{DType, Device, DeviceKind, Element, Tensor};
use common::devices::devices;
use half::{bf16, f16};

fn same(dev: &Device, got: u32, want: u32) -> bool {
    let nan = |b: u32| f32::from_bits(b).is_nan();
    got == want || (dev.kind() == DeviceKind::Cuda && nan(got) && nan(want))
}

fn widen<T: Element>(dev: &Device, to_bits: impl Fn(T) -> u16, from_bits: impl Fn(u16) -> T) {
    let all: Vec<T> = (0..=u16::MAX).map(&from_bits).collect();
    let x = Tensor::from_slice(dev, &all, &[all.len()]).unwrap();
    let got = convert::to_f32(&x).unwrap().to_vec::<f32>().unwrap();
    let bad: Vec<_> = (0..all.len())
        .filter(|&i| !same(dev, got[i].to_bits(), all[i].to_f32().to_bits()))
        .map(|i| (to_bits(all[i]), got[i], all[i].to_f32()))
        .collect();
    assert!(
        bad.is_empty(),
        "{} to_f32 {}: {} of 65536 differ, first {:?}",
        dev.label(),
        T::DTYPE,
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

/// Inputs for rounding: every value of the 16-bit type, its neighbours one f32
/// ulp either side, the exact midpoints between neighbours, and random bits.
fn rounding_inputs<T: Element>(from_bits: impl Fn(u16) -> T, random: usize) -> Vec<f32> {
    let mut v = Vec::new();
    for b in 0..=u16::MAX {
        let f = from_bits(b).to_f32();
        let next = from_bits(b.wrapping_add(1)).to_f32();
        if !f.is_finite() {
            v.push(f);
            continue;
        }
        let u = f.to_bits();
        v.extend([f, f32::from_bits(u.wrapping_add(1)), f32::from_bits(u.wrapping_sub(1))]);
        if next.is_finite() && next.is_sign_positive() == f.is_sign_positive() {
            v.push(((f as f64 + next as f64) / 2.0) as f32); // the tie
        }
    }
    let mut rng = SplitMix64::new(99);
    v.extend((0..random).map(|_| f32::from_bits(rng.next_u64() as u32)));
    v
}

fn round<T: Element>(dev: &Device, to_bits: impl Fn(T) -> u16, from_bits: impl Fn(u16) -> T) {
    let inputs = rounding_inputs(&from_bits, 1_000_000);
    let x = Tensor::from_slice(dev, &inputs, &[inputs.len()]).unwrap();
    let y = convert::from_f32(&x, T::DTYPE).unwrap();
    let got: Vec<T> = y.to_vec().unwrap();
    let mut bad = Vec::new();
    for (i, &f) in inputs.iter().enumerate() {
        let (g, w) = (to_bits(got[i]), to_bits(T::from_f32(f)));
        let nan = |b: u16| from_bits(b).to_f32().is_nan();
        let ok = g == w || (dev.kind() == DeviceKind::Cuda && nan(g) && nan(w));
        if !ok {
            bad.push((f, f.to_bits(), g, w));
        }
    }
    assert!(
        bad.is_empty(),
        "{} from_f32 {}: {} of {} differ, first (x, bits, got, want): {:?}",
        dev.label(),
        T::DTYPE,
        bad.len(),
        inputs.len(),
        &bad[..bad.len().min(5)]
    );
    println!("convert: {} f32 -> {}: {} values bit-exact", dev.label(), T::DTYPE, inputs.len());
}

#[test]
fn f16_conversions_match_the_half_crate() {
    for dev in devices() {
        widen::<f16>(&dev, f16::to_bits, f16::from_bits);
        round::<f16>(&dev, f16::to_bits, f16::from_bits);
    }
}

#[test]
fn bf16_conversions_match_the_half_crate() {
    for dev in devices() {
        widen::<bf16>(&dev, bf16::to_bits, bf16::from_bits);
        round::<bf16>(&dev, bf16::to_bits, bf16::from_bits);
    }
}

#[test]
fn f32_conversion_is_a_copy_and_types_are_checked() {
    for dev in devices() {
        let v = [1.5f32, -0.0, f32::NAN, 3e38];
        let x = Tensor::from_slice(&dev, &v, &[4]).unwrap();
        let y = convert::from_f32(&x, DType::F32).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(
            y.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
            v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
        );
        let h = Tensor::from_slice(&dev, &[f16::ONE], &[1]).unwrap();
        assert!(convert::from_f32(&h, DType::BF16).is_err(), "from_f32 takes f32 only");
    }
}
