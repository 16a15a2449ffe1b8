//! Loss level on a device: the aux and gate losses of `L` layers and the scales
//! their backward needs, combined by one launch from every layer's statistics,
//! so a multi-layer step never waits for the host. Reading a value is the
//! caller's explicit choice ([`GpuLosses::read`]).

use crate::buffer::Buffer;
use crate::cpu::loss::{LossCoefs, LossScales, Losses};
use crate::device::Device;
use crate::error::{AiecError, Result};
use crate::gpu::op::GpuRecord;
use crate::launch;
use crate::params::{AiecLossParams, AiecLosses, MAX_LAYERS};

/// The combined losses, in device memory.
pub struct GpuLosses {
    buf: Buffer<AiecLosses>,
    coefs: LossCoefs,
    rows: usize,
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
            scales: LossScales { aux_scale: l.aux_scale, gate_scale: l.gate_scale },
        })
    }

    /// The device address of the `AiecLosses` struct.
    pub fn address(&self) -> u64 {
        self.buf.address()
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
/// vector; see [`crate::cpu::combine`]. One launch, no synchronisation.
pub fn combine(records: &[&GpuRecord], coefs: LossCoefs) -> Result<GpuLosses> {
    let coefs = LossCoefs::new(coefs.aux_coef, coefs.gate_coef)?;
    if records.is_empty() || records.len() > MAX_LAYERS {
        return Err(AiecError::LayerMismatch {
            layer: records.len(),
            reason: format!("{} layers given, 1 to {MAX_LAYERS} are supported", records.len()),
        });
    }
    let device = records[0].y.device().clone();
    let batch = records[0].dims.batch;
    let mut p = AiecLossParams {
        ce: [0; MAX_LAYERS],
        stats: [0; MAX_LAYERS],
        out: 0,
        layers: records.len() as u32,
        pad0: 0,
        batch: batch as u64,
        aux_coef: coefs.aux_coef as f32,
        gate_coef: coefs.gate_coef as f32,
    };
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
        if rec.y.device() != &device {
            return Err(AiecError::DeviceMismatch {
                what: "layer record",
                expected: device.label().to_string(),
                got: rec.y.device().label().to_string(),
            });
        }
        p.ce[layer] = aux.ce.address();
        p.stats[layer] = aux.stats.address();
    }
    let buf = Buffer::<AiecLosses>::zeros(&device, 1)?;
    p.out = buf.address();
    // SAFETY: every address is a live buffer of `device` (the records and
    // `buf`), with B floats of CE and one AiecGateStats per layer.
    unsafe { device.launch(&launch::aiec_loss(&p)) }?;
    Ok(GpuLosses { buf, coefs, rows: records.len() * batch })
}
