//! Layer configuration and input-shape planning (pure: no buffers, no device).

use crate::error::{AiecError, Result};
/// Defined in its own module (the error type names it too); this is its public path.
pub use crate::pool::Pool;

/// The configuration of one AIEC layer, validated on construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AiecConfig {
    channels: usize,
    classes: usize,
    tau: f64,
    update_interval: u64,
    pool: Pool,
}

impl AiecConfig {
    /// Default `update_interval` of the paper.
    pub const DEFAULT_UPDATE_INTERVAL: u64 = 5;

    /// A layer with `channels` (`C`) and `classes` (`K`), threshold `tau` and
    /// pooling mode `pool`, updating its counters every 5th training forward.
    pub fn new(channels: usize, classes: usize, tau: f64, pool: Pool) -> Result<Self> {
        Self::with_interval(channels, classes, tau, Self::DEFAULT_UPDATE_INTERVAL, pool)
    }

    /// As [`AiecConfig::new`] with an explicit `update_interval` (`>= 1`).
    pub fn with_interval(
        channels: usize,
        classes: usize,
        tau: f64,
        update_interval: u64,
        pool: Pool,
    ) -> Result<Self> {
        // The kernels hold tau in f32: a tau finite in f64 may be infinite there (1e39).
        if !tau.is_finite() || tau < 0.0 || !(tau as f32).is_finite() {
            return Err(AiecError::InvalidTau { tau });
        }
        if update_interval == 0 {
            return Err(AiecError::ZeroUpdateInterval);
        }
        if channels == 0 {
            return Err(AiecError::EmptyDimension { what: "channels C", dims: vec![classes, channels] });
        }
        if classes == 0 {
            return Err(AiecError::EmptyDimension { what: "classes K", dims: vec![classes, channels] });
        }
        // W, the counters and dW are [K, C]; refuse here a size no allocation can hold.
        checked_bytes(&[classes, channels], std::mem::size_of::<i64>())?;
        Ok(AiecConfig { channels, classes, tau, update_interval, pool })
    }

    /// `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }
    /// `K`.
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// The threshold, finite also as `f32` (kernels compare in `f32`: `tau as f32`).
    pub fn tau(&self) -> f64 {
        self.tau
    }
    /// Counters update on every `update_interval`-th training forward.
    pub fn update_interval(&self) -> u64 {
        self.update_interval
    }
    /// The pooling mode.
    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// Plans an input of shape `dims` for this layer: checks rank, channels and
    /// empty dimensions, and returns the canonical `(B, C, P)` view.
    pub fn plan_input(&self, dims: &[usize]) -> Result<InputDims> {
        InputDims::new(self.pool, self.channels, dims)
    }
}

/// An input shape reduced to what every pooling mode needs: `B` samples of `C`
/// channels, each pooled over `P` positions (`T`, `H*W`, or 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDims {
    /// The pooling mode the shape was planned for.
    pub pool: Pool,
    /// The shape as given.
    pub dims: Vec<usize>,
    /// Batch size `B` (may be 0).
    pub batch: usize,
    /// Channels `C`.
    pub channels: usize,
    /// Positions pooled per channel: `T`, `H*W` or 1.
    pub positions: usize,
}

impl InputDims {
    /// Checks `dims` against the layout of `pool` and the layer's `channels`.
    pub fn new(pool: Pool, channels: usize, dims: &[usize]) -> Result<Self> {
        if dims.len() != pool.rank() {
            return Err(AiecError::RankMismatch { pool, expected: pool.rank(), dims: dims.to_vec() });
        }
        let (batch, got_c, positions) = match pool {
            Pool::Token | Pool::AvgToken => {
                if dims[1] == 0 {
                    return Err(AiecError::EmptyDimension { what: "tokens T", dims: dims.to_vec() });
                }
                (dims[0], dims[2], dims[1])
            }
            Pool::AvgHw => {
                if dims[2] == 0 || dims[3] == 0 {
                    return Err(AiecError::EmptyDimension { what: "H and W", dims: dims.to_vec() });
                }
                let hw = dims[2]
                    .checked_mul(dims[3])
                    .ok_or_else(|| AiecError::ShapeOverflow { dims: dims.to_vec() })?;
                (dims[0], dims[1], hw)
            }
            Pool::None => (dims[0], dims[1], 1),
        };
        if got_c != channels {
            return Err(AiecError::ChannelMismatch {
                pool,
                expected: channels,
                got: got_c,
                dims: dims.to_vec(),
            });
        }
        checked_len(dims)?;
        Ok(InputDims { pool, dims: dims.to_vec(), batch, channels, positions })
    }

    /// Number of elements of the input (and of `y`, `dy`, `dx`).
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.positions
    }

    /// True when the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flat index of element `(b, c, p)` in this layout.
    #[inline]
    pub fn index(&self, b: usize, c: usize, p: usize) -> usize {
        let (cc, pp) = (self.channels, self.positions);
        match self.pool {
            // [B, T, C]: position (token) outer, channel inner.
            Pool::Token | Pool::AvgToken => (b * pp + p) * cc + c,
            // [B, C, H*W]: channel outer, position inner; `none` has P = 1.
            Pool::AvgHw | Pool::None => (b * cc + c) * pp + p,
        }
    }

    /// The positions whose values make up `v[b, c]`: token pooling reads only the
    /// class token, averaging modes read all `P`.
    pub fn pooled_positions(&self) -> usize {
        match self.pool {
            Pool::Token => 1,
            _ => self.positions,
        }
    }
}

/// Product of `dims`, or [`AiecError::ShapeOverflow`].
pub fn checked_len(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| AiecError::ShapeOverflow { dims: dims.to_vec() })
}

