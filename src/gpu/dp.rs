//! Data-parallel counting on a device: on an update step, a layer's counts of
//! all ranks are summed before its gate reads the counters, so that every rank
//! holds the counters (and builds the masks) one process would with the whole
//! batch.
//!
//! The step then runs as: launches 1 to 3 count into zeroed increments
//! (`act`, `inh`, `total` laid out in one `i64 [2KC + K]` workspace buffer);
//! `aiec_counts_narrow` copies them into an `i32 [2KC + K]` buffer (exact: an
//! increment is at most one count per sample of every rank, and
//! `world * batch <= i32::MAX` is checked before anything runs), which a
//! [`CountSum`] sums over the ranks in place, on the device's stream (NCCL
//! with the `nccl` feature: `gpu::nccl::NcclCountSum`); `aiec_counts_add`
//! adds the sums into the counters; launch 4, the gate, reads the counters.
//! An update step makes 6 launches and one all-reduce of `4 (2KC + K)` bytes;
//! steps that do not update the counters exchange nothing.
//!
//! The gate loss is normalised by the masked count of every rank: one
//! process with the whole batch takes `gate = S / N` over all its samples, so
//! rank `r` takes `W S_r / N` with `N` summed over the `W` ranks, and the mean
//! of the ranks' gradients (as data-parallel training averages them) is the
//! whole batch's. [`combine_over_ranks`] does this for the views level; the
//! records of a [`crate::gpu::GpuLayer`] with a sum carry it, and
//! [`crate::gpu::combine`] then does it for them: each training step makes one
//! launch and one all-reduce of 8 bytes more (every step, not only update
//! steps), whichever layers share the targets. The aux loss needs nothing: its
//! mean over the local batch already averages to the whole batch's when every
//! rank has the same batch size.

use crate::config::{AiecConfig, InputDims, LossCoefs};
use crate::device::{Device, Init};
use crate::error::{AiecError, Result};
use crate::gpu::counters::GpuCounters;
use crate::gpu::fused::{self, CountersMut, GateIn, GateOut, LayerLoss, TrainIn, TrainOut, Update};
use crate::gpu::workspace::Workspace;
use crate::launch;
use crate::params::AiecLosses;
use crate::view::{check_disjoint, SliceMut};

/// Sums a buffer of counts over every rank of a data-parallel job, in place,
/// ordered on the buffer's device stream (an all-reduce).
pub trait CountSum: Send + Sync {
    /// Sums `counts` over the ranks, in place (every rank calls it with the
    /// same length: the same layer shape).
    fn sum_in_place(&self, counts: &mut SliceMut<i32>) -> Result<()>;
    /// The number of ranks.
    fn world_size(&self) -> usize;
}

/// Re-exported under their old names from [`crate::launch`], which plans
/// every launch.
pub use crate::launch::{aiec_counts_add as counts_add_plan, aiec_counts_narrow as counts_narrow_plan};

/// A training forward on an update step with the counts summed over the
/// ranks (see the module documentation); the inputs and outputs as
/// [`fused::forward_train`] takes them.
pub(crate) fn forward_summed(
    cfg: &AiecConfig,
    inp: TrainIn,
    counters: &mut GpuCounters,
    mut out: TrainOut,
    ws: &Workspace,
    sum: &dyn CountSum,
) -> Result<InputDims> {
    let x = inp.x;
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
        fused::fwd_x_logits(cfg, inp, &mut parts, Update::Now(true), out.reborrow())?
    };
    // SAFETY: `inc` (i64) and `narrow` (i32), both [2KC + K], are live,
    // disjoint buffers of this device; the launch follows the counting on the stream.
    unsafe { dev.launch(&launch::aiec_counts_narrow(k, c, base, narrow.address())) }?;
    sum.sum_in_place(&mut narrow.view_mut())?;
    let plan = launch::aiec_counts_add(
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
    let aux = &mut *out.aux;
    let gate_in = GateIn { v: &aux.v.as_ref(), w: inp.w, targets: inp.targets, act: &act, inh: &inh };
    let gate_out = GateOut { mask: &mut aux.mask, stats: &mut aux.stats, scratch: &mut aux.scratch };
    fused::fwd_gate(cfg, &dims, gate_in, gate_out)?;
    Ok(dims)
}

/// Most ranks [`combine_over_ranks`] sums the masked count over: each rank
/// sends its count `n` as two `i32`, `n >> 20` and `n & 0xFFFFF`, whose sums
/// over fewer than 2048 ranks are exact for any `n < 2^40` (`n` is at most the
/// elements of the layers' `v [B, C]`: 4 TiB of them in f32).
pub const MAX_GATE_RANKS: usize = 2047;

