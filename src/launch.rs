//! Launch plans: which kernel, what geometry, which arguments in which order.
//!
//! A plan is a pure function of shapes, types and (already known) device
//! addresses, so it is unit-tested without any device. CUDA and the simulator
//! execute the same plan; only the final call differs (`cuLaunchKernel` or
//! `aiec_sim_launch`, both with the `void**` argument convention).

use crate::config::Pool;
use crate::dtype::DType;
use crate::nvrtc::{Arch, Module};
use crate::params::{pool_code, AiecLossParams, AiecShape, FLAG_DV_SLICES_SHIFT, FLAG_DW_SLICES_SHIFT};

/// One kernel argument, by value.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelArg {
    /// A device address (`T*`).
    Ptr(u64),
    /// `float`.
    F32(f32),
    /// `unsigned long long` (`aiec::u64`).
    U64(u64),
    /// `unsigned int`.
    U32(u32),
    /// `int`.
    I32(i32),
    /// A `#[repr(C)]` struct passed by value (its bytes; see [`crate::params`]).
    Struct(Vec<u8>),
}

impl KernelArg {
    /// A struct argument from a `Pod` value.
    pub fn structure<T: bytemuck::Pod>(value: &T) -> KernelArg {
        KernelArg::Struct(bytemuck::bytes_of(value).to_vec())
    }

    /// The argument's bytes as the kernel receives them (little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            KernelArg::Ptr(v) | KernelArg::U64(v) => v.to_le_bytes().to_vec(),
            KernelArg::F32(v) => v.to_le_bytes().to_vec(),
            KernelArg::U32(v) => v.to_le_bytes().to_vec(),
            KernelArg::I32(v) => v.to_le_bytes().to_vec(),
            KernelArg::Struct(b) => b.clone(),
        }
    }
}

/// Everything one launch needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// The compiled module that holds the kernel, e.g. `threshold.cu` for bf16.
    pub module: Module,
    /// The entry point, e.g. `threshold_fwd_bf16`.
    pub kernel: String,
    /// Grid dimensions.
    pub grid: [u32; 3],
    /// Block dimensions.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
    /// Arguments in the kernel's parameter order.
    pub args: Vec<KernelArg>,
}

/// Which units compute the decision projection's three products (the logits
/// `v W^T`, `dv = dlogits W` and `dW = dlogits^T v`, in `aiec_fwd_logits` and
/// `aiec_bwd_dv_dw`; `kernels/aiec_gemm.cuh`). All three are deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// f32 FMAs on the SIMT units: every architecture (the only one on sm_75),
    /// and the reference the others are tested against.
    F32 = 0,
    /// The tensor cores in 3xTF32 (sm_80 and later): each operand split into a
    /// TF32 big and small part, three `mma.sync` products, f32 accumulation;
    /// about f32 accuracy (BENCHMARKS.md). The default where available.
    Tf32x3 = 1,
    /// Plain TF32 on the tensor cores (sm_80 and later), opt-in only, like
    /// PyTorch's `torch.backends.cuda.matmul.allow_tf32`: operands rounded to
    /// 10 mantissa bits, about 1e-3 relative error; for speed, never the default.
    Tf32 = 2,
}

impl Projection {
    /// The kernels' entry point suffix (`aiec_fwd_logits{suffix}`).
    pub fn suffix(self) -> &'static str {
        match self {
            Projection::F32 => "",
            Projection::Tf32x3 => "_tf32x3",
            Projection::Tf32 => "_tf32",
        }
    }

    /// Whether this path needs `mma.sync` with TF32 operands (sm_80 and later).
    pub fn needs_tensor_cores(self) -> bool {
        self != Projection::F32
    }

    /// The default for a device of `arch`: 3xTF32 from sm_80 on, else f32.
    pub fn default_for(arch: Arch) -> Projection {
        if tensor_cores(arch) {
            Projection::Tf32x3
        } else {
            Projection::F32
        }
    }
}

/// Whether `arch` has TF32 `mma.sync` (sm_80 and later; `AIEC_MMA_TF32` in the kernels).
pub fn tensor_cores(arch: Arch) -> bool {
    arch >= Arch { major: 8, minor: 0 }
}

/// The rows of the tensor-core projection GEMMs' block tile (`aiec_fwd_logits*`, `aiec_bwd_dv_dw*` on
/// [`Projection::Tf32x3`] and [`Projection::Tf32`]): 64 rows x 64 columns, or 128 rows (the `_m128` entry
/// points; same 128 threads, same arguments) x 64 columns on [`Projection::Tf32x3`] and 128 on
/// [`Projection::Tf32`] ([`gemm_cols`]). The SIMT path ([`Projection::F32`]) always uses 64 rows,
/// whatever is asked. [`gemm_rows`] turns the choice into the rows a plan launches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum GemmTile {
    /// 128 rows where they cost no waves, else 64 ([`gemm_rows`]). The default.
    #[default]
    Auto = 0,
    /// Always 64 rows (`GEMM_TILE x GEMM_TILE`).
    Rows64 = 1,
    /// Always 128 rows on the tensor-core paths (the `_m128` entry points).
    Rows128 = 2,
}

/// Into how many slices `aiec_fwd_logits` splits its sums over `C` ([`logits_split`]), and
/// `aiec_bwd_dv_dw` its sums for `dv` over `K` and for `dW` over `B` ([`bwd_slices`]). `Auto` decides by the SM
/// count, so two devices whose SM counts differ may sum a shape in different orders (different last
/// bits); with `Off` or `On`, and the [`GemmTile`] pinned too, the order no longer depends on the SM
/// count. Either way the logits split only on the tensor-core paths' 64-column tiles and where each
/// slice keeps [`SPLIT_MIN_CHANNELS`] channels (more than two slices only where the forward's
/// scratch has room, [`logits_split_room`]), `dv` and `dW` only where the backward's scratch has room
/// and each slice keeps [`SPLIT_MIN_CLASSES`] classes (resp. [`SPLIT_MIN_SAMPLES`] samples).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SplitK {
    /// Split where the tiles alone would leave SMs idle. The default.
    #[default]
    Auto = 0,
    /// Never split.
    Off = 1,
    /// Split wherever the path and the sums' lengths allow, whatever the SM count.
    On = 2,
}

/// What a plan needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors (the simulator reports a small number).
    pub sm_count: u32,
    /// The compute capability (the simulator reports sm_80: it runs the
    /// tensor-core kernels, `mma.sync` emulated).
    pub arch: Arch,
    /// The projection path the device asks for ([`Projection::default_for`]
    /// its arch, or what `Device::set_projection` chose). Plans use
    /// [`DeviceLimits::projection`], which never hands a tensor-core path to a
    /// device without them.
    pub projection: Projection,
    /// The tensor-core GEMMs' block tile the device asks for ([`GemmTile::Auto`],
    /// or what `Device::set_gemm_tile` chose); plans use [`gemm_rows`].
    pub gemm_tile: GemmTile,
    /// Whether the logits' sums, and `dv`'s, split ([`SplitK::Auto`], or what
    /// `Device::set_split_k` chose); plans use [`logits_split`] and [`bwd_slices`].
    pub split_k: SplitK,
}

impl DeviceLimits {
    /// The limits of a device with `sm_count` SMs of `arch`, with its default
    /// projection, [`GemmTile::Auto`] and [`SplitK::Auto`].
    pub fn new(sm_count: u32, arch: Arch) -> DeviceLimits {
        let projection = Projection::default_for(arch);
        DeviceLimits { sm_count, arch, projection, gemm_tile: GemmTile::Auto, split_k: SplitK::Auto }
    }

    /// The projection path the plans launch: the requested one, or
    /// [`Projection::F32`] where the arch has no TF32 tensor cores (sm_75).
    pub fn projection(&self) -> Projection {
        if tensor_cores(self.arch) {
            self.projection
        } else {
            Projection::F32
        }
    }
}

/// Threads per block of the elementwise kernels.
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Resident blocks per SM the elementwise grid aims for (grid-stride beyond).
pub const BLOCKS_PER_SM: u32 = 8;

/// Grid of a grid-stride elementwise kernel over `n` elements of `dtype`, each
/// thread moving 16 bytes per step: enough blocks to cover `n` once, at most
/// `BLOCKS_PER_SM` per SM, at least 1.
pub fn elementwise_grid(n: u64, dtype: DType, limits: DeviceLimits) -> u32 {
    let per_block = ELEMENTWISE_BLOCK as u64 * (16 / dtype.size() as u64);
    let want = n.div_ceil(per_block).max(1);
    let cap = (limits.sm_count.max(1) as u64) * BLOCKS_PER_SM as u64;
    want.min(cap) as u32
}

