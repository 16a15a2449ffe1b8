//! Loss level on a device: the aux and gate losses of `L` layers and the scales
//! their backward needs, combined by one launch from every layer's statistics,
//! so a multi-layer step never waits for the host. Reading a value is the
//! caller's explicit choice ([`GpuLosses::read`]).

use crate::buffer::Buffer;
use crate::config::LossCoefs;
use crate::cpu::loss::{LossScales, Losses};
use crate::device::{Device, Init};
use crate::error::{AiecError, Result};
use crate::gpu::dp;
use crate::gpu::fused::{self, LayerLoss};
use crate::gpu::record::GpuRecord;
use crate::gpu::workspace::Workspace;
use crate::origin::ScalesOrigin;
use crate::params::AiecLosses;

/// The combined losses, in device memory.
#[derive(Debug)]
pub struct GpuLosses {
    pub(crate) buf: Buffer<AiecLosses>,
    coefs: LossCoefs,
    rows: usize,
    origin: ScalesOrigin,
}

impl GpuLosses {
    /// Downloads the losses (one host synchronisation).
    pub fn read(&self) -> Result<Losses<f32>> {
        let l = self.buf.to_vec()?[0];
        Ok(Losses {
            aux: l.aux,
            gate: l.gate,
            gate_sum_sq: l.sum_sq,
            gate_count: l.count,
            rows: self.rows,
            coefs: self.coefs,
            scales: LossScales::combined(l.aux_scale, l.gate_scale, self.origin.clone()),
        })
    }

    /// The device address of the `AiecLosses` struct.
    pub fn address(&self) -> u64 {
        self.buf.address()
    }

    /// The records these losses were combined from, and their `B`.
    pub fn origin(&self) -> &ScalesOrigin {
        &self.origin
    }

    /// Errors unless `record` was one of the combined records
    /// ([`AiecError::ForeignScales`]): another batch's or layer's losses
    /// would scale its gradients by the wrong factors.
    pub(crate) fn check_record(&self, record: &GpuRecord) -> Result<()> {
        self.origin.check(record.id, record.dims.batch)
    }

    pub(crate) fn check_device(&self, device: &Device) -> Result<()> {
        if self.buf.device() != device {
            return Err(AiecError::DeviceMismatch {
                what: "losses",
                expected: device.label().to_string(),
                got: self.buf.device().label().to_string(),
            });
        }
        Ok(())
    }
}

/// Combines the records of the `L` layers (1 to 32) that share one target
/// vector; see [`crate::cpu::combine`]. One launch, no synchronisation; the
/// result's buffer is allocated (see [`combine_in`]).
pub fn combine(records: &[&GpuRecord], coefs: LossCoefs) -> Result<GpuLosses> {
    let Some(first) = records.first() else { return Err(no_layers()) };
    combine_in(records, coefs, &Workspace::new(first.keep.device()))
}

fn no_layers() -> AiecError {
    AiecError::LayerMismatch { layer: 0, reason: "0 layers given, 1 to 32 are supported".into() }
}

/// [`combine`] with the result's buffer from `ws` (reused at every step once
/// the previous step's losses are dropped). Records of layers that sum their
/// counts over ranks ([`crate::gpu::GpuLayer::set_count_sum`]) are combined
/// with the gate normalised over all ranks ([`crate::gpu::dp::combine_over_ranks`]);
/// the records must then all come from such layers, of one world size.
pub fn combine_in(records: &[&GpuRecord], coefs: LossCoefs, ws: &Workspace) -> Result<GpuLosses> {
    let coefs = LossCoefs::new(coefs.aux_coef, coefs.gate_coef)?;
    let Some(first) = records.first() else { return Err(no_layers()) };
    let device = first.keep.device().clone();
    let batch = first.dims.batch;
    let mut layers = Vec::with_capacity(records.len());
    for (layer, rec) in records.iter().enumerate() {
        let Some(aux) = &rec.aux else {
            return Err(AiecError::LayerMismatch {
                layer,
                reason: "its forward had no targets, so it has no aux loss".into(),
            });
        };
        if rec.dims.batch != batch {
            return Err(AiecError::LayerMismatch {
                layer,
                reason: format!("batch B = {} differs from layer 0's {batch}", rec.dims.batch),
            });
        }
        let world = |r: &GpuRecord| r.ranks.as_ref().map(|s| s.0.world_size());
        if world(rec) != world(first) {
            let says = |w: Option<usize>| match w {
                Some(w) => format!("sums its counts over {w} ranks"),
                None => "counts alone".to_string(),
            };
            return Err(AiecError::LayerMismatch {
                layer,
                reason: format!("its layer {}, layer 0's {}", says(world(rec)), says(world(first))),
            });
        }
        if rec.keep.device() != &device {
            return Err(AiecError::DeviceMismatch {
                what: "layer record",
                expected: device.label().to_string(),
                got: rec.keep.device().label().to_string(),
            });
        }
        layers.push(LayerLoss { ce: aux.ce.view(), stats: aux.stats.view() });
    }
    if ws.device() != &device {
        return Err(AiecError::DeviceMismatch {
            what: "workspace",
            expected: device.label().to_string(),
            got: ws.device().label().to_string(),
        });
    }
    // Written in full by aiec_loss.
    let mut buf: Buffer<AiecLosses> = ws.buffer("losses", 1, Init::Unwritten)?;
    match &first.ranks {
        None => fused::combine(&layers, batch, coefs, &mut buf.view_mut())?,
        Some(ranks) => {
            // Written in full by aiec_loss_count.
            let mut count: Buffer<i32> = ws.buffer("gate count of the ranks", 2, Init::Unwritten)?;
            let sum = ranks.0.as_ref();
            dp::combine_over_ranks(&layers, batch, coefs, sum, &mut count.view_mut(), &mut buf.view_mut())?;
        }
    }
    let origin = ScalesOrigin::new(batch, records.iter().map(|r| r.id).collect());
    Ok(GpuLosses { buf, coefs, rows: records.len() * batch, origin })
}
