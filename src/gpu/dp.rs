//! Data-parallel counting on a device: on an update step, a layer's counts of
//! all ranks are summed before its gate reads the counters, so that every rank
//! holds the counters (and builds the masks) one process would with the whole
//! batch.
//!
//! The step then runs as: launches 1 and 2 count into zeroed increments
//! (`act`, `inh`, `total` laid out in one `i64 [2KC + K]` workspace buffer);
//! `aiec_counts_narrow` copies them into an `i32 [2KC + K]` buffer (exact: an
//! increment is at most one count per sample of every rank, and
//! `world * batch <= i32::MAX` is checked before anything runs), which a
//! [`CountSum`] sums over the ranks in place, on the device's stream (NCCL
//! with the `nccl` feature: `gpu::nccl::NcclCountSum`); `aiec_counts_add`
//! adds the sums into the counters; launch 3, the gate, reads the counters.
//! An update step makes 5 launches and one all-reduce of `4 (2KC + K)` bytes;
//! steps that do not update the counters exchange nothing.

use crate::config::{AiecConfig, InputDims};
use crate::device::{Device, Init};
use crate::error::{AiecError, Result};
use crate::gpu::fused::{self, AuxMut, CountersMut, TargetCheck, Update};
use crate::gpu::op::GpuCounters;
use crate::gpu::workspace::Workspace;
use crate::launch::{self, KernelArg, LaunchPlan};
use crate::nvrtc::Module;
use crate::view::{SliceMut, SliceRef, TensorMut, TensorRef};

/// Sums a buffer of counts over every rank of a data-parallel job, in place,
/// ordered on the buffer's device stream (an all-reduce).
pub trait CountSum: Send + Sync {
    /// Sums `counts` over the ranks, in place (every rank calls it with the
    /// same length: the same layer shape).
    fn sum_in_place(&self, counts: &mut SliceMut<i32>) -> Result<()>;
    /// The number of ranks.
    fn world_size(&self) -> usize;
}

fn elementwise_grid(n: u64) -> [u32; 3] {
    [n.div_ceil(launch::ELEMENTWISE_BLOCK as u64).clamp(1, 65_535) as u32, 1, 1]
}

/// `aiec_counts_narrow(inc, out, n)`: `out = inc as i32` (`n = 2KC + K`).
pub fn counts_narrow_plan(classes: usize, channels: usize, inc: u64, out: u64) -> LaunchPlan {
    let n = (2 * classes * channels + classes) as u64;
    LaunchPlan {
        module: Module::all("aiec_counts.cu"),
        kernel: "aiec_counts_narrow".into(),
        grid: elementwise_grid(n),
        block: [launch::ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![KernelArg::Ptr(inc), KernelArg::Ptr(out), KernelArg::U64(n)],
    }
}

/// `aiec_counts_add(act, inh, total, inc, kc, k)`: `counters += inc` (`inc` i32).
pub fn counts_add_plan(
    classes: usize,
    channels: usize,
    act: u64,
    inh: u64,
    total: u64,
    inc: u64,
) -> LaunchPlan {
    let (kc, k) = ((classes * channels) as u64, classes as u64);
    let n = 2 * kc + k;
    LaunchPlan {
        module: Module::all("aiec_counts.cu"),
        kernel: "aiec_counts_add".into(),
        grid: elementwise_grid(n),
        block: [launch::ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(act),
            KernelArg::Ptr(inh),
            KernelArg::Ptr(total),
            KernelArg::Ptr(inc),
            KernelArg::U64(kc),
            KernelArg::U64(k),
        ],
    }
}

/// A training forward on an update step with the counts summed over the
/// ranks (see the module documentation); the other buffers as
/// [`fused::forward_train`] takes them.
#[allow(clippy::too_many_arguments)] // the op's inputs, outputs and state
pub(crate) fn forward_summed(
    cfg: &AiecConfig,
    x: &TensorRef,
    w: &SliceRef<f32>,
    targets: &SliceRef<i64>,
    check: TargetCheck,
    counters: &mut GpuCounters,
    y: &mut TensorMut,
    keep: &mut SliceMut<u32>,
    aux: &mut AuxMut,
    ws: &Workspace,
    sum: &dyn CountSum,
) -> Result<InputDims> {
    let dev: Device = x.device().clone();
    let (k, c) = (cfg.classes(), cfg.channels());
    let kc = k * c;
    let world = sum.world_size();
    let rows = cfg.plan_input(x.shape())?.batch;
    if (world as u128) * (rows as u128) > i32::MAX as u128 {
        return Err(AiecError::Unsupported {
            what: format!(
                "summing counts over {world} ranks of {rows} samples each: the i32 exchange holds at most {} samples",
                i32::MAX
            ),
        });
    }
    let inc = ws.buffer::<i64>("increments", 2 * kc + k, Init::Zero)?;
    let mut narrow = ws.buffer::<i32>("increments (i32)", 2 * kc + k, Init::Zero)?;
    // SAFETY: `inc` is a live buffer of this device, used by nothing else (the
    // workspace hands it out once at a time).
    unsafe { dev.memset(inc.address(), 0, inc.byte_len()) }?;
    let base = inc.address();
    let dims = {
        // SAFETY: three disjoint parts of `inc`, which lives through this block.
        let mut parts = unsafe {
            CountersMut {
                act: SliceMut::from_raw(&dev, base, kc)?,
                inh: SliceMut::from_raw(&dev, base + 8 * kc as u64, kc)?,
                total: SliceMut::from_raw(&dev, base + 16 * kc as u64, k)?,
            }
        };
        fused::forward_count(cfg, x, w, targets, check, &mut parts, Update::Now(true), y, keep, aux)?
    };
    // SAFETY: `inc` (i64) and `narrow` (i32), both [2KC + K], are live,
    // disjoint buffers of this device; the launch follows the counting on the stream.
    unsafe { dev.launch(&counts_narrow_plan(k, c, base, narrow.address())) }?;
    sum.sum_in_place(&mut narrow.view_mut())?;
    let plan = counts_add_plan(
        k,
        c,
        counters.act.address(),
        counters.inh.address(),
        counters.total.address(),
        narrow.address(),
    );
    // SAFETY: the counters ([K, C], [K]) and `narrow` ([2KC + K]) are live
    // buffers of this device, disjoint; the launch runs after the sum on the stream.
    unsafe { dev.launch(&plan) }?;
    let (act, inh) = (counters.act.view(), counters.inh.view());
    let v = aux.v.as_ref();
    fused::forward_gate(
        cfg,
        &dims,
        &v,
        w,
        targets,
        &act,
        &inh,
        &mut aux.mask,
        &mut aux.stats,
        &mut aux.scratch,
    )?;
    Ok(dims)
}