/// `threshold_fwd_<dtype>(x, y, tau, n)`; `None` for `n == 0` (nothing to launch).
pub fn threshold_fwd(
    dtype: DType,
    n: u64,
    x: u64,
    y: u64,
    tau: f32,
    limits: DeviceLimits,
) -> Option<LaunchPlan> {
    (n > 0).then(|| LaunchPlan {
        module: Module::only("threshold.cu", dtype),
        kernel: format!("threshold_fwd_{dtype}"),
        grid: [elementwise_grid(n, dtype, limits), 1, 1],
        block: [ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![KernelArg::Ptr(x), KernelArg::Ptr(y), KernelArg::F32(tau), KernelArg::U64(n)],
    })
}

/// `threshold_bwd_<dtype>(x, dy, dx, tau, n)`; `dx` may equal `dy` (in place).
pub fn threshold_bwd(
    dtype: DType,
    n: u64,
    x: u64,
    dy: u64,
    dx: u64,
    tau: f32,
    limits: DeviceLimits,
) -> Option<LaunchPlan> {
    (n > 0).then(|| LaunchPlan {
        module: Module::only("threshold.cu", dtype),
        kernel: format!("threshold_bwd_{dtype}"),
        grid: [elementwise_grid(n, dtype, limits), 1, 1],
        block: [ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(x),
            KernelArg::Ptr(dy),
            KernelArg::Ptr(dx),
            KernelArg::F32(tau),
            KernelArg::U64(n),
        ],
    })
}

/// `convert_to_f32_<dtype>(x, y, n)`: `y` (f32) = `x` widened.
pub fn convert_to_f32(dtype: DType, n: u64, x: u64, y: u64, limits: DeviceLimits) -> Option<LaunchPlan> {
    convert("convert_to_f32", dtype, n, x, y, limits)
}

/// `convert_from_f32_<dtype>(x, y, n)`: `y` = `x` (f32) rounded to nearest even.
pub fn convert_from_f32(dtype: DType, n: u64, x: u64, y: u64, limits: DeviceLimits) -> Option<LaunchPlan> {
    convert("convert_from_f32", dtype, n, x, y, limits)
}

fn convert(op: &str, dtype: DType, n: u64, x: u64, y: u64, limits: DeviceLimits) -> Option<LaunchPlan> {
    (n > 0).then(|| LaunchPlan {
        module: Module::only("convert.cu", dtype),
        kernel: format!("{op}_{dtype}"),
        // One element per thread step: size the grid for f32.
        grid: [elementwise_grid(n, DType::F32, limits), 1, 1],
        block: [ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![KernelArg::Ptr(x), KernelArg::Ptr(y), KernelArg::U64(n)],
    })
}

// ------------------------------------------------------------------ fused AIEC
// Geometries as documented at the top of each kernels/aiec_*.cu file.

/// Threads per block of the fused kernels (the kernels require exactly these).
pub const AIEC_BLOCK: u32 = 256;
/// Threads per block of the projection GEMMs (`aiec_fwd_logits*`, `aiec_bwd_dv_dw*`).
pub const GEMM_BLOCK: u32 = 128;
/// The projection GEMMs' block tile: `GEMM_TILE x GEMM_TILE` outputs (`kernels/aiec_gemm.cuh`); the
/// columns of every tile, and the rows of the 64-row one.
pub const GEMM_TILE: u64 = 64;
/// Rows of the tensor-core GEMMs' tall block tile, the `_m128` entry points ([`GemmTile::Rows128`]):
/// `GEMM_TILE_M128 x` [`gemm_cols`] outputs.
pub const GEMM_TILE_M128: u64 = 128;
/// Columns of [`Projection::Tf32`]'s 128-row block tile (`kernels/aiec_gemm.cuh`, `tc::Geo<2, 2>`: each
/// warp 64 x 64, half the shared-memory traffic per `mma` of a 64 x 32 warp tile, which the 3xTF32 split
/// leaves no registers for).
pub const GEMM_TILE_WIDE: u64 = 128;
/// Resident blocks per SM of the tensor-core projection GEMMs: the wave [`gemm_rows`] counts in.
pub const GEMM_BLOCKS_PER_SM: u64 = 2;
/// Samples per `aiec_fwd_softmax` counting group (the samples one counting item adds up;
/// [`logits_groups`]), whatever tile `aiec_fwd_logits` ran with.
pub const LOGITS_SAMPLES: u64 = GEMM_TILE;
/// Classes per `aiec_fwd_logits` class tile (grid.x), whatever the tile's rows.
pub const LOGITS_CLASSES: u64 = GEMM_TILE;
/// Bytes of one row's softmax statistics over one class tile (`AiecRowPart`).
pub const ROW_PART_BYTES: usize = 16;

/// Counting groups of `aiec_fwd_softmax`, [`LOGITS_SAMPLES`] samples each.
pub fn logits_groups(shape: &AiecShape) -> usize {
    shape.batch.div_ceil(LOGITS_SAMPLES) as usize
}

/// The rows of the projection GEMMs' block tile a plan launches with, given the blocks (tiles of
/// work) the launch would have with the 64 x 64 tile (`tiles64`) and with the 128-row one
/// (`tiles128`, [`gemm_cols`] columns): 64 on [`Projection::F32`] (the SIMT kernels have no 128-row
/// tile), 64 or 128 as [`GemmTile::Rows64`] / [`GemmTile::Rows128`] ask, and for [`GemmTile::Auto`]
/// 128 iff `r * waves(tiles128) <= waves(tiles64)`, with `waves(t) = ceil(t / (GEMM_BLOCKS_PER_SM *
/// sm_count))` (one SM where none is reported) and `r` the 128-row block's work in 64 x 64 blocks' (2,
/// or 4 for [`Projection::Tf32`]'s 128 x 128): its waves last about `r` times as long, so it is
/// taken only where it does not cost waves, as on a large batch; a small grid that fits one wave
/// either way keeps the 64-row tile's parallelism. Ties go to 128 rows, which issue fewer
/// instructions and shared-memory wavefronts per `mma`.
pub fn gemm_rows(limits: &DeviceLimits, tiles64: u64, tiles128: u64) -> u64 {
    if limits.projection() == Projection::F32 {
        return GEMM_TILE;
    }
    match limits.gemm_tile {
        GemmTile::Rows64 => GEMM_TILE,
        GemmTile::Rows128 => GEMM_TILE_M128,
        GemmTile::Auto => {
            let wave = limits.sm_count.max(1) as u64 * GEMM_BLOCKS_PER_SM;
            let waves = |tiles: u64| tiles.div_ceil(wave);
            let work = GEMM_TILE_M128 * gemm_cols(limits, GEMM_TILE_M128) / (GEMM_TILE * GEMM_TILE);
            if work * waves(tiles128) <= waves(tiles64) {
                GEMM_TILE_M128
            } else {
                GEMM_TILE
            }
        }
    }
}

/// The columns of the projection GEMMs' block tile with `rows` rows: [`GEMM_TILE_WIDE`] for
/// [`Projection::Tf32`]'s 128-row tile, else [`GEMM_TILE`].
pub fn gemm_cols(limits: &DeviceLimits, rows: u64) -> u64 {
    if rows == GEMM_TILE_M128 && limits.projection() == Projection::Tf32 {
        GEMM_TILE_WIDE
    } else {
        GEMM_TILE
    }
}

/// A projection GEMM's entry point: `base`, the projection's suffix, and `_m128` for 128 rows.
fn gemm_kernel(base: &str, limits: &DeviceLimits, rows: u64) -> String {
    let tall = if rows == GEMM_TILE_M128 { "_m128" } else { "" };
    format!("{base}{}{tall}", limits.projection().suffix())
}

/// Blocks of `aiec_fwd_logits` (one slice of the sums) with `rows x cols` tiles: class tiles x sample groups.
fn logits_blocks(shape: &AiecShape, rows: u64, cols: u64) -> u64 {
    shape.classes.div_ceil(cols).max(1) * shape.batch.div_ceil(rows)
}

/// The rows `aiec_fwd_logits` runs with ([`gemm_rows`] over its class tiles x sample groups).
pub fn logits_rows(shape: &AiecShape, limits: &DeviceLimits) -> u64 {
    let big = logits_blocks(shape, GEMM_TILE_M128, gemm_cols(limits, GEMM_TILE_M128));
    gemm_rows(limits, logits_blocks(shape, GEMM_TILE, GEMM_TILE), big)
}

/// Blocks of `aiec_bwd_dv_dw` with `rows x cols` tiles: the tiles of `dv [B, C]`, then of `dW [K, C]`.
fn dv_dw_tiles(shape: &AiecShape, rows: u64, cols: u64) -> u64 {
    (shape.batch.div_ceil(rows) + shape.classes.div_ceil(rows)) * shape.channels.div_ceil(cols)
}

/// The rows `aiec_bwd_dv_dw` runs with ([`gemm_rows`] over its tiles of `dv` and `dW`).
pub fn dv_dw_rows(shape: &AiecShape, limits: &DeviceLimits) -> u64 {
    let big = dv_dw_tiles(shape, GEMM_TILE_M128, gemm_cols(limits, GEMM_TILE_M128));
    gemm_rows(limits, dv_dw_tiles(shape, GEMM_TILE, GEMM_TILE), big)
}

/// The most slices [`bwd_slices`] splits either sum into (`AiecShape::flags` has room for 16).
pub const BWD_SLICES_MAX: u64 = 8;
/// The fewest classes a slice of a split `dv` sum keeps ([`bwd_slices`]): 4 stages of 32.
pub const SPLIT_MIN_CLASSES: u64 = 128;
/// The fewest samples a slice of a split `dW` sum keeps ([`bwd_slices`]): 4 stages of 32.
pub const SPLIT_MIN_SAMPLES: u64 = 128;
/// The stages (of 32) a [`SplitK::Auto`] split of `aiec_bwd_dv_dw`'s sums must take off the launch by
/// more than ([`bwd_slices`]): the split costs a launch of its own ([`aiec_bwd_sum_slices`]: about a
/// microsecond between two kernels, assumed, not measured, and its pass over the slices), and 8 stages
/// of a 64-row 3xTF32 tile are about 1.5 µs on an H200 by `examples/bench.rs`'s model (3 µs at 128
/// rows).
pub const SPLIT_MIN_SAVED_STAGES: u64 = 8;

/// The slices of `aiec_bwd_dv_dw`'s two sums: `dv`'s over the `K` classes and `dW`'s over the `B`
/// samples ([`bwd_slices`]; 1: unsplit). They travel in [`AiecShape::flags`] ([`with_bwd_slices`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BwdSlices {
    /// Slices of each `dv` sum over the classes: `dv` is then `[dv, B, C]` in the scratch.
    pub dv: u64,
    /// Slices of each `dW` sum over the samples: the first goes to `dW`, the rest to `[dw - 1, K, C]`
    /// in the scratch after `dv`'s.
    pub dw: u64,
}

impl BwdSlices {
    /// Both sums whole.
    pub const UNSPLIT: BwdSlices = BwdSlices { dv: 1, dw: 1 };

    /// The `f32` values of the backward's scratch these slices fill for `shape`: `B C` per slice of
    /// `dv`, then `K C` per slice of `dW` past the first.
    pub fn scratch_len(&self, shape: &AiecShape) -> u64 {
        let c = shape.channels;
        shape.batch * c * self.dv + shape.classes * c * (self.dw - 1)
    }
}

/// The slices `aiec_bwd_dv_dw` splits its sums into, with a scratch of `scratch` `f32` values (at
/// least `B C`; `u64::MAX`: as many as the rule asks). A `dv` tile sums over `K` and a `dW` tile over
/// `B`; where one of them is long and the tiles are few, those blocks are the launch's tail (resnet_stage:
/// 8 `dv` tiles of 1000 classes beside 64 `dW` tiles of 128 samples; vit_tiny: 12 `dW` tiles of 256
/// samples beside 24 `dv` tiles of 100 classes); slices of them run on SMs that would idle, and
/// [`aiec_bwd_sum_slices`] adds them in a fixed order (deterministic for a given shape, scratch and
/// limits; a split sum differs from an unsplit one in the last bits).
///
/// In stages of 32, with `len_v = ceil(K / 32)`, `len_w = ceil(B / 32)`, the caps `cap_v = K /`
/// [`SPLIT_MIN_CLASSES`] and `cap_w = B / `[`SPLIT_MIN_SAMPLES`] (each from 1 to [`BWD_SLICES_MAX`])
/// and `floor` the longer of the shortest slices the caps allow (`ceil(len_v / cap_v)`,
/// `ceil(len_w / cap_w)`): each sum takes `ceil(len / target)` slices (clamped to its cap), the
/// target being `floor` for [`SplitK::On`] (whatever the SM count) and `max(floor, avg)` for
/// [`SplitK::Auto`], `avg` the launch's work per block slot (`GEMM_BLOCKS_PER_SM` a SM): no slice
/// shorter than the average slot's work, nor than the other sum's shortest; 1 each for
/// [`SplitK::Off`]. `Auto` keeps both sums whole unless the split shortens the launch (its longest
/// tile, or `avg` if longer) by more than [`SPLIT_MIN_SAVED_STAGES`] (vit_tiny's dW: 8 stages to 4;
/// ViT-B's dv: 32 to 24). Then what fits: `dv`'s slices first (`B C` values each), then `dW`'s past
/// the first (`K C` each) in what is left.
///
/// ```
/// use aiec::launch::{bwd_slices, BwdSlices, DeviceLimits, SplitK};
/// use aiec::{InputDims, Pool};
/// let h200 = DeviceLimits::new(132, aiec::nvrtc::Arch { major: 9, minor: 0 });
/// // 1024 samples beside 100 classes: dW's tiles sum over 32 stages of 32 samples, dv's over 4.
/// let dims = InputDims::new(Pool::Token, 768, &[1024, 65, 768])?;
/// let shape = aiec::params::AiecShape::new(&dims, 100, 0.0, false);
/// let want = bwd_slices(&shape, &h200, u64::MAX);
/// assert_eq!(want, BwdSlices { dv: 1, dw: 6 });
/// // The scratch: B C for dv, then K C for each of dW's slices past the first.
/// assert_eq!(want.scratch_len(&shape), 1024 * 768 + 5 * 100 * 768);
/// // A scratch with room for 2 of dW's extra slices splits in 3; Off never splits.
/// assert_eq!(bwd_slices(&shape, &h200, 1024 * 768 + 2 * 100 * 768).dw, 3);
/// let off = DeviceLimits { split_k: SplitK::Off, ..h200 };
/// assert_eq!(bwd_slices(&shape, &off, u64::MAX), BwdSlices::UNSPLIT);
/// # Ok::<(), aiec::AiecError>(())
/// ```
pub fn bwd_slices(shape: &AiecShape, limits: &DeviceLimits, scratch: u64) -> BwdSlices {
    let (b, c, k) = (shape.batch, shape.channels, shape.classes);
    if b == 0 || c == 0 || k == 0 || limits.split_k == SplitK::Off {
        return BwdSlices::UNSPLIT;
    }
    let cap_v = (k / SPLIT_MIN_CLASSES).clamp(1, BWD_SLICES_MAX);
    let cap_w = (b / SPLIT_MIN_SAMPLES).clamp(1, BWD_SLICES_MAX);
    let (len_v, len_w) = (k.div_ceil(32), b.div_ceil(32));
    let floor = len_v.div_ceil(cap_v).max(len_w.div_ceil(cap_w));
    // avg: the launch's work per block slot, in stages (0 for On).
    let avg = match limits.split_k {
        SplitK::Auto => {
            let rows = dv_dw_rows(shape, limits);
            let ct = c.div_ceil(gemm_cols(limits, rows));
            let work = (b.div_ceil(rows) * len_v + k.div_ceil(rows) * len_w) * ct;
            work.div_ceil(limits.sm_count.max(1) as u64 * GEMM_BLOCKS_PER_SM)
        }
        _ => 0,
    };
    let target = floor.max(avg);
    let (want_v, want_w) = (len_v.div_ceil(target).clamp(1, cap_v), len_w.div_ceil(target).clamp(1, cap_w));
    // The stages the split takes off the launch, which lasts at least avg.
    let saved = len_v.max(len_w).max(avg) - len_v.div_ceil(want_v).max(len_w.div_ceil(want_w)).max(avg);
    if limits.split_k == SplitK::Auto && saved <= SPLIT_MIN_SAVED_STAGES {
        return BwdSlices::UNSPLIT;
    }
    let dv = want_v.min((scratch / (b * c)).max(1));
    let rest = scratch.saturating_sub(dv * b * c);
    let dw = want_w.min(1 + rest / (k * c));
    BwdSlices { dv, dw }
}

/// The slices a `shape` carries in its flags ([`FLAG_DV_SLICES_SHIFT`], [`FLAG_DW_SLICES_SHIFT`]): 1 to 16
/// each.
pub fn shape_bwd_slices(shape: &AiecShape) -> BwdSlices {
    let at = |shift: u32| ((shape.flags >> shift) & 15) as u64 + 1;
    BwdSlices { dv: at(FLAG_DV_SLICES_SHIFT), dw: at(FLAG_DW_SLICES_SHIFT) }
}

/// `shape` with `slices` in its flags ([`FLAG_DV_SLICES_SHIFT`], [`FLAG_DW_SLICES_SHIFT`]), each clamped
/// to 1 to 16.
pub fn with_bwd_slices(shape: &AiecShape, slices: BwdSlices) -> AiecShape {
    let field = |n: u64, shift: u32| ((n.clamp(1, 16) - 1) as u32) << shift;
    let mask = !(15 << FLAG_DV_SLICES_SHIFT | 15 << FLAG_DW_SLICES_SHIFT);
    let flags =
        shape.flags & mask | field(slices.dv, FLAG_DV_SLICES_SHIFT) | field(slices.dw, FLAG_DW_SLICES_SHIFT);
    AiecShape { flags, ..*shape }
}

/// Class tiles of `aiec_fwd_logits`: each row has one `AiecRowPart` per tile.
pub fn logits_tiles(shape: &AiecShape) -> usize {
    shape.classes.div_ceil(LOGITS_CLASSES).max(1) as usize
}

fn is_hw(shape: &AiecShape) -> bool {
    shape.pool == pool_code(Pool::AvgHw)
}

fn elems(shape: &AiecShape) -> u64 {
    shape.batch * shape.positions * shape.channels
}

/// Resident blocks per SM of the two activation passes (their
/// `__launch_bounds__(256, 3)`, `AIEC_LB_X`): their grids are one wave of
/// those, and every block streams many row steps (grid-stride), so that the
/// rotating buffer of each warp keeps the next step's rows in flight.
pub const ACTIVATION_BLOCKS_PER_SM: u32 = 3;

/// Grid of the two activation passes (`aiec_fwd_x_*`, `aiec_bwd_x_*`): the
/// kernels' geometry, capped at [`ACTIVATION_BLOCKS_PER_SM`] blocks per SM
/// (at least one block, and one row of channel tiles, whatever the SM count).
fn activation_grid(dtype: DType, shape: &AiecShape, limits: DeviceLimits) -> [u32; 3] {
    let v = 16 / dtype.size() as u64;
    let cap = limits.sm_count.max(1) as u64 * ACTIVATION_BLOCKS_PER_SM as u64;
    if is_hw(shape) {
        // 8 rows (one per warp) per block step.
        [(shape.batch * shape.channels).div_ceil(8).min(cap) as u32, 1, 1]
    } else {
        let tiles = shape.channels.div_ceil(32 * v);
        let steps = if shape.pool == pool_code(Pool::AvgToken) {
            // One sample per block step: the 8 warps' sums are added in the block.
            shape.batch
        } else {
            // token / none: the B*P rows spread over the grid, 32 per block step.
            (shape.batch * shape.positions).div_ceil(32)
        };
        let per_tile = (cap / tiles).max(1);
        [tiles.min((1 << 31) - 1) as u32, steps.min(per_tile).min(65_535) as u32, 1]
    }
}

fn layout_name(shape: &AiecShape) -> &'static str {
    if is_hw(shape) {
        "hw"
    } else {
        "tokens"
    }
}

