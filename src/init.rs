//! Deterministic weight initialisation (Xavier-uniform from a seed), with no RNG
//! dependency: SplitMix64 is enough for initial weights and is the same everywhere.

/// A SplitMix64 stream: small, fast, and identical on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

/// Xavier-uniform weights `[K, C]`: `U(-a, a)` with `a = sqrt(6 / (K + C))`.
/// Allocates `K * C` values: for a size from the caller, [`xavier_values`]
/// into memory allocated fallibly.
pub fn xavier_uniform(classes: usize, channels: usize, seed: u64) -> Vec<f64> {
    xavier_values(classes, channels, seed).take(classes * channels).collect()
}

/// The values of [`xavier_uniform`] in order, without allocating (an endless
/// stream: take `K * C`).
pub fn xavier_values(classes: usize, channels: usize, seed: u64) -> impl Iterator<Item = f64> {
    let a = (6.0 / (classes as f64 + channels as f64)).sqrt();
    let mut rng = SplitMix64::new(seed);
    std::iter::repeat_with(move || rng.uniform(-a, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xavier_bounds_and_determinism() {
        let (k, c) = (10, 30);
        let a = (6.0f64 / 40.0).sqrt();
        let w = xavier_uniform(k, c, 7);
        assert_eq!(w.len(), k * c);
        assert!(w.iter().all(|&v| v >= -a && v < a));
        assert_eq!(w, xavier_uniform(k, c, 7));
        assert_ne!(w, xavier_uniform(k, c, 8));
        // Roughly centred and spread over the interval.
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        assert!(mean.abs() < 0.1 * a, "mean {mean}");
        assert!(w.iter().any(|&v| v > 0.8 * a) && w.iter().any(|&v| v < -0.8 * a));
    }
}
