//! The activation-counting unit's state: `act`, `inh` (`[K, C]`) and `total` (`[K]`).

use crate::alloc;
use crate::config::checked_len;
use crate::error::{AiecError, Result};

/// Per-class counters of one layer. `total` starts at 1, so that
/// `activity = (act - inh) / total` never divides by zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    classes: usize,
    channels: usize,
    /// `[K, C]`: samples of class `k` (correctly predicted, on update steps) with `v[c] > 0`.
    pub act: Vec<i64>,
    /// `[K, C]`: the same with `v[c] == 0`.
    pub inh: Vec<i64>,
    /// `[K]`: 1 + the number of such samples of class `k`.
    pub total: Vec<i64>,
}

impl Counters {
    /// Fresh counters: `act = inh = 0`, `total = 1`.
    ///
    /// # Panics
    /// When `K * C` overflows or the memory is not there; a layer sized by its
    /// caller uses [`Counters::try_new`].
    pub fn new(classes: usize, channels: usize) -> Self {
        Counters {
            classes,
            channels,
            act: vec![0; classes * channels],
            inh: vec![0; classes * channels],
            total: vec![1; classes],
        }
    }

    /// [`Counters::new`], with a size that overflows or memory that is not
    /// there as an error ([`AiecError::ShapeOverflow`], [`AiecError::OutOfMemory`]).
    pub fn try_new(classes: usize, channels: usize) -> Result<Self> {
        let kc = checked_len(&[classes, channels])?;
        Ok(Counters {
            classes,
            channels,
            act: alloc::filled("counters act [K, C]", kc, 0)?,
            inh: alloc::filled("counters inh [K, C]", kc, 0)?,
            total: alloc::filled("counters total [K]", classes, 1)?,
        })
    }

    /// Counters from existing values (e.g. a checkpoint or a golden case), with
    /// their lengths checked against `K` and `C`.
    pub fn from_parts(
        classes: usize,
        channels: usize,
        act: Vec<i64>,
        inh: Vec<i64>,
        total: Vec<i64>,
    ) -> Result<Self> {
        let counters = Counters { classes, channels, act, inh, total };
        counters.check_lengths()?;
        Ok(counters)
    }

    /// `K`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Back to the initial state (`act = inh = 0`, `total = 1`).
    pub fn reset(&mut self) {
        self.act.fill(0);
        self.inh.fill(0);
        self.total.fill(1);
    }

    /// Checks that the public vectors still have the lengths `K` and `C` imply
    /// (`act`, `inh`: `K * C`; `total`: `K`): they can be edited in place.
    fn check_lengths(&self) -> Result<()> {
        let kc = checked_len(&[self.classes, self.channels])?;
        for (what, got, expected) in [
            ("counters act [K, C]", self.act.len(), kc),
            ("counters inh [K, C]", self.inh.len(), kc),
            ("counters total [K]", self.total.len(), self.classes),
        ] {
            if got != expected {
                return Err(AiecError::LengthMismatch { what, expected, got });
            }
        }
        Ok(())
    }

    /// Checks that these counters belong to a layer with `K = classes`, `C = channels`,
    /// vectors included (their lengths).
    pub fn check(&self, classes: usize, channels: usize) -> Result<()> {
        if self.classes != classes {
            return Err(AiecError::LengthMismatch {
                what: "counters (classes K)",
                expected: classes,
                got: self.classes,
            });
        }
        if self.channels != channels {
            return Err(AiecError::LengthMismatch {
                what: "counters (channels C)",
                expected: channels,
                got: self.channels,
            });
        }
        self.check_lengths()
    }

    /// `activity[k, c] <= 0`, i.e. `act <= inh` (exact because `total >= 1`).
    #[inline]
    pub fn inactive(&self, k: usize, c: usize) -> bool {
        let i = k * self.channels + c;
        self.act[i] <= self.inh[i]
    }
}