/// The modules a training step in `dtype` (forward, loss, backward) launches
/// from, for compiling them ahead of the first step.
pub fn training_modules(dtype: DType) -> [Module; 6] {
    [
        Module::only("aiec_fwd_x.cu", dtype),
        Module::all("aiec_fwd_logits.cu"),
        Module::all("aiec_fwd_gate.cu"),
        Module::all("aiec_loss.cu"),
        Module::all("aiec_bwd_dv_dw.cu"),
        Module::only("aiec_bwd_x.cu", dtype),
    ]
}

/// Threads per block the plans launch `kernel` with: [`GEMM_BLOCK`] for the
/// projection GEMMs (`aiec_fwd_logits*`, `aiec_bwd_dv_dw*`), [`SOFTMAX_BLOCK`]
/// for `aiec_fwd_softmax`, [`ELEMENTWISE_BLOCK`] for `threshold_*` and
/// `convert_*`, [`AIEC_BLOCK`] for the other fused kernels.
pub fn block_threads(kernel: &str) -> u32 {
    if kernel.starts_with("aiec_fwd_logits") || kernel.starts_with("aiec_bwd_dv_dw") {
        GEMM_BLOCK
    } else if kernel == "aiec_fwd_softmax" {
        SOFTMAX_BLOCK
    } else if kernel.starts_with("threshold") || kernel.starts_with("convert") {
        ELEMENTWISE_BLOCK
    } else {
        AIEC_BLOCK
    }
}

/// The device addresses of `aiec_fwd_x`'s arguments (0 = null where allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FwdXArgs {
    /// The input, shape of the layout.
    pub x: u64,
    /// The output, shape of `x` (never `x` itself).
    pub y: u64,
    /// [`crate::layout::keep_words`] words.
    pub keep: u64,
    /// `[B, C]` pooled values, or 0 (a forward without targets).
    pub v: u64,
    /// `[B]` targets to check, or 0.
    pub targets: u64,
    /// One `AiecTargetStatus` (with targets).
    pub status: u64,
    /// The device-wide `AiecTargetStatus` record, or 0 (targets checked on the host).
    pub device_error: u64,
}

/// The old name of [`FwdXArgs`].
#[deprecated(note = "renamed FwdXArgs, after the kernel's stem")]
pub type XPassArgs = FwdXArgs;

/// Launch 1 of a forward:
/// `aiec_fwd_x_<layout>_<dtype>(x, y, keep, v, targets, status, device_error, shape)`.
pub fn aiec_fwd_x(dtype: DType, shape: &AiecShape, a: FwdXArgs, limits: DeviceLimits) -> Option<LaunchPlan> {
    (elems(shape) > 0).then(|| LaunchPlan {
        module: Module::only("aiec_fwd_x.cu", dtype),
        kernel: format!("aiec_fwd_x_{}_{dtype}", layout_name(shape)),
        grid: activation_grid(dtype, shape, limits),
        block: [AIEC_BLOCK, 1, 1],
        shared_bytes: 0,
        args: [a.x, a.y, a.keep, a.v, a.targets, a.status, a.device_error]
            .into_iter()
            .map(KernelArg::Ptr)
            .chain([KernelArg::structure(shape)])
            .collect(),
    })
}

/// The device addresses of `aiec_fwd_logits`'s arguments, named so that a swap
/// does not compile silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FwdLogitsArgs {
    /// `f32 [B, C]` pooled values.
    pub v: u64,
    /// `f32 [K, C]`.
    pub w: u64,
    /// `f32 [B, K]`, written.
    pub logits: u64,
    /// `f32 [B, K]`: the softmax gradient `aiec_fwd_softmax` writes next; where the sums are
    /// split ([`logits_split`]) it holds one slice's partial logits until then (any content).
    pub g: u64,
    /// `B * `[`logits_tiles`] `AiecRowPart`s ([`ROW_PART_BYTES`] each, 8-byte aligned), written.
    pub part: u64,
    /// `u32 [`[`logits_groups`]` * `[`logits_tiles`]`]`, zero before the first launch, left zero:
    /// the tickets of the split sums.
    pub tickets: u64,
    /// `f32 [`[`logits_split_room`]`, B, K]`: the partial logits of the slices past the second
    /// where the sums split more than in two ([`logits_split`]; any content, read only then).
    pub slices: u64,
}

