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
use crate::layout::ForwardScratch;

/// The reusable buffers of one layer (or of one loss) on one device.
pub struct Workspace {
    device: Device,
    slots: Mutex<Vec<Slot>>,
}

/// A role's memory, and the layout it last held ([`Workspace::scratch`]; `None` for other roles).
struct Slot {
    role: &'static str,
    layout: Option<ForwardScratch>,
    storage: Storage,
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
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|s| s.storage.bytes()).sum()
    }

    /// A buffer of `len` values for `role`: the role's memory when it is free
    /// and large enough, else new memory (starting as `init`) that replaces it.
    /// Memory of a role that starts [`Init::Zero`] must be left zero by whoever
    /// uses it, whatever the length asked for (the forward scratch, which a
    /// launch leaves zero only where its layout keeps tickets, has its own:
    /// [`Workspace::scratch`]).
    pub(crate) fn buffer<T: Pod>(&self, role: &'static str, len: usize, init: Init) -> Result<Buffer<T>> {
        self.slot(role, None, len, init, |_| Ok(()))
    }

    /// The forward scratch of `layout` ([`ForwardScratch`], whose first `logits_slices` bytes must
    /// be zero before a launch: the kernels' tickets), under the role `"scratch"`: new memory
    /// starts zero; memory that last held another layout (a step of another shape, as the
    /// smaller last batch of an epoch) is reused after its first `logits_slices` bytes are set
    /// to zero, stream-ordered, since that layout left its partial sums, row statistics and
    /// split logits where this one keeps its tickets. The same layout reuses it as it is (every
    /// launch leaves the tickets zero).
    pub(crate) fn scratch(&self, layout: &ForwardScratch) -> Result<Buffer<u8>> {
        self.slot("scratch", Some(*layout), layout.bytes, Init::Zero, |s| {
            // SAFETY: `s` is this workspace's memory of at least `layout.bytes` bytes, and unique:
            // nothing else holds it, and stream order puts the memset after its last use.
            unsafe { self.device.memset(s.address(), 0, layout.logits_slices) }
        })
    }

    /// `role`'s memory when it is free and large enough (after `reuse` where it last held another
    /// `layout`), else new memory (starting as `init`) that replaces it.
    fn slot<T: Pod>(
        &self,
        role: &'static str,
        layout: Option<ForwardScratch>,
        len: usize,
        init: Init,
        reuse: impl FnOnce(&Storage) -> Result<()>,
    ) -> Result<Buffer<T>> {
        let bytes =
            len.checked_mul(std::mem::size_of::<T>()).ok_or(AiecError::ShapeOverflow { dims: vec![len] })?;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.iter_mut().find(|s| s.role == role) {
            if slot.storage.is_unique() && slot.storage.bytes() >= bytes {
                if slot.layout != layout {
                    reuse(&slot.storage)?;
                    slot.layout = layout;
                }
                return Ok(Buffer::over(&self.device, slot.storage.clone(), len));
            }
        }
        let storage = self.device.alloc(bytes, init)?;
        slots.retain(|s| s.role != role);
        slots.push(Slot { role, layout, storage: storage.clone() });
        Ok(Buffer::over(&self.device, storage, len))
    }
}
