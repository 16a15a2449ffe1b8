//! NCCL for data-parallel counting (cargo feature `nccl`): a [`CountSum`]
//! that all-reduces a layer's counts through cudarc's NCCL bindings, on the
//! layer's CUDA stream. NCCL is loaded at run time: without it the crate
//! builds and runs, and asking for it is [`AiecError::NcclUnavailable`].
//!
//! ```no_run
//! # fn main() -> aiec::Result<()> {
//! use std::sync::Arc;
//! use aiec::gpu::{nccl::NcclCountSum, GpuLayer};
//! use aiec::{AiecConfig, Device, Pool};
//!
//! let dev = Device::cuda(0)?;
//! // One rank here; several: NcclCountSum::from_rank(&dev, rank, world, id), with the id
//! // made by NcclCountSum::new_id() on rank 0 and sent to the others.
//! let sum = Arc::new(NcclCountSum::single(&dev)?);
//! let mut layer = GpuLayer::new(&dev, AiecConfig::new(3072, 1000, 0.0, Pool::Token)?, 0)?;
//! layer.set_count_sum(Some(sum));
//! # Ok(()) }
//! ```

use std::sync::Mutex;

use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use crate::device::Device;
use crate::error::{AiecError, Result};
use crate::gpu::dp::CountSum;
use crate::view::SliceMut;

/// The library names cudarc's NCCL loader tries (and so the ones that must be
/// loadable before it is asked to: it panics otherwise).
const CUDARC_NAMES: [&str; 6] =
    ["libnccl.so", "libnccl.so.12", "libnccl.so.11", "libnccl.so.10", "libnccl.so.9", "libnccl.so.1"];

const HINT: &str =
    "install NCCL so that libnccl.so is on the loader path (for PyTorch's nvidia-nccl wheel: a \
                    folder on LD_LIBRARY_PATH with a link libnccl.so -> .../nvidia/nccl/lib/libnccl.so.2)";

/// Whether NCCL can be loaded the way cudarc loads it.
pub fn nccl_present() -> bool {
    CUDARC_NAMES.iter().any(|name| {
        // SAFETY: loading NCCL runs its initialisers, which have no
        // preconditions; the handle is dropped at once (cudarc loads it again).
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

fn unavailable(reason: impl Into<String>) -> AiecError {
    AiecError::NcclUnavailable { reason: reason.into(), hint: HINT }
}

fn nccl_err(call: &'static str) -> impl Fn(cudarc::nccl::result::NcclError) -> AiecError {
    move |e| AiecError::Driver { call, message: format!("{e:?}") }
}

fn probe(device: &Device) -> Result<std::sync::Arc<cudarc::driver::CudaStream>> {
    let stream = device
        .cuda_stream()
        .ok_or_else(|| unavailable(format!("{} is not a CUDA device", device.label())))?
        .clone();
    if !nccl_present() {
        return Err(unavailable(format!("none of {CUDARC_NAMES:?} could be loaded")));
    }
    Ok(stream)
}

/// A [`CountSum`] over an NCCL communicator on a device's stream.
pub struct NcclCountSum {
    // NCCL communicators must not be used by two threads at once.
    comm: Mutex<Comm>,
    stream: usize,
    world: usize,
}

// SAFETY: an NCCL communicator may be used from any thread, one at a time
// (the mutex); the stream it holds is a cudarc stream (Send + Sync).
unsafe impl Send for NcclCountSum {}
unsafe impl Sync for NcclCountSum {}

impl NcclCountSum {
    /// A communicator of one rank on `device` (a job of one process, or the
    /// GPU check).
    pub fn single(device: &Device) -> Result<Self> {
        let stream = probe(device)?;
        let mut comms = Comm::from_devices(vec![stream.clone()]).map_err(nccl_err("ncclCommInitAll"))?;
        let comm = comms.pop().ok_or_else(|| unavailable("ncclCommInitAll returned no communicator"))?;
        Ok(NcclCountSum { comm: Mutex::new(comm), stream: stream.cu_stream() as usize, world: 1 })
    }

    /// A new unique id for a job (made on rank 0, sent to the others).
    pub fn new_id() -> Result<Id> {
        if !nccl_present() {
            return Err(unavailable(format!("none of {CUDARC_NAMES:?} could be loaded")));
        }
        Id::new().map_err(nccl_err("ncclGetUniqueId"))
    }

    /// Rank `rank` of `world` on `device`, joining the job of `id`.
    pub fn from_rank(device: &Device, rank: usize, world: usize, id: Id) -> Result<Self> {
        let stream = probe(device)?;
        let comm = Comm::from_rank(stream.clone(), rank, world, id).map_err(nccl_err("ncclCommInitRank"))?;
        Ok(NcclCountSum { comm: Mutex::new(comm), stream: stream.cu_stream() as usize, world })
    }
}

impl CountSum for NcclCountSum {
    fn sum_in_place(&self, counts: &mut SliceMut<i32>) -> Result<()> {
        let Some(stream) = counts.device().cuda_stream() else {
            return Err(unavailable(format!("{} is not a CUDA device", counts.device().label())));
        };
        if stream.cu_stream() as usize != self.stream {
            return Err(AiecError::DeviceMismatch {
                what: "counts for NCCL",
                expected: "the stream the communicator was made on".into(),
                got: counts.device().label().to_string(),
            });
        }
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `counts` addresses `len` live i32 of this stream's context,
        // borrowed mutably for this call; the temporary slice is leaked (never
        // freed by cudarc): the memory stays the caller's.
        let mut slice = unsafe { stream.upgrade_device_ptr::<i32>(counts.address(), counts.len()) };
        let done = comm.all_reduce_in_place(&mut slice, &ReduceOp::Sum).map(|_| ());
        slice.leak();
        done.map_err(nccl_err("ncclAllReduce"))
    }

    fn world_size(&self) -> usize {
        self.world
    }
}
