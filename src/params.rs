//! Parameter and result structs shared with the kernels, mirrored field for
//! field from `kernels/aiec_params.cuh` (`#[repr(C)]`; sizes and offsets are
//! pinned by tests on both sides).

use bytemuck::{Pod, Zeroable};

use crate::config::{InputDims, Pool};

/// Shape and scalar parameters of one fused AIEC launch (`AiecShape`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct AiecShape {
    /// `B`.
    pub batch: u64,
    /// `P`: `T`, `H*W`, or 1.
    pub positions: u64,
    /// `C`.
    pub channels: u64,
    /// `K`.
    pub classes: u64,
    /// 0 token, 1 avg_token, 2 avg_hw, 3 none.
    pub pool: u32,
    /// 1 when this forward updates the counters.
    pub update: u32,
    /// The threshold, compared in `f32`.
    pub tau: f32,
    /// `FLAG_*` bits.
    pub flags: u32,
}

/// [`AiecShape::flags`]: `aiec_bwd_dv_dw` adds `dW` to the buffer (`+=`) instead of writing it.
pub const FLAG_ACCUMULATE_DW: u32 = 1;
/// [`AiecShape::flags`] bits 8 to 11: the slices of `aiec_bwd_dv_dw`'s sums for `dv`, minus 1
/// ([`crate::launch::bwd_slices`]; 0: unsplit).
pub const FLAG_DV_SLICES_SHIFT: u32 = 8;
/// [`AiecShape::flags`] bits 12 to 15: the slices of `aiec_bwd_dv_dw`'s sums for `dW`, minus 1
/// ([`crate::launch::bwd_slices`]; 0: unsplit).
pub const FLAG_DW_SLICES_SHIFT: u32 = 12;

/// The targets check of a training forward (`AiecTargetStatus`): written by
/// `aiec_fwd_x`, read by `aiec_fwd_softmax` (a bad batch counts nothing) and,
/// for device-side targets, copied into a device-wide record the host reads at
/// its next synchronisation.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct AiecTargetStatus {
    /// The first `b` with a target outside `0..K`, or -1.
    pub index: i64,
    /// `targets[index]` (0 when `index == -1`).
    pub value: i64,
    /// `K`.
    pub classes: u64,
    /// Padding.
    pub pad0: u64,
}

impl AiecTargetStatus {
    /// No error (`index = -1`).
    pub fn zeroed_none() -> Self {
        AiecTargetStatus { index: -1, value: 0, classes: 0, pad0: 0 }
    }
}

impl AiecShape {
    /// The parameters of a planned input.
    pub fn new(dims: &InputDims, classes: usize, tau: f32, update: bool) -> Self {
        AiecShape {
            batch: dims.batch as u64,
            positions: dims.positions as u64,
            channels: dims.channels as u64,
            classes: classes as u64,
            pool: pool_code(dims.pool),
            update: update as u32,
            tau,
            flags: 0,
        }
    }
}

/// The kernels' code for a pooling mode.
pub fn pool_code(pool: Pool) -> u32 {
    match pool {
        Pool::Token => 0,
        Pool::AvgToken => 1,
        Pool::AvgHw => 2,
        Pool::None => 3,
    }
}

/// One layer's gate statistics (`AiecGateStats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct AiecGateStats {
    /// `S = sum mask * v^2`.
    pub sum_sq: f32,
    /// Padding.
    pub pad0: u32,
    /// `N = sum mask`.
    pub count: u64,
}