/// The slices `aiec_fwd_logits` splits each logit's sum over `C` into (its grid.z), on the
/// tensor-core paths' 64-column tiles: for [`SplitK::Auto`], `ceil(sm_count / blocks)` where the
/// tiles alone are fewer blocks than SMs (ViT-B's 64 on 132: 3; vit_tiny's 8: as many as allowed),
/// else 1; [`SplitK::On`]: as many as allowed, whatever the SM count; [`SplitK::Off`]: 1. Allowed:
/// at most [`LOGITS_SPLIT_MAX`], `C / `[`SPLIT_MIN_CHANNELS`] (each slice keeps 4 stages of 32
/// channels) and `2 + `[`logits_split_room`]. The partial tiles meet through `logits` (slice 0's), `g`
/// (slice 1's) and the forward scratch's `logits_slices` (the others); the block that draws a tile's
/// ticket last adds them in the order 0, 1, ... (the same bits whichever arrives last), so the result
/// is deterministic for a given shape and SM count; a split sum differs from an unsplit one in the
/// last bits. [`Projection::Tf32`]'s 128 x 128 tile never splits (its kernel has no registers to spare
/// for the meeting; `Auto` takes it only on grids of several waves).
pub fn logits_split(shape: &AiecShape, limits: &DeviceLimits) -> u32 {
    let rows = logits_rows(shape, limits);
    let cols = gemm_cols(limits, rows);
    if limits.projection() == Projection::F32 || cols != GEMM_TILE {
        return 1;
    }
    let cap = logits_split_cap(shape).min(2 + logits_split_room(shape));
    let slices = match limits.split_k {
        SplitK::Off => 1,
        SplitK::On => cap,
        SplitK::Auto => {
            let (blocks, sms) = (logits_blocks(shape, rows, cols), limits.sm_count.max(1) as u64);
            if blocks > 0 && blocks < sms {
                sms.div_ceil(blocks)
            } else {
                1
            }
        }
    };
    slices.clamp(1, cap) as u32
}

/// The most slices [`logits_split`] splits the logits' sums into.
pub const LOGITS_SPLIT_MAX: u64 = 8;
/// The SM count the forward scratch's room for split logits is sized for ([`logits_split_room`]);
/// more than any device has today (H100 and H200: 132). A device with more may split less deep.
pub const LOGITS_ROOM_SMS: u64 = 160;

/// The slices the logits' sums of `shape` may split into for their length: [`LOGITS_SPLIT_MAX`]
/// and `C / `[`SPLIT_MIN_CHANNELS`], at least 1.
fn logits_split_cap(shape: &AiecShape) -> u64 {
    LOGITS_SPLIT_MAX.min(shape.channels / SPLIT_MIN_CHANNELS).max(1)
}

/// The slices of split logits beyond `logits` and `g` that the forward scratch of `shape` has room
/// for (`f32 [room, B, K]`, [`crate::layout::ForwardScratch`]`::logits_slices`): what
/// [`logits_split`] would take, less 2, on a device of [`LOGITS_ROOM_SMS`] SMs with the fewest
/// blocks any tile gives (128 x 64), so about `LOGITS_ROOM_SMS * 128 * 64` floats (5 MiB) at most; 0
/// where those blocks would fill the SMs. A function of the shape alone, so that every caller sizes
/// the scratch alike ([`crate::layout::Sizes`]).
///
/// ```
/// use aiec::launch::{logits_split, logits_split_room, DeviceLimits};
/// use aiec::{AiecConfig, InputDims, Pool};
/// // vit_tiny's logits: 256 samples, 768 channels, 100 classes.
/// let dims = InputDims::new(Pool::Token, 768, &[256, 65, 768])?;
/// let shape = aiec::params::AiecShape::new(&dims, 100, 0.0, true);
/// assert_eq!(logits_split_room(&shape), 4); // the scratch holds 4 [B, K] slices beyond logits and g
/// let h200 = DeviceLimits::new(132, aiec::nvrtc::Arch { major: 9, minor: 0 });
/// assert_eq!(logits_split(&shape, &h200), 6); // 6 slices of 128 channels on 132 SMs
/// let cfg = AiecConfig::new(768, 100, 0.0, Pool::Token)?;
/// let sizes = aiec::layout::Sizes::of(&cfg.plan_input(&[256, 65, 768])?, 100);
/// assert_eq!(sizes.scratch_bytes - sizes.scratch_zero_bytes, 4 * 256 * 100 * 4); // need no zeroing
/// # Ok::<(), aiec::AiecError>(())
/// ```
pub fn logits_split_room(shape: &AiecShape) -> u64 {
    let blocks = logits_blocks(shape, GEMM_TILE_M128, GEMM_TILE);
    if blocks == 0 || blocks >= LOGITS_ROOM_SMS {
        return 0;
    }
    LOGITS_ROOM_SMS.div_ceil(blocks).min(logits_split_cap(shape)).saturating_sub(2)
}

/// The fewest channels a slice of a split logits sum keeps ([`logits_split`]): 4 stages of 32.
pub const SPLIT_MIN_CHANNELS: u64 = 128;

/// Launch 2: `aiec_fwd_logits{suffix}[_m128](v, w, logits, g, part, tickets, slices, shape)`, the entry point
/// of the device's [`Projection`] and of the rows [`logits_rows`] chooses: the logits and each class
/// tile's per-row softmax statistics ([`aiec_fwd_softmax`] finishes the rows). Grid: `ceil(K / cols)`
/// block tiles of classes ([`gemm_cols`]: [`logits_tiles`] where they are 64 wide) x `ceil(B / rows)`
/// sample groups (at most 65535; the kernel loops beyond) x the [`logits_split`] slices of the sums,
/// 128 threads.
pub fn aiec_fwd_logits(shape: &AiecShape, a: FwdLogitsArgs, limits: DeviceLimits) -> Option<LaunchPlan> {
    let FwdLogitsArgs { v, w, logits, g, part, tickets, slices } = a;
    let args = [v, w, logits, g, part, tickets, slices]
        .into_iter()
        .map(KernelArg::Ptr)
        .chain([KernelArg::structure(shape)]);
    let rows = logits_rows(shape, &limits);
    let cols = gemm_cols(&limits, rows);
    (shape.batch > 0).then(|| LaunchPlan {
        module: Module::all("aiec_fwd_logits.cu"),
        kernel: gemm_kernel("aiec_fwd_logits", &limits, rows),
        // Class tiles fastest: a sample group's tiles are neighbours in the launch order.
        grid: [
            shape.classes.div_ceil(cols).clamp(1, (1 << 31) - 1) as u32,
            shape.batch.div_ceil(rows).clamp(1, 65_535) as u32,
            logits_split(shape, &limits),
        ],
        block: [GEMM_BLOCK, 1, 1],
        shared_bytes: 0,
        args: args.collect(),
    })
}

/// Threads per block of `aiec_fwd_softmax` (its `__launch_bounds__(128, 8)`).
pub const SOFTMAX_BLOCK: u32 = 128;
/// Rows per `aiec_fwd_softmax` row item (a warp each).
pub const SOFTMAX_ROWS: u64 = 4;
/// Channels per `aiec_fwd_softmax` counting item (a thread each), of one counting group of [`LOGITS_SAMPLES`]
/// samples ([`logits_groups`]).
pub const SOFTMAX_CHANNELS: u64 = 128;
/// Resident blocks per SM `aiec_fwd_softmax`'s launch bounds promise: its grid is at most one wave of those.
pub const SOFTMAX_BLOCKS_PER_SM: u32 = 8;

/// Work items of `aiec_fwd_softmax`: the counting items (counting group x channel chunk, at least one chunk: the
/// first adds the group's `total`), then the row items.
pub fn softmax_items(shape: &AiecShape) -> u64 {
    logits_groups(shape) as u64 * shape.channels.div_ceil(SOFTMAX_CHANNELS).max(1)
        + shape.batch.div_ceil(SOFTMAX_ROWS)
}

/// The device addresses of `aiec_fwd_softmax`'s arguments, named so that a swap
/// does not compile silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FwdSoftmaxArgs {
    /// `f32 [B, C]` pooled values (counted).
    pub v: u64,
    /// `i64 [B]` targets.
    pub targets: u64,
    /// One `AiecTargetStatus` (written by `aiec_fwd_x`), or 0.
    pub status: u64,
    /// `i64 [1]` step counter (the counters update on the device), or 0 (decided on the host).
    pub step: u64,
    /// `f32 [B, K]`, as `aiec_fwd_logits` wrote them.
    pub logits: u64,
    /// `B * `[`logits_tiles`] `AiecRowPart`s, as `aiec_fwd_logits` wrote them.
    pub part: u64,
    /// `f32 [B]` cross-entropy, written.
    pub ce: u64,
    /// `f32 [B, K]` `softmax - onehot`, written.
    pub g: u64,
    /// `i64 [K, C]` counters, updated.
    pub act: u64,
    /// `i64 [K, C]` counters, updated.
    pub inh: u64,
    /// `i64 [K]` counters, updated.
    pub total: u64,
}

/// Launch 3, right after [`aiec_fwd_logits`]: `aiec_fwd_softmax(v, targets, status, step, logits, part, ce, g, act,
/// inh, total, shape)`, the rows' cross-entropy, softmax gradient and argmax, and on an update step the counting:
/// one block per work item ([`softmax_items`]), at most [`SOFTMAX_BLOCKS_PER_SM`] per SM (the blocks loop).
pub fn aiec_fwd_softmax(shape: &AiecShape, a: FwdSoftmaxArgs, limits: DeviceLimits) -> Option<LaunchPlan> {
    let FwdSoftmaxArgs { v, targets, status, step, logits, part, ce, g, act, inh, total } = a;
    let args = [v, targets, status, step, logits, part, ce, g, act, inh, total]
        .into_iter()
        .map(KernelArg::Ptr)
        .chain([KernelArg::structure(shape)]);
    let wave = limits.sm_count.max(1) as u64 * SOFTMAX_BLOCKS_PER_SM as u64;
    (shape.batch > 0).then(|| LaunchPlan {
        module: Module::all("aiec_fwd_logits.cu"),
        kernel: "aiec_fwd_softmax".to_string(),
        grid: [softmax_items(shape).min(wave).clamp(1, (1 << 31) - 1) as u32, 1, 1],
        block: [SOFTMAX_BLOCK, 1, 1],
        shared_bytes: 0,
        args: args.collect(),
    })
}

/// Channels per `aiec_fwd_gate` block (grid.x).
pub const GATE_CHANNELS: u64 = 64;
/// Classes per `aiec_fwd_gate` class group (grid.y).
pub const GATE_CLASSES: u64 = 256;

/// Grid of `aiec_fwd_gate`: channel chunks x class groups.
pub fn gate_grid(shape: &AiecShape) -> [u32; 3] {
    [
        shape.channels.div_ceil(GATE_CHANNELS).clamp(1, (1 << 31) - 1) as u32,
        shape.classes.div_ceil(GATE_CLASSES).clamp(1, 65_535) as u32,
        1,
    ]
}

/// Blocks of `aiec_fwd_gate` (its scratch arrays have one entry per block).
pub fn gate_blocks(shape: &AiecShape) -> usize {
    let [x, y, _] = gate_grid(shape);
    x as usize * y as usize
}

