//! The counters of one layer in device memory: what a layer keeps between
//! steps, written by the forward ([`crate::gpu::op`]) and summed over ranks by
//! [`crate::gpu::dp`].

use crate::buffer::Buffer;
use crate::counters::Counters;
use crate::device::Device;
use crate::error::Result;
use crate::gpu::fused::CountersMut;

/// The counters of one layer in device memory.
#[derive(Debug)]
pub struct GpuCounters {
    classes: usize,
    channels: usize,
    /// `[K, C]`.
    pub act: Buffer<i64>,
    /// `[K, C]`.
    pub inh: Buffer<i64>,
    /// `[K]`.
    pub total: Buffer<i64>,
}

impl GpuCounters {
    /// Fresh counters (`act = inh = 0`, `total = 1`) on `device`.
    pub fn new(device: &Device, classes: usize, channels: usize) -> Result<Self> {
        Self::from_host(device, &Counters::try_new(classes, channels)?)
    }

    /// Uploads host counters.
    pub fn from_host(device: &Device, c: &Counters) -> Result<Self> {
        Ok(GpuCounters {
            classes: c.classes(),
            channels: c.channels(),
            act: Buffer::from_slice(device, &c.act)?,
            inh: Buffer::from_slice(device, &c.inh)?,
            total: Buffer::from_slice(device, &c.total)?,
        })
    }

    /// Downloads the counters (waits for the device).
    pub fn to_host(&self) -> Result<Counters> {
        Counters::from_parts(
            self.classes,
            self.channels,
            self.act.to_vec()?,
            self.inh.to_vec()?,
            self.total.to_vec()?,
        )
    }

    /// Overwrites the counters in place with host values (`K` and `C` must match).
    pub fn copy_from_host(&mut self, c: &Counters) -> Result<()> {
        c.check(self.classes, self.channels)?;
        self.act.copy_from(&c.act)?;
        self.inh.copy_from(&c.inh)?;
        self.total.copy_from(&c.total)
    }

    /// Resets to `act = inh = 0`, `total = 1`, in place.
    pub fn reset(&mut self) -> Result<()> {
        self.copy_from_host(&Counters::try_new(self.classes, self.channels)?)
    }

    /// The counters as writable views.
    pub fn views_mut(&mut self) -> CountersMut<'_> {
        CountersMut { act: self.act.view_mut(), inh: self.inh.view_mut(), total: self.total.view_mut() }
    }

    /// `K`.
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }
}
