//! Every backend present, for test bodies written once (candle's `test_device!`
//! idea): the simulator when built with `--features sim`, and CUDA GPU 0 when it
//! can be opened. An absent backend is reported with the reason, once.

use std::sync::Once;

use aiec::init::SplitMix64;
use aiec::Device;

/// The devices to run on, printing why CUDA is skipped.
pub fn devices() -> Vec<Device> {
    static SAID: Once = Once::new();
    let (devices, why) = aiec::available_devices();
    if let (Some(e), Some(_)) = (&why, std::env::var_os("AIEC_EXPECT_CUDA")) {
        panic!("AIEC_EXPECT_CUDA is set but CUDA is unavailable: {e}");
    }
    SAID.call_once(|| {
        if let Some(e) = &why {
            println!("cuda: skipped: {e}");
        }
        if devices.is_empty() {
            println!("no device backend: build with `--features sim`, or run on a machine with a GPU");
        }
    });
    devices
}

/// Activation-like values: mostly in `[-2, 3)`, with exact zeros, values equal
/// to `tau`, negative zero, NaN and infinities sprinkled in.
pub fn activations(seed: u64, n: usize, tau: f32) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| match rng.next_u64() % 32 {
            0 => 0.0,
            1 => tau,
            2 => -0.0,
            3 => f32::NAN,
            4 => f32::INFINITY,
            5 => f32::NEG_INFINITY,
            _ => rng.uniform(-2.0, 3.0) as f32,
        })
        .collect()
}