/// The device addresses of `aiec_fwd_gate`'s arguments, named so that a swap
/// does not compile silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FwdGateArgs {
    /// `f32 [B, C]` pooled values.
    pub v: u64,
    /// `f32 [K, C]`.
    pub w: u64,
    /// `i64 [B]` targets.
    pub targets: u64,
    /// `i64 [K, C]`, after this step's update.
    pub act: u64,
    /// `i64 [K, C]`, after this step's update.
    pub inh: u64,
    /// `u8 [B, C]`, written.
    pub mask: u64,
    /// `f32 [`[`gate_blocks`]`]` scratch ([`crate::layout::ForwardScratch`]).
    pub block_sum_sq: u64,
    /// `u64 [`[`gate_blocks`]`]` scratch.
    pub block_count: u64,
    /// One `u32` ticket, zero before the launch (left zero).
    pub done: u64,
    /// One `AiecGateStats`, written.
    pub stats: u64,
}

/// The old name of [`FwdGateArgs`].
#[deprecated(note = "renamed FwdGateArgs, after the kernel's stem")]
pub type GateArgs = FwdGateArgs;

/// Launch 4: `aiec_fwd_gate(v, w, targets, act, inh, mask, block_sum_sq, block_count, done, stats, shape)`.
pub fn aiec_fwd_gate(shape: &AiecShape, a: FwdGateArgs) -> Option<LaunchPlan> {
    let args = [a.v, a.w, a.targets, a.act, a.inh, a.mask, a.block_sum_sq, a.block_count, a.done, a.stats]
        .into_iter()
        .map(KernelArg::Ptr)
        .chain([KernelArg::structure(shape)]);
    (shape.batch * shape.channels > 0).then(|| LaunchPlan {
        module: Module::all("aiec_fwd_gate.cu"),
        kernel: "aiec_fwd_gate".into(),
        grid: gate_grid(shape),
        block: [AIEC_BLOCK, 1, 1],
        shared_bytes: 0,
        args: args.collect(),
    })
}

/// The loss level: `aiec_loss(params)`, one block.
pub fn aiec_loss(params: &AiecLossParams) -> LaunchPlan {
    loss_plan("aiec_loss", params)
}

/// Data-parallel training, before the ranks sum it: `aiec_loss_count(params)`
/// writes this process's masked count into `params.count_all`; one block.
pub fn aiec_loss_count(params: &AiecLossParams) -> LaunchPlan {
    loss_plan("aiec_loss_count", params)
}

fn loss_plan(kernel: &str, params: &AiecLossParams) -> LaunchPlan {
    LaunchPlan {
        module: Module::all("aiec_loss.cu"),
        kernel: kernel.into(),
        grid: [1, 1, 1],
        block: [AIEC_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![KernelArg::structure(params)],
    }
}

/// The device addresses of `aiec_bwd_dv_dw`'s arguments, named so that a swap
/// does not compile silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BwdDvDwArgs {
    /// `f32 [B, C]` saved pooled values.
    pub v: u64,
    /// `f32 [K, C]`.
    pub w: u64,
    /// `f32 [B, K]` saved `softmax - onehot`.
    pub g: u64,
    /// `u8 [B, C]` saved consensus mask.
    pub mask: u64,
    /// One `AiecLosses` (its `aux_scale` and `gate_scale`).
    pub losses: u64,
    /// `f32 [B]` per-row scales of the cross-entropy, or 0 (the uniform `aux_scale`).
    pub row_scale: u64,
    /// `f32 [B, C]`, written.
    pub dv: u64,
    /// `f32 [K, C]`, written (or added to with [`crate::params::FLAG_ACCUMULATE_DW`]).
    pub dw: u64,
}

/// Backward launch 1: `aiec_bwd_dv_dw{suffix}[_m128](v, w, g, mask, losses, row_scale, dv, dw, shape)`,
/// the entry point of the device's [`Projection`] and of the rows [`dv_dw_rows`] chooses; runs for
/// `B = 0` too (it writes, or with [`crate::params::FLAG_ACCUMULATE_DW`] keeps, `dW`). One `rows x cols`
/// tile of `dv` or `dW` per block ([`gemm_cols`]), each once per slice of its sums ([`shape_bwd_slices`]:
/// the scratch `dv` then holds [`BwdSlices::scratch_len`] values, and [`aiec_bwd_sum_slices`] follows):
/// `(slices.dv * ceil(B / rows) + slices.dw * ceil(K / rows)) * ceil(C / cols)` blocks of 128 threads.
pub fn aiec_bwd_dv_dw(shape: &AiecShape, a: BwdDvDwArgs, limits: DeviceLimits) -> Option<LaunchPlan> {
    let BwdDvDwArgs { v, w, g, mask, losses, row_scale, dv, dw } = a;
    let rows = dv_dw_rows(shape, &limits);
    let cols = gemm_cols(&limits, rows);
    let sl = shape_bwd_slices(shape);
    let grid = (sl.dv * shape.batch.div_ceil(rows) + sl.dw * shape.classes.div_ceil(rows))
        * shape.channels.div_ceil(cols);
    let args = [v, w, g, mask, losses, row_scale, dv, dw]
        .into_iter()
        .map(KernelArg::Ptr)
        .chain([KernelArg::structure(shape)]);
    (grid > 0).then(|| LaunchPlan {
        module: Module::all("aiec_bwd_dv_dw.cu"),
        kernel: gemm_kernel("aiec_bwd_dv_dw", &limits, rows),
        grid: [grid.min((1 << 31) - 1) as u32, 1, 1],
        block: [GEMM_BLOCK, 1, 1],
        shared_bytes: 0,
        args: args.collect(),
    })
}

/// Backward launch 1b, after a launch 1 with split sums ([`shape_bwd_slices`] above 1; else `None`):
/// `aiec_bwd_sum_slices(dv, dw, shape)` adds `dv`'s slices in order into the scratch's first `B C`
/// values and `dW`'s (after them in the scratch) in order onto `dw`. An elementwise grid over the longer
/// of the two, 4 values a thread.
pub fn aiec_bwd_sum_slices(shape: &AiecShape, dv: u64, dw: u64, limits: DeviceLimits) -> Option<LaunchPlan> {
    let sl = shape_bwd_slices(shape);
    let c = shape.channels;
    let n = if sl.dv > 1 { shape.batch * c } else { 0 }.max(if sl.dw > 1 { shape.classes * c } else { 0 });
    (n > 0).then(|| LaunchPlan {
        module: Module::all("aiec_bwd_dv_dw.cu"),
        kernel: "aiec_bwd_sum_slices".into(),
        grid: [elementwise_grid(n, DType::F32, limits), 1, 1],
        block: [ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![KernelArg::Ptr(dv), KernelArg::Ptr(dw), KernelArg::structure(shape)],
    })
}

/// The device addresses of `aiec_bwd_x`'s arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BwdXArgs {
    /// The gradient with respect to `y`, shape of the layout.
    pub dy: u64,
    /// [`crate::layout::keep_words`] words.
    pub keep: u64,
    /// `f32 [B, C]`, or 0 (a forward without targets: `dx = keep ? dy : 0`).
    pub dv: u64,
    /// The gradient with respect to `x`: `dy` itself, or disjoint from every input.
    pub dx: u64,
}

/// Backward launch 2: `aiec_bwd_x_<layout>_<dtype>(dy, keep, dv, dx, shape)`.
pub fn aiec_bwd_x(dtype: DType, shape: &AiecShape, a: BwdXArgs, limits: DeviceLimits) -> Option<LaunchPlan> {
    let BwdXArgs { dy, keep, dv, dx } = a;
    (elems(shape) > 0).then(|| LaunchPlan {
        module: Module::only("aiec_bwd_x.cu", dtype),
        kernel: format!("aiec_bwd_x_{}_{dtype}", layout_name(shape)),
        grid: activation_grid(dtype, shape, limits),
        block: [AIEC_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(dy),
            KernelArg::Ptr(keep),
            KernelArg::Ptr(dv),
            KernelArg::Ptr(dx),
            KernelArg::structure(shape),
        ],
    })
}

// ------------------------------------------------------------------ data-parallel counts

/// Grid of the two counts kernels over `n` values: `ceil(n / 256)` blocks of
/// [`ELEMENTWISE_BLOCK`], at most 65535 (grid-stride loops; they run once per
/// update step, so unlike [`elementwise_grid`] they need no device limits).
fn counts_grid(n: u64) -> [u32; 3] {
    [n.div_ceil(ELEMENTWISE_BLOCK as u64).clamp(1, 65_535) as u32, 1, 1]
}

