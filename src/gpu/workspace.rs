//! A workspace: the per-step device buffers of one layer (keep bits, `v`,
//! logits, `g`, mask, gate statistics, scratch, targets, `dv`, losses), each
//! allocated once for its role and size and handed out again at every later
//! step, so that a steady training step allocates nothing.
//!
//! A buffer handed out shares its memory with the workspace; the workspace
//! hands a role's memory out again only when nothing else holds it any more
//! (the record of the previous step was dropped) and it is large enough.
//! Otherwise it allocates a new one for the role, so keeping records alive
//! (e.g. several micro-batches before one backward) stays correct and merely
//! costs memory. All of it is stream-ordered on one device: a buffer is reused
//! only by work queued after the work that last used it.

use std::sync::Mutex;

use bytemuck::Pod;

use crate::buffer::Buffer;
use crate::device::{Device, Init, Storage};
use crate::error::{AiecError, Result};

/// The reusable buffers of one layer (or of one loss) on one device.
pub struct Workspace {
    device: Device,
    slots: Mutex<Vec<(&'static str, Storage)>>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workspace({} bytes on {})", self.bytes(), self.device.label())
    }
}

impl Workspace {
    /// An empty workspace on `device`; buffers are allocated at first use.
    pub fn new(device: &Device) -> Workspace {
        Workspace { device: device.clone(), slots: Mutex::new(Vec::new()) }
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes the workspace holds.
    pub fn bytes(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, s)| s.bytes()).sum()
    }

    /// A buffer of `len` values for `role`: the role's memory when it is free
    /// and large enough, else new memory (starting as `init`) that replaces it.
    /// Memory of a role that starts [`Init::Zero`] must be left zero by whoever
    /// uses it (the kernels' tickets are).
    pub(crate) fn buffer<T: Pod>(&self, role: &'static str, len: usize, init: Init) -> Result<Buffer<T>> {
        let bytes =
            len.checked_mul(std::mem::size_of::<T>()).ok_or(AiecError::ShapeOverflow { dims: vec![len] })?;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = slots.iter().find(|(r, _)| *r == role) {
            if s.is_unique() && s.bytes() >= bytes {
                return Ok(Buffer::over(&self.device, s.clone(), len));
            }
        }
        let s = self.device.alloc(bytes, init)?;
        slots.retain(|(r, _)| *r != role);
        slots.push((role, s.clone()));
        Ok(Buffer::over(&self.device, s, len))
    }
}
