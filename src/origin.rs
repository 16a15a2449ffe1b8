//! Where loss scales come from: every forward record with targets has a
//! [`RecordId`], and the scales a `combine` hands out remember the records and
//! the batch size they were made for ([`ScalesOrigin`]), so a backward can
//! refuse the scales of another combine (another batch, another layer), whose
//! factors would scale its gradients wrongly without any other sign.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{AiecError, Result};

/// The identity of one forward's record, unique in the process (a clone of
/// a record keeps it: it is the same forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(u64);

impl RecordId {
    /// A new identity, never handed out before in this process.
    pub(crate) fn next() -> RecordId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        RecordId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The number behind the identity (what errors name).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}", self.0)
    }
}

/// The records (of `batch` samples each) one combine made its scales from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalesOrigin {
    batch: usize,
    records: Arc<[RecordId]>,
}

impl ScalesOrigin {
    pub(crate) fn new(batch: usize, records: Vec<RecordId>) -> Self {
        ScalesOrigin { batch, records: records.into() }
    }

    /// `B` of the combined records.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The combined records, in the order given to the combine.
    pub fn records(&self) -> &[RecordId] {
        &self.records
    }

    /// Errors with [`AiecError::ForeignScales`] unless the record `id` of
    /// `batch` samples was one of the combined records.
    pub fn check(&self, id: RecordId, batch: usize) -> Result<()> {
        if self.batch == batch && self.records.contains(&id) {
            return Ok(());
        }
        Err(AiecError::ForeignScales {
            record: id.0,
            batch,
            scales_batch: self.batch,
            scales_records: self.records.iter().map(|r| r.0).collect(),
        })
    }
}