/// Data-parallel training (`crate::gpu::dp`): `aiec_counts_narrow(inc, out, n)`,
/// `out = inc as i32` (`n = 2KC + K`).
pub fn aiec_counts_narrow(classes: usize, channels: usize, inc: u64, out: u64) -> LaunchPlan {
    let n = (2 * classes * channels + classes) as u64;
    LaunchPlan {
        module: Module::all("aiec_counts.cu"),
        kernel: "aiec_counts_narrow".into(),
        grid: counts_grid(n),
        block: [ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![KernelArg::Ptr(inc), KernelArg::Ptr(out), KernelArg::U64(n)],
    }
}

/// Data-parallel training: `aiec_counts_add(act, inh, total, inc, kc, k)`,
/// `counters += inc` (`inc` i32, the ranks' sum).
pub fn aiec_counts_add(
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
        grid: counts_grid(n),
        block: [ELEMENTWISE_BLOCK, 1, 1],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::test_shape as shape;

    const H200: DeviceLimits = DeviceLimits {
        sm_count: 132,
        arch: Arch { major: 9, minor: 0 },
        projection: Projection::Tf32x3,
        gemm_tile: GemmTile::Auto,
        split_k: SplitK::Auto,
    };
    const T4: DeviceLimits = DeviceLimits {
        sm_count: 40,
        arch: Arch { major: 7, minor: 5 },
        projection: Projection::F32,
        gemm_tile: GemmTile::Auto,
        split_k: SplitK::Auto,
    };

    #[test]
    fn elementwise_grid_covers_small_inputs_and_caps_large_ones() {
        // f32: 256 threads x 4 elements per block step.
        assert_eq!(elementwise_grid(1, DType::F32, H200), 1);
        assert_eq!(elementwise_grid(1024, DType::F32, H200), 1);
        assert_eq!(elementwise_grid(1025, DType::F32, H200), 2);
        // bf16 moves 8 elements per thread step.
        assert_eq!(elementwise_grid(2048, DType::BF16, H200), 1);
        assert_eq!(elementwise_grid(2049, DType::F16, H200), 2);
        // ViT-B activation: capped at 8 blocks per SM, grid-stride beyond.
        assert_eq!(elementwise_grid(256 * 197 * 3072, DType::BF16, H200), 132 * 8);
        assert_eq!(elementwise_grid(u64::MAX, DType::F32, DeviceLimits { sm_count: 0, ..H200 }), 8);
    }

    #[test]
    fn threshold_plans_name_the_kernel_and_order_the_arguments() {
        let p = threshold_fwd(DType::BF16, 4097, 0x1000, 0x2000, 0.5, H200).unwrap();
        assert_eq!(p.module, Module::only("threshold.cu", DType::BF16));
        assert_eq!(p.kernel, "threshold_fwd_bf16");
        assert_eq!((p.grid, p.block, p.shared_bytes), ([3, 1, 1], [256, 1, 1], 0));
        assert_eq!(
            p.args,
            [KernelArg::Ptr(0x1000), KernelArg::Ptr(0x2000), KernelArg::F32(0.5), KernelArg::U64(4097)]
        );
        let p = threshold_bwd(DType::F32, 7, 1, 2, 2, 0.0, H200).unwrap();
        assert_eq!(p.kernel, "threshold_bwd_f32");
        assert_eq!(p.args.len(), 5);
        assert_eq!(p.args[2], KernelArg::Ptr(2), "dx after dy");
        assert!(threshold_fwd(DType::F16, 0, 1, 2, 0.0, H200).is_none());
    }

    fn ga() -> FwdGateArgs {
        FwdGateArgs {
            v: 1,
            w: 2,
            targets: 3,
            act: 4,
            inh: 5,
            mask: 6,
            block_sum_sq: 7,
            block_count: 8,
            done: 9,
            stats: 10,
        }
    }

    fn la() -> FwdLogitsArgs {
        FwdLogitsArgs { v: 1, w: 2, logits: 3, g: 4, part: 5, tickets: 6, slices: 7 }
    }

    fn sa() -> FwdSoftmaxArgs {
        FwdSoftmaxArgs {
            v: 1,
            targets: 2,
            status: 3,
            step: 4,
            logits: 5,
            part: 6,
            ce: 7,
            g: 8,
            act: 9,
            inh: 10,
            total: 11,
        }
    }

    fn dva() -> BwdDvDwArgs {
        BwdDvDwArgs { v: 1, w: 2, g: 3, mask: 4, losses: 5, row_scale: 6, dv: 7, dw: 8 }
    }

    fn bxa() -> BwdXArgs {
        BwdXArgs { dy: 1, keep: 2, dv: 3, dx: 4 }
    }

    fn xa() -> FwdXArgs {
        FwdXArgs { x: 1, y: 2, keep: 3, v: 4, targets: 5, status: 6, device_error: 7 }
    }

    #[test]
    fn fused_forward_plans_follow_the_kernel_geometry() {
        // ViT-B in bf16: 12 channel tiles of 256 channels x 256*197 rows, 32 rows per block step;
        // one wave of 3 blocks per SM: 132 * 3 / 12 = 33 block rows, each streaming ~48 steps.
        let s = shape(Pool::Token, 256, 197, 3072, 1000);
        let p = aiec_fwd_x(DType::BF16, &s, xa(), H200).unwrap();
        assert_eq!(
            (p.kernel.as_str(), p.grid, p.block),
            ("aiec_fwd_x_tokens_bf16", [12, 33, 1], [256, 1, 1])
        );
        let ptrs: Vec<KernelArg> = (1..=7).map(KernelArg::Ptr).collect();
        assert_eq!(p.args[..7], ptrs[..], "x, y, keep, v, targets, status, device_error");
        assert_eq!(p.args[7], KernelArg::structure(&s));
        // f32 moves 4 channels per lane: 24 tiles; a device with SMs to spare gets one step per block.
        assert_eq!(aiec_fwd_x(DType::F32, &s, xa(), H200).unwrap().grid, [24, 16, 1]);
        let wide = DeviceLimits { sm_count: 1 << 20, ..H200 };
        assert_eq!(aiec_fwd_x(DType::F32, &s, xa(), wide).unwrap().grid, [24, 1576, 1]);
        // avg_token keeps one sample per block step; none spreads B rows.
        let a = shape(Pool::AvgToken, 256, 197, 3072, 1000);
        assert_eq!(aiec_fwd_x(DType::F32, &a, xa(), H200).unwrap().grid, [24, 16, 1]);
        assert_eq!(aiec_fwd_x(DType::F32, &a, xa(), wide).unwrap().grid, [24, 256, 1]);
        let mlp = shape(Pool::None, 4096, 1, 4096, 1000);
        assert_eq!(aiec_fwd_x(DType::BF16, &mlp, xa(), H200).unwrap().grid, [16, 24, 1]);
        assert_eq!(aiec_fwd_x(DType::BF16, &mlp, xa(), wide).unwrap().grid, [16, 128, 1]);
        // More channel tiles than the wave holds: one block row; no SMs reported: one SM.
        let broad = shape(Pool::Token, 2, 3, 1 << 20, 10);
        assert_eq!(aiec_fwd_x(DType::F32, &broad, xa(), H200).unwrap().grid, [8192, 1, 1]);
        let none = DeviceLimits { sm_count: 0, ..H200 };
        assert_eq!(aiec_fwd_x(DType::F32, &s, xa(), none).unwrap().grid, [24, 1, 1]);
        // avg_hw: one warp per (b, c) row, 8 rows per block step, one wave.
        let h = shape(Pool::AvgHw, 128, 3136, 256, 1000);
        let p = aiec_fwd_x(DType::F16, &h, xa(), H200).unwrap();
        assert_eq!((p.kernel.as_str(), p.grid), ("aiec_fwd_x_hw_f16", [132 * 3, 1, 1]));
        assert_eq!(aiec_fwd_x(DType::F16, &h, xa(), wide).unwrap().grid, [128 * 256 / 8, 1, 1]);
        // 16 class tiles x 4 sample groups of 64 x 3 slices of the sums (64 tiles would leave 68 of the
        // 132 SMs idle: ceil(132 / 64)), 128 threads, the tensor-core path by default.
        let l = aiec_fwd_logits(&s, la(), H200).unwrap();
        assert_eq!((l.grid, l.block, l.args.len()), ([16, 4, 3], [128, 1, 1], 8));
        assert_eq!(l.kernel, "aiec_fwd_logits_tf32x3");
        let ptrs: Vec<KernelArg> = (1..=7).map(KernelArg::Ptr).collect();
        assert_eq!(l.args[..7], ptrs[..], "v, w, logits, g, part, tickets, slices");
        assert_eq!(l.args[7], KernelArg::structure(&s));
        // Not split: on f32, with few channels, or where the tiles fill the SMs.
        let f32 = DeviceLimits { projection: Projection::F32, ..H200 };
        assert_eq!(logits_split(&s, &f32), 1);
        assert_eq!(logits_split(&shape(Pool::None, 256, 1, 255, 1000), &H200), 1);
        assert_eq!(logits_split(&shape(Pool::None, 0, 1, 4096, 10), &H200), 1, "an empty batch");
        assert_eq!(logits_split(&shape(Pool::None, 256, 1, 256, 1000), &H200), 2);
        assert_eq!(logits_split(&shape(Pool::None, 512, 1, 3072, 1000), &H200), 2, "8 x 16 = 128 blocks");
        assert_eq!(logits_split(&shape(Pool::None, 576, 1, 3072, 1000), &H200), 1, "9 x 16 = 144 blocks");
        // vit_tiny (2 x 4 = 8 blocks) splits as deep as its 768 channels allow (6 slices of 128; the
        // scratch has room for 4 beyond logits and g); resnet_stage (16 x 2 = 32) in the 2 its 256 allow.
        let tiny = shape(Pool::Token, 256, 65, 768, 100);
        assert_eq!((logits_split(&tiny, &H200), logits_split_room(&tiny)), (6, 4));
        assert_eq!(logits_split(&shape(Pool::AvgHw, 128, 56 * 56, 256, 1000), &H200), 2);
        // The slices past 2 are capped by the scratch's room: 1 here (384 channels, 3 slices) ...
        let three = shape(Pool::None, 64, 1, 384, 64);
        assert_eq!((logits_split(&three, &H200), logits_split_room(&three)), (3, 1));
        // ... and by LOGITS_SPLIT_MAX (a single block of 64 x 64 over 4096 channels).
        assert_eq!(logits_split(&shape(Pool::None, 64, 1, 4096, 64), &H200), 8);
        assert_eq!(
            logits_split(&shape(Pool::None, 64, 1, 4096, 64), &DeviceLimits { sm_count: 4, ..H200 }),
            4
        );
        // Pinned: Off never splits, On splits whatever the SM count (the channels and the path permitting).
        let (off, on) =
            (DeviceLimits { split_k: SplitK::Off, ..H200 }, DeviceLimits { split_k: SplitK::On, ..H200 });
        assert_eq!(logits_split(&shape(Pool::None, 512, 1, 3072, 1000), &off), 1);
        assert_eq!(logits_split(&shape(Pool::None, 576, 1, 3072, 1000), &on), 2, "144 blocks on 132 SMs");
        assert_eq!(logits_split(&shape(Pool::None, 4096, 1, 4096, 1000), &on), 2, "512 blocks of 128 x 64");
        assert_eq!(logits_split(&s, &on), 5, "as deep as the scratch has room for");
        assert_eq!(logits_split(&tiny, &DeviceLimits { sm_count: 2, ..on }), 6, "whatever the SM count");
        assert_eq!(logits_split(&shape(Pool::None, 576, 1, 255, 1000), &on), 1, "too few channels");
        assert_eq!(logits_split(&s, &DeviceLimits { split_k: SplitK::On, ..f32 }), 1, "the SIMT path");
        let tf32_on = DeviceLimits { projection: Projection::Tf32, gemm_tile: GemmTile::Rows128, ..on };
        assert_eq!(logits_split(&s, &tf32_on), 1, "the 128 x 128 tile");
        let p =
            aiec_fwd_logits(&shape(Pool::None, 576, 1, 3072, 1000), FwdLogitsArgs::default(), on).unwrap();
        assert_eq!(p.grid, [16, 9, 2]);
        assert_eq!(
            (DeviceLimits::new(132, H200.arch).split_k, SplitK::default()),
            (SplitK::Auto, SplitK::Auto)
        );
        assert_eq!((logits_groups(&s), logits_tiles(&s)), (4, 16));
        let few = aiec_fwd_logits(&shape(Pool::None, 9, 1, 8, 10), FwdLogitsArgs::default(), H200).unwrap();
        assert_eq!(few.grid, [1, 1, 1]);
        let tall = shape(Pool::None, 1 << 30, 1, 1, 1);
        let huge = aiec_fwd_logits(&tall, FwdLogitsArgs::default(), H200).unwrap();
        assert_eq!(huge.grid, [1, 65_535, 1], "sample groups beyond the grid limit loop in the kernel");
        // sm_75 is never handed the tensor-core path, whatever is asked for; f32 is there everywhere.
        let t4 = DeviceLimits { projection: Projection::Tf32x3, ..T4 };
        assert_eq!(aiec_fwd_logits(&s, FwdLogitsArgs::default(), t4).unwrap().kernel, "aiec_fwd_logits");
        let f32 = DeviceLimits { projection: Projection::F32, ..H200 };
        assert_eq!(aiec_fwd_logits(&s, FwdLogitsArgs::default(), f32).unwrap().kernel, "aiec_fwd_logits");
        let tf32 = DeviceLimits { projection: Projection::Tf32, ..H200 };
        assert_eq!(
            aiec_fwd_logits(&s, FwdLogitsArgs::default(), tf32).unwrap().kernel,
            "aiec_fwd_logits_tf32"
        );
        // The rows: 4 counting groups x 24 chunks of 128 channels counting, then 64 items of 4 rows; one block each.
        let r = aiec_fwd_softmax(&s, sa(), H200).unwrap();
        assert_eq!(softmax_items(&s), 4 * 24 + 64);
        assert_eq!(
            (r.module, r.kernel.as_str(), r.grid, r.block),
            (Module::all("aiec_fwd_logits.cu"), "aiec_fwd_softmax", [160, 1, 1], [128, 1, 1])
        );
        assert_eq!(r.args[..11], (1..=11).map(KernelArg::Ptr).collect::<Vec<_>>(), "in the kernel's order");
        assert_eq!((r.args.len(), &r.args[11]), (12, &KernelArg::structure(&s)));
        assert_eq!(r.block, [block_threads(&r.kernel), 1, 1]);
        // At most 8 blocks per SM (the blocks loop over the items); one SM when none is reported.
        let mlp = shape(Pool::None, 4096, 1, 4096, 1000);
        assert_eq!(softmax_items(&mlp), 64 * 32 + 1024);
        assert_eq!(aiec_fwd_softmax(&mlp, sa(), H200).unwrap().grid, [132 * 8, 1, 1]);
        assert_eq!(
            aiec_fwd_softmax(&mlp, sa(), DeviceLimits { sm_count: 0, ..H200 }).unwrap().grid,
            [8, 1, 1]
        );
        let few = shape(Pool::None, 9, 1, 8, 10);
        assert_eq!(aiec_fwd_softmax(&few, sa(), H200).unwrap().grid, [1 + 3, 1, 1]);
        // No channels: a group's one counting item adds its total alone.
        assert_eq!(
            aiec_fwd_softmax(&shape(Pool::None, 9, 1, 0, 10), sa(), H200).unwrap().grid,
            [1 + 3, 1, 1]
        );
        assert_eq!(DeviceLimits::new(40, T4.arch).projection, Projection::F32);
        assert_eq!(DeviceLimits::new(132, H200.arch).projection, Projection::Tf32x3);
        let g = aiec_fwd_gate(&s, ga()).unwrap();
        assert_eq!((g.grid, g.args.len()), ([48, 4, 1], 11), "64 channels x 256 classes per block");
        assert_eq!(g.args[..10], (1..=10).map(KernelArg::Ptr).collect::<Vec<_>>(), "in the kernel's order");
        assert_eq!(gate_grid(&shape(Pool::None, 3, 1, 5, 2)), [1, 1, 1]);
        assert_eq!(gate_blocks(&shape(Pool::None, 4096, 1, 4096, 1000)), 64 * 4);
        // Empty batches launch nothing in the forward.
        let e = shape(Pool::Token, 0, 5, 8, 4);
        assert!(aiec_fwd_x(DType::F32, &e, xa(), H200).is_none());
        assert!(aiec_fwd_logits(&e, FwdLogitsArgs::default(), H200).is_none());
        assert!(aiec_fwd_softmax(&e, FwdSoftmaxArgs::default(), H200).is_none());
        assert!(aiec_fwd_gate(&e, FwdGateArgs::default()).is_none());
    }

    #[test]
    fn fused_backward_plans_follow_the_kernel_geometry() {
        let s = shape(Pool::AvgToken, 256, 197, 3072, 1000);
        let rows64 = DeviceLimits { gemm_tile: GemmTile::Rows64, ..H200 };
        let p = aiec_bwd_dv_dw(&s, dva(), rows64).unwrap();
        assert_eq!(p.grid, [(4 + 16) * 48, 1, 1], "64 x 64 tiles of dv [256, 3072] and dW [1000, 3072]");
        assert_eq!((p.kernel.as_str(), p.block), ("aiec_bwd_dv_dw_tf32x3", [128, 1, 1]));
        // Auto: 960 blocks of 64 rows are 4 waves of 264, 480 of 128 rows 2: the 128-row tile costs none.
        let tall = aiec_bwd_dv_dw(&s, dva(), H200).unwrap();
        assert_eq!(tall.grid, [(2 + 8) * 48, 1, 1], "128 x 64 tiles of dv and dW");
        assert_eq!((tall.kernel.as_str(), tall.block), ("aiec_bwd_dv_dw_tf32x3_m128", [128, 1, 1]));
        assert_eq!(tall.args, p.args, "the same arguments");
        assert_eq!(aiec_bwd_dv_dw(&s, BwdDvDwArgs::default(), T4).unwrap().kernel, "aiec_bwd_dv_dw");
        assert_eq!(p.args.len(), 9);
        assert_eq!(p.args[5], KernelArg::Ptr(6), "row_scale after losses");
        let x = aiec_bwd_x(DType::BF16, &s, BwdXArgs { dy: 1, keep: 2, dv: 3, dx: 1 }, H200).unwrap();
        assert_eq!((x.kernel.as_str(), x.grid), ("aiec_bwd_x_tokens_bf16", [12, 33, 1]), "as aiec_fwd_x");
        assert_eq!(x.args[..3], [KernelArg::Ptr(1), KernelArg::Ptr(2), KernelArg::Ptr(3)]);
        assert_eq!(x.args[3], KernelArg::Ptr(1), "dx may be dy");
        // B = 0 still clears dW; the dy pass has nothing to do.
        let e = shape(Pool::None, 0, 1, 8, 4);
        assert_eq!(aiec_bwd_dv_dw(&e, BwdDvDwArgs::default(), H200).unwrap().grid, [1, 1, 1]);
        assert!(aiec_bwd_x(DType::F32, &e, bxa(), H200).is_none());
        assert_eq!(aiec_loss(&bytemuck::Zeroable::zeroed()).grid, [1, 1, 1]);
        let c = aiec_loss_count(&bytemuck::Zeroable::zeroed());
        assert_eq!(
            (c.module, c.kernel.as_str(), c.grid),
            (Module::all("aiec_loss.cu"), "aiec_loss_count", [1, 1, 1])
        );
        assert_eq!(c.block, [block_threads(&c.kernel), 1, 1]);
    }

    #[test]
    fn bwd_slices_split_few_long_tiles() {
        use crate::params::FLAG_ACCUMULATE_DW;
        let all = u64::MAX;
        let sl = |dv, dw| BwdSlices { dv, dw };
        // resnet_stage: 8 dv tiles of 32 stages beside 64 dW tiles of 4 (B = 128: dW cannot split); K = 1000
        // keeps 128 classes in at most 7.
        let r = shape(Pool::AvgHw, 128, 56 * 56, 256, 1000);
        let bc = 128 * 256;
        assert_eq!(dv_dw_rows(&r, &H200), 64);
        assert_eq!(bwd_slices(&r, &H200, all), sl(7, 1));
        assert_eq!(sl(7, 1).scratch_len(&r), 7 * bc);
        assert_eq!(bwd_slices(&r, &H200, 4 * bc + 5), sl(4, 1), "the room in the scratch");
        assert_eq!(bwd_slices(&r, &H200, bc), sl(1, 1));
        assert_eq!(bwd_slices(&r, &DeviceLimits { split_k: SplitK::Off, ..H200 }, all), sl(1, 1));
        // f32 on 40 SMs: the launch's 512 stages over 80 slots are 7 a slot, so 5 slices (of 7 stages) do.
        assert_eq!(bwd_slices(&r, &T4, all), sl(5, 1));
        let sliced = with_bwd_slices(&r, sl(7, 1));
        let p = aiec_bwd_dv_dw(&sliced, dva(), H200).unwrap();
        assert_eq!(p.grid, [7 * 2 * 4 + 16 * 4, 1, 1], "7 slices of 2 x 4 dv tiles, then 16 x 4 dW tiles");
        assert_eq!(p.args[8], KernelArg::structure(&sliced), "the slices travel in the flags");
        let sum = aiec_bwd_sum_slices(&sliced, 7, 8, H200).unwrap();
        assert_eq!(
            (sum.kernel.as_str(), sum.module),
            ("aiec_bwd_sum_slices", Module::all("aiec_bwd_dv_dw.cu"))
        );
        assert_eq!((sum.grid, sum.block), ([32, 1, 1], [256, 1, 1]), "128 x 256 values, 4 a thread");
        assert_eq!(sum.args, [KernelArg::Ptr(7), KernelArg::Ptr(8), KernelArg::structure(&sliced)]);
        assert!(aiec_bwd_sum_slices(&r, 7, 8, H200).is_none(), "unsplit: nothing to add");
        // vit_tiny: 48 dv tiles of 4 stages (100 classes: dv cannot split) beside 24 dW tiles of 8: dW in 2
        // would save 4 stages, less than a launch costs, so Auto keeps them whole; On splits.
        let vt = shape(Pool::Token, 256, 65, 768, 100);
        assert_eq!(dv_dw_rows(&vt, &H200), 64);
        assert_eq!(bwd_slices(&vt, &H200, all), sl(1, 1));
        let on = DeviceLimits { split_k: SplitK::On, ..H200 };
        assert_eq!(bwd_slices(&vt, &on, all), sl(1, 2));
        assert_eq!(sl(1, 2).scratch_len(&vt), 256 * 768 + 100 * 768);
        assert_eq!(bwd_slices(&vt, &on, 256 * 768 + 100 * 768 - 1), sl(1, 1), "no room for dW's slice");
        // The same with B = 1024: 24 dW tiles of 32 stages beside 192 dv tiles of 4, 6 stages a slot: dW
        // in 6 (the longest tile 32 stages to 6).
        let big = shape(Pool::Token, 1024, 65, 768, 100);
        assert_eq!(bwd_slices(&big, &H200, all), sl(1, 6));
        let sliced = with_bwd_slices(&vt, sl(1, 2));
        assert_eq!(aiec_bwd_dv_dw(&sliced, dva(), H200).unwrap().grid, [(4 + 2 * 2) * 12, 1, 1]);
        let sum = aiec_bwd_sum_slices(&sliced, 7, 8, H200).unwrap();
        assert_eq!(sum.grid, [75, 1, 1], "dW's 100 x 768 values, 4 a thread");
        // vit_b (128-row tiles): 96 dv tiles of 32 stages, 384 dW tiles of 8; 24 stages a slot: 2 slices
        // would take the launch from 32 stages to 24, no more than a launch costs: whole.
        let vb = shape(Pool::Token, 256, 197, 3072, 1000);
        assert_eq!(bwd_slices(&vb, &H200, all), sl(1, 1));
        // On: down to the shortest slice either sum allows (dv's 5 stages), whatever the SM count.
        assert_eq!(bwd_slices(&vb, &on, all), sl(7, 2));
        let mlp = shape(Pool::None, 4096, 1, 4096, 1000);
        assert_eq!(bwd_slices(&mlp, &on, all), sl(2, 8), "dW's 128 stages in 8 slices of 16");
        assert_eq!(bwd_slices(&mlp, &H200, all), sl(1, 1), "the tiles fill the SMs many times");
        assert_eq!(bwd_slices(&shape(Pool::None, 0, 1, 8, 1000), &H200, all), sl(1, 1), "B = 0");
        // The flags keep their other bits; the slices are clamped to what they hold.
        let acc = AiecShape { flags: FLAG_ACCUMULATE_DW, ..r };
        let a = with_bwd_slices(&with_bwd_slices(&acc, sl(5, 4)), sl(3, 2));
        assert_eq!((shape_bwd_slices(&a), a.flags & FLAG_ACCUMULATE_DW), (sl(3, 2), FLAG_ACCUMULATE_DW));
        assert_eq!(shape_bwd_slices(&with_bwd_slices(&r, sl(99, 17))), sl(16, 16));
        assert_eq!(shape_bwd_slices(&with_bwd_slices(&r, sl(0, 0))), sl(1, 1));
    }

    #[test]
    fn gemm_rows_take_128_only_where_they_cost_no_waves() {
        let la = FwdLogitsArgs::default;
        let da = BwdDvDwArgs::default;
        // ViT-B logits: 16 class tiles x 4 groups of 64 = 64 blocks, or x 2 of 128 = 32: one wave of
        // 2 x 132 either way, so 128 rows would double the wave's length: 64 rows.
        let vit = shape(Pool::Token, 256, 197, 3072, 1000);
        assert_eq!(gemm_rows(&H200, 64, 32), 64);
        assert_eq!(logits_rows(&vit, &H200), 64);
        let l = aiec_fwd_logits(&vit, la(), H200).unwrap();
        assert_eq!((l.kernel.as_str(), l.grid), ("aiec_fwd_logits_tf32x3", [16, 4, 3]), "and split sums");
        // MLP logits: 16 x 64 = 1024 blocks (4 waves) or 16 x 32 = 512 (2 waves): a tie, 128 rows.
        let mlp = shape(Pool::None, 4096, 1, 4096, 1000);
        assert_eq!(logits_rows(&mlp, &H200), 128);
        let l = aiec_fwd_logits(&mlp, la(), H200).unwrap();
        assert_eq!(
            (l.kernel.as_str(), l.grid, l.block),
            ("aiec_fwd_logits_tf32x3_m128", [16, 32, 1], [128, 1, 1])
        );
        assert_eq!((l.shared_bytes, l.args.len()), (0, 8));
        assert_eq!(logits_groups(&mlp), 64, "the softmax keeps its counting groups of 64");
        // Forced tiles obey, on both tensor-core paths: 128 x 64 on 3xTF32, 128 x 128 on plain TF32
        // (which does not split its sums).
        for (projection, cols, z) in [(Projection::Tf32x3, 64, 5), (Projection::Tf32, 128, 1)] {
            let suffix = projection.suffix();
            let r64 = DeviceLimits { projection, gemm_tile: GemmTile::Rows64, ..H200 };
            let r128 = DeviceLimits { projection, gemm_tile: GemmTile::Rows128, ..H200 };
            assert_eq!((gemm_cols(&r64, 64), gemm_cols(&r128, 128)), (64, cols));
            let l = aiec_fwd_logits(&mlp, la(), r64).unwrap();
            assert_eq!((l.kernel, l.grid), (format!("aiec_fwd_logits{suffix}"), [16, 64, 1]));
            let l = aiec_fwd_logits(&vit, la(), r128).unwrap();
            assert_eq!(
                (l.kernel, l.grid),
                (format!("aiec_fwd_logits{suffix}_m128"), [1000u64.div_ceil(cols) as u32, 2, z]),
                "16 or 32 blocks: split where 64 columns wide"
            );
            let d = aiec_bwd_dv_dw(&mlp, da(), r64).unwrap();
            assert_eq!((d.kernel, d.grid), (format!("aiec_bwd_dv_dw{suffix}"), [(64 + 16) * 64, 1, 1]));
            let d = aiec_bwd_dv_dw(&mlp, da(), r128).unwrap();
            let want = (32 + 8) * 4096u64.div_ceil(cols) as u32;
            assert_eq!((d.kernel, d.grid), (format!("aiec_bwd_dv_dw{suffix}_m128"), [want, 1, 1]));
            // Ragged: B = 9, K = 10, C = 70: one row tile each, two column tiles of 64 (one of 128).
            let few = shape(Pool::None, 9, 1, 70, 10);
            assert_eq!(aiec_fwd_logits(&few, la(), r128).unwrap().grid, [1, 1, 1]);
            assert_eq!(aiec_bwd_dv_dw(&few, da(), r128).unwrap().grid, [(1 + 1) * (128 / cols as u32), 1, 1]);
            // Beyond the grid limit the sample groups loop in the kernel either way.
            let tall = shape(Pool::None, 1 << 30, 1, 1, 1);
            assert_eq!(aiec_fwd_logits(&tall, la(), r128).unwrap().grid, [1, 65_535, 1]);
        }
        // The SIMT path has no 128-row tile, whatever is asked; nor has sm_75.
        for gemm_tile in [GemmTile::Auto, GemmTile::Rows64, GemmTile::Rows128] {
            let f32 = DeviceLimits { projection: Projection::F32, gemm_tile, ..H200 };
            assert_eq!(gemm_rows(&f32, 1 << 20, 1), 64);
            let l = aiec_fwd_logits(&mlp, la(), f32).unwrap();
            assert_eq!((l.kernel.as_str(), l.grid), ("aiec_fwd_logits", [16, 64, 1]));
            let d = aiec_bwd_dv_dw(&mlp, da(), f32).unwrap();
            assert_eq!((d.kernel.as_str(), d.grid), ("aiec_bwd_dv_dw", [(64 + 16) * 64, 1, 1]));
            let t4 = DeviceLimits { projection: Projection::Tf32x3, gemm_tile, ..T4 };
            assert_eq!(aiec_bwd_dv_dw(&mlp, da(), t4).unwrap().kernel, "aiec_bwd_dv_dw");
        }
        // Auto's rule: 128 rows iff twice their waves are at most the 64-row tile's.
        assert_eq!(gemm_rows(&H200, 264, 132), 64, "1 wave vs 1");
        assert_eq!(gemm_rows(&H200, 529, 265), 64, "3 waves vs 2");
        assert_eq!(gemm_rows(&H200, 529, 264), 128, "3 waves vs 1");
        assert_eq!(gemm_rows(&H200, 528, 264), 128, "2 waves vs 1: a tie");
        // Plain TF32's 128 x 128 block does 4 times a 64 x 64 block's work: 4 times its waves at most.
        let tf32 = DeviceLimits { projection: Projection::Tf32, ..H200 };
        assert_eq!(gemm_rows(&tf32, 528, 264), 64, "2 waves vs 1");
        assert_eq!(gemm_rows(&tf32, 1056, 264), 128, "4 waves vs 1: a tie");
        assert_eq!(gemm_rows(&tf32, 1056, 265), 64, "4 waves vs 2");
        // MLP logits: 1024 blocks of 64 x 64 (4 waves), 8 x 32 = 256 of 128 x 128 (1 wave); ViT-B's dv_dw:
        // 960 (4 waves) or (2 + 8) x 24 = 240 (1 wave).
        assert_eq!(aiec_fwd_logits(&mlp, la(), tf32).unwrap().grid, [8, 32, 1]);
        let vd = aiec_bwd_dv_dw(&shape(Pool::AvgToken, 256, 197, 3072, 1000), da(), tf32).unwrap();
        assert_eq!((vd.kernel.as_str(), vd.grid), ("aiec_bwd_dv_dw_tf32_m128", [240, 1, 1]));
        // No SMs reported: a wave of 2 blocks, no division by zero.
        let none = DeviceLimits { sm_count: 0, ..H200 };
        assert_eq!((gemm_rows(&none, 4, 2), gemm_rows(&none, 2, 2)), (128, 64));
        assert_eq!(DeviceLimits::new(132, H200.arch).gemm_tile, GemmTile::Auto);
        assert_eq!(GemmTile::default(), GemmTile::Auto);
    }

    #[test]
    fn counts_plans_cover_their_values() {
        // K = 3, C = 100: n = 2 * 300 + 3 = 603 values, 3 blocks of 256.
        let n = aiec_counts_narrow(3, 100, 1, 2);
        assert_eq!((n.kernel.as_str(), n.grid, n.block), ("aiec_counts_narrow", [3, 1, 1], [256, 1, 1]));
        assert_eq!(n.args, [KernelArg::Ptr(1), KernelArg::Ptr(2), KernelArg::U64(603)]);
        let a = aiec_counts_add(3, 100, 1, 2, 3, 4);
        assert_eq!((a.kernel.as_str(), a.grid), ("aiec_counts_add", [3, 1, 1]));
        assert_eq!(a.args[4..], [KernelArg::U64(300), KernelArg::U64(3)]);
        assert_eq!(aiec_counts_add(100_000, 1000, 0, 0, 0, 0).grid, [65_535, 1, 1], "capped");
    }

    #[test]
    fn training_modules_are_the_modules_of_a_steps_plans() {
        for dtype in DType::ALL {
            for pool in [Pool::Token, Pool::AvgHw] {
                let s = shape(pool, 4, 9, 64, 10);
                let plans = [
                    aiec_fwd_x(dtype, &s, xa(), H200).unwrap(),
                    aiec_fwd_logits(&s, FwdLogitsArgs::default(), H200).unwrap(),
                    aiec_fwd_softmax(&s, FwdSoftmaxArgs::default(), H200).unwrap(),
                    aiec_fwd_gate(&s, ga()).unwrap(),
                    aiec_loss(&bytemuck::Zeroable::zeroed()),
                    aiec_bwd_dv_dw(&s, BwdDvDwArgs::default(), H200).unwrap(),
                    aiec_bwd_x(dtype, &s, bxa(), H200).unwrap(),
                ];
                let mut used: Vec<Module> = plans.iter().map(|p| p.module).collect();
                used.dedup(); // aiec_fwd_logits and aiec_fwd_softmax: one module
                assert_eq!(used, training_modules(dtype), "{dtype} {pool:?}");
                for p in &plans {
                    assert_eq!(p.block, [block_threads(&p.kernel), 1, 1], "{}", p.kernel);
                }
            }
        }
    }

    #[test]
    fn convert_plans() {
        let p = convert_from_f32(DType::F16, 65536, 8, 16, H200).unwrap();
        assert_eq!(
            (p.module, p.kernel.as_str()),
            (Module::only("convert.cu", DType::F16), "convert_from_f32_f16")
        );
        assert_eq!(p.args, [KernelArg::Ptr(8), KernelArg::Ptr(16), KernelArg::U64(65536)]);
        assert_eq!(convert_to_f32(DType::BF16, 3, 8, 16, H200).unwrap().kernel, "convert_to_f32_bf16");
        let t = threshold_bwd(DType::F16, 7, 1, 2, 2, 0.0, H200).unwrap();
        for p in [p, t] {
            assert_eq!(p.block, [block_threads(&p.kernel), 1, 1], "{}", p.kernel);
        }
    }

    #[test]
    fn arguments_have_their_c_sizes() {
        assert_eq!(KernelArg::F32(1.0).to_bytes(), [0, 0, 0x80, 0x3f]);
        assert_eq!(KernelArg::U64(1 << 40).to_bytes().len(), 8);
        assert_eq!(KernelArg::Ptr(0xdead_beef).to_bytes()[..4], [0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(KernelArg::structure(&[1u32, 2u32]).to_bytes(), [1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(KernelArg::I32(-1).to_bytes(), [0xff; 4]);
        assert_eq!(KernelArg::U32(7).to_bytes(), [7, 0, 0, 0]);
    }
}