/// The combined losses of `L` layers (`AiecLosses`), written on the device by
/// `aiec_loss` (`kernels/aiec_loss.cu`). `S = sum_l S_l` is this process's;
/// `N` is the masked count the gate is normalised by: this process's
/// `sum_l N_l`, or in data-parallel training ([`AiecLossParams::count_all`])
/// the sum over the `W` ranks of theirs; `W` is the world size then, else 1.
/// So `gate = W S / N`: the ranks' gradients, which data parallelism
/// averages, are those of the whole batch's gate `sum_ranks S / N`
/// (docs/SPEC.md, "Losses").
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct AiecLosses {
    /// Mean cross-entropy over the `L * B` rows (0 when `L * B == 0`).
    pub aux: f32,
    /// `W S / N`, 0 when `N == 0` (`S / sum_l N_l` on one process).
    pub gate: f32,
    /// `S = sum_l S_l`, this process's.
    pub sum_sq: f32,
    /// `aux_coef / (L * B)`, 0 when `L * B == 0`.
    pub aux_scale: f32,
    /// `2 * gate_coef * W / N`, 0 when `N == 0`.
    pub gate_scale: f32,
    /// Padding.
    pub pad0: u32,
    /// `N`.
    pub count: u64,
}

/// Most layers one `aiec_loss` launch combines (`AIEC_MAX_LAYERS`).
pub const MAX_LAYERS: usize = 32;

/// Arguments of `aiec_loss` (`AiecLossParams`), passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct AiecLossParams {
    /// Device addresses of each layer's `float ce[B]`.
    pub ce: [u64; MAX_LAYERS],
    /// Device addresses of each layer's `AiecGateStats`.
    pub stats: [u64; MAX_LAYERS],
    /// Device address of the `AiecLosses` to write.
    pub out: u64,
    /// `L`.
    pub layers: u32,
    /// `W`, the ranks `count_all` sums over (read only with `count_all`).
    pub world: u32,
    /// `B`.
    pub batch: u64,
    /// Coefficient of the aux loss.
    pub aux_coef: f32,
    /// Coefficient of the gate loss.
    pub gate_coef: f32,
    /// Device address of the ranks' summed masked count as two `i32`
    /// (`n >> 20`, `n & 0xFFFFF` of each rank's `n`, summed), or 0 for this
    /// process's count alone (`kernels/aiec_params.cuh`).
    pub count_all: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_match_aiec_params_cuh() {
        assert_eq!((size_of::<AiecShape>(), align_of::<AiecShape>()), (48, 8));
        assert_eq!(offset_of!(AiecShape, classes), 24);
        assert_eq!(offset_of!(AiecShape, pool), 32);
        assert_eq!(offset_of!(AiecShape, update), 36);
        assert_eq!(offset_of!(AiecShape, tau), 40);
        assert_eq!(offset_of!(AiecShape, flags), 44);
        assert_eq!(size_of::<AiecTargetStatus>(), 32);
        assert_eq!(offset_of!(AiecTargetStatus, value), 8);
        assert_eq!(offset_of!(AiecTargetStatus, classes), 16);
        assert_eq!(size_of::<AiecGateStats>(), 16);
        assert_eq!(offset_of!(AiecGateStats, count), 8);
        assert_eq!(size_of::<AiecLosses>(), 32);
        assert_eq!(offset_of!(AiecLosses, aux_scale), 12);
        assert_eq!(offset_of!(AiecLosses, gate_scale), 16);
        assert_eq!(offset_of!(AiecLosses, count), 24);
        assert_eq!(offset_of!(AiecLossParams, stats), 8 * MAX_LAYERS);
        assert_eq!(offset_of!(AiecLossParams, out), 16 * MAX_LAYERS);
        assert_eq!(offset_of!(AiecLossParams, layers), 16 * MAX_LAYERS + 8);
        assert_eq!(offset_of!(AiecLossParams, batch), 16 * MAX_LAYERS + 16);
        assert_eq!(offset_of!(AiecLossParams, aux_coef), 16 * MAX_LAYERS + 24);
        assert_eq!(offset_of!(AiecLossParams, world), 16 * MAX_LAYERS + 12);
        assert_eq!(offset_of!(AiecLossParams, count_all), 16 * MAX_LAYERS + 32);
        assert_eq!(size_of::<AiecLossParams>(), 16 * MAX_LAYERS + 40);
    }

    #[test]
    fn pool_codes() {
        let codes: Vec<u32> = Pool::ALL.iter().map(|&p| pool_code(p)).collect();
        assert_eq!(codes, [0, 1, 2, 3]);
    }
}