/// Bytes of a buffer of shape `dims` with elements of `elem_size` bytes, or
/// [`AiecError::ShapeOverflow`] when no allocation can hold it (more than
/// `isize::MAX` bytes, the most Rust and the drivers can address in one buffer).
pub fn checked_bytes(dims: &[usize], elem_size: usize) -> Result<usize> {
    checked_len(dims)?
        .checked_mul(elem_size)
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| AiecError::ShapeOverflow { dims: dims.to_vec() })
}

/// Checks the targets against `B` and `K`; returns them as indices.
pub fn check_targets(targets: &[i64], batch: usize, classes: usize) -> Result<Vec<usize>> {
    if targets.len() != batch {
        return Err(AiecError::TargetCountMismatch { batch, got: targets.len() });
    }
    targets
        .iter()
        .enumerate()
        .map(|(index, &value)| {
            if value >= 0 && (value as u64) < classes as u64 {
                Ok(value as usize)
            } else {
                Err(AiecError::TargetOutOfRange { index, value, classes })
            }
        })
        .collect()
}

/// The two loss coefficients (`aux_coef * aux + gate_coef * gate` is added to the
/// task loss). The paper uses `aux_coef = 1`, `gate_coef = 200`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossCoefs {
    /// Weight of the auxiliary cross-entropy.
    pub aux_coef: f64,
    /// Weight of the gate loss.
    pub gate_coef: f64,
}

impl LossCoefs {
    /// The paper's settings.
    pub const PAPER: LossCoefs = LossCoefs { aux_coef: 1.0, gate_coef: 200.0 };

    /// Checked coefficients: both finite and `>= 0`.
    pub fn new(aux_coef: f64, gate_coef: f64) -> Result<Self> {
        for (name, value) in [("aux_coef", aux_coef), ("gate_coef", gate_coef)] {
            if !value.is_finite() || value < 0.0 {
                return Err(AiecError::InvalidCoefficient { name, value });
            }
        }
        Ok(LossCoefs { aux_coef, gate_coef })
    }
}

/// How a backward delivers `dW` (the kernels, `gpu::fused::backward`, and the
/// reference, [`crate::cpu::buffers::backward_train`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DwMode {
    /// `dw = dW`.
    Write,
    /// `dw += dW`, as frameworks accumulate gradients over micro-batches.
    Accumulate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_bad_values() {
        assert_eq!(AiecConfig::new(4, 3, -0.5, Pool::None), Err(AiecError::InvalidTau { tau: -0.5 }));
        assert!(matches!(
            AiecConfig::new(4, 3, f64::NAN, Pool::None),
            Err(AiecError::InvalidTau { tau }) if tau.is_nan()
        ));
        assert!(matches!(
            AiecConfig::new(4, 3, f64::INFINITY, Pool::None),
            Err(AiecError::InvalidTau { .. })
        ));
        assert_eq!(AiecConfig::with_interval(4, 3, 0.0, 0, Pool::None), Err(AiecError::ZeroUpdateInterval));
        assert!(matches!(
            AiecConfig::new(0, 3, 0.0, Pool::None),
            Err(AiecError::EmptyDimension { what: "channels C", .. })
        ));
        assert!(matches!(
            AiecConfig::new(4, 0, 0.0, Pool::None),
            Err(AiecError::EmptyDimension { what: "classes K", .. })
        ));
    }

    #[test]
    fn checked_bytes_refuses_what_no_allocation_holds() {
        assert_eq!(checked_bytes(&[3, 5], 8), Ok(120));
        assert_eq!(checked_bytes(&[0, usize::MAX], 8), Ok(0));
        let half = isize::MAX as usize / 4 + 1;
        assert_eq!(checked_bytes(&[half], 4), Err(AiecError::ShapeOverflow { dims: vec![half] }));
        assert!(checked_bytes(&[1 << 40, 1 << 40], 1).is_err());
    }

    #[test]
    fn plan_layouts() {
        let d = InputDims::new(Pool::Token, 5, &[2, 3, 5]).unwrap();
        assert_eq!((d.batch, d.channels, d.positions, d.pooled_positions()), (2, 5, 3, 1));
        assert_eq!(d.index(1, 4, 2), (3 + 2) * 5 + 4);
        let d = InputDims::new(Pool::AvgHw, 5, &[2, 5, 3, 4]).unwrap();
        assert_eq!((d.batch, d.positions), (2, 12));
        assert_eq!(d.index(1, 2, 7), (5 + 2) * 12 + 7);
        let d = InputDims::new(Pool::None, 5, &[0, 5]).unwrap();
        assert!(d.is_empty());
        assert!(matches!(
            InputDims::new(Pool::AvgHw, 5, &[2, 5, 0, 4]),
            Err(AiecError::EmptyDimension { .. })
        ));
        assert!(matches!(
            InputDims::new(Pool::Token, 5, &[2, 5]),
            Err(AiecError::RankMismatch { expected: 3, .. })
        ));
        assert!(matches!(
            InputDims::new(Pool::AvgToken, 5, &[2, 3, 4]),
            Err(AiecError::ChannelMismatch { expected: 5, got: 4, .. })
        ));
        assert!(matches!(
            InputDims::new(Pool::None, 5, &[usize::MAX, 5]),
            Err(AiecError::ShapeOverflow { .. })
        ));
    }

    #[test]
    fn pool_names_round_trip() {
        for p in Pool::ALL {
            assert_eq!(Pool::from_name(p.name()), Some(p));
        }
        assert_eq!(Pool::from_name("max"), None);
    }
}