/// [`fused::combine`] in data-parallel training: the gate normalised by the
/// masked count summed over the ranks of `sum` (see the module documentation),
/// so `out` holds this rank's share `gate = W S_r / N`, `gate_scale = 2
/// gate_coef W / N` and `count = N`; `aux` as [`fused::combine`] gives it.
/// `count` is two `i32` of device scratch (any content), in which the count is
/// summed. Two launches and one [`CountSum::sum_in_place`] of `count`; every
/// rank must call it at the same step. Checked before anything runs: as
/// [`fused::combine`], `count`'s length, device and overlaps, and `1 <= W <=`
/// [`MAX_GATE_RANKS`].
///
/// ```
/// # fn main() -> aiec::Result<()> {
/// use aiec::LossCoefs;
/// use aiec::gpu::dp::{combine_over_ranks, CountSum};
/// use aiec::gpu::fused::LayerLoss;
/// use aiec::params::{AiecGateStats, AiecLosses};
/// use aiec::{Device, SliceMut, SliceRef};
///
/// /// Two ranks whose other one saw the same samples (a stand-in for NCCL).
/// struct Twice;
/// impl CountSum for Twice {
///     fn sum_in_place(&self, counts: &mut SliceMut<i32>) -> aiec::Result<()> {
///         counts.device().synchronize()?;
///         // SAFETY: on the simulator a device address is a host address.
///         let s = unsafe { std::slice::from_raw_parts_mut(counts.address() as *mut i32, counts.len()) };
///         s.iter_mut().for_each(|v| *v *= 2);
///         Ok(())
///     }
///     fn world_size(&self) -> usize {
///         2
///     }
/// }
///
/// let dev = Device::sim();
/// // One layer's results of a training forward of B = 2 samples: the rows' CE, S and N.
/// let (ce, stats) = ([0.5f32, 1.5], [AiecGateStats { sum_sq: 6.0, pad0: 0, count: 3 }]);
/// let layers = [LayerLoss { ce: SliceRef::host(&dev, &ce)?, stats: SliceRef::host(&dev, &stats)? }];
/// let (mut count, mut out) = ([0i32; 2], [<AiecLosses as bytemuck::Zeroable>::zeroed()]);
/// let (mut count_view, mut out_view) = (SliceMut::host(&dev, &mut count)?, SliceMut::host(&dev, &mut out)?);
/// combine_over_ranks(&layers, 2, LossCoefs::PAPER, &Twice, &mut count_view, &mut out_view)?;
/// drop((count_view, out_view));
/// // N = 6 over both ranks; this rank's gate is W S / N = 2 * 6 / 6.
/// assert_eq!((out[0].aux, out[0].gate, out[0].count), (1.0, 2.0, 6));
/// # Ok(()) }
/// ```
pub fn combine_over_ranks(
    layers: &[LayerLoss],
    batch: usize,
    coefs: LossCoefs,
    sum: &dyn CountSum,
    count: &mut SliceMut<i32>,
    out: &mut SliceMut<AiecLosses>,
) -> Result<()> {
    let (dev, mut p) = fused::loss_params(layers, batch, coefs, out)?;
    let world = sum.world_size();
    if world == 0 || world > MAX_GATE_RANKS {
        return Err(AiecError::Unsupported {
            what: format!(
                "normalising the gate over {world} ranks: 1 to {MAX_GATE_RANKS} are supported (an exact i32 exchange)"
            ),
        });
    }
    count.expect("gate count of the ranks", &dev, 2)?;
    check_disjoint(&[("losses", out.span()), ("gate count of the ranks", count.span())])?;
    for layer in layers {
        check_disjoint(&[("gate count of the ranks", count.span()), ("layer ce", layer.ce.span())])?;
        check_disjoint(&[
            ("gate count of the ranks", count.span()),
            ("layer gate stats", layer.stats.span()),
        ])?;
    }
    p.count_all = count.address();
    p.world = world as u32;
    // SAFETY: as fused::combine; `count` (2 i32) is a live view of `dev`,
    // disjoint from every other address.
    unsafe { dev.launch(&launch::aiec_loss_count(&p)) }?;
    sum.sum_in_place(count)?;
    // SAFETY: as above; the launch follows the sum on the stream.
    unsafe { dev.launch(&launch::aiec_loss(&p)) }
}
