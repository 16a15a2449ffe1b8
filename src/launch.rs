//! Launch plans: which kernel, what geometry, which arguments in which order.
//!
//! A plan is a pure function of shapes, types and (already known) device
//! addresses, so it is unit-tested without any device. CUDA and the simulator
//! execute the same plan; only the final call differs (`cuLaunchKernel` or
//! `aiec_sim_launch`, both with the `void**` argument convention).

use crate::dtype::DType;

/// One kernel argument, by value.
#[derive(Debug, Clone, Copy, PartialEq)]
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
}

impl KernelArg {
    /// The argument's bytes as the kernel receives them (little-endian), and
    /// their count.
    pub fn to_bytes(self) -> ([u8; 8], usize) {
        let mut b = [0u8; 8];
        let n = match self {
            KernelArg::Ptr(v) | KernelArg::U64(v) => {
                b.copy_from_slice(&v.to_le_bytes());
                8
            }
            KernelArg::F32(v) => {
                b[..4].copy_from_slice(&v.to_le_bytes());
                4
            }
            KernelArg::U32(v) => {
                b[..4].copy_from_slice(&v.to_le_bytes());
                4
            }
            KernelArg::I32(v) => {
                b[..4].copy_from_slice(&v.to_le_bytes());
                4
            }
        };
        (b, n)
    }
}

/// Everything one launch needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// The kernel file (the module), e.g. `threshold.cu`.
    pub module: &'static str,
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

/// What a plan needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors (the simulator reports a small number).
    pub sm_count: u32,
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
        module: "threshold.cu",
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
        module: "threshold.cu",
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
        module: "convert.cu",
        kernel: format!("{op}_{dtype}"),
        // One element per thread step: size the grid for f32.
        grid: [elementwise_grid(n, DType::F32, limits), 1, 1],
        block: [ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![KernelArg::Ptr(x), KernelArg::Ptr(y), KernelArg::U64(n)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H200: DeviceLimits = DeviceLimits { sm_count: 132 };

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
        assert_eq!(elementwise_grid(u64::MAX, DType::F32, DeviceLimits { sm_count: 0 }), 8);
    }

    #[test]
    fn threshold_plans_name_the_kernel_and_order_the_arguments() {
        let p = threshold_fwd(DType::BF16, 4097, 0x1000, 0x2000, 0.5, H200).unwrap();
        assert_eq!(p.module, "threshold.cu");
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

    #[test]
    fn convert_plans() {
        let p = convert_from_f32(DType::F16, 65536, 8, 16, H200).unwrap();
        assert_eq!((p.module, p.kernel.as_str()), ("convert.cu", "convert_from_f32_f16"));
        assert_eq!(p.args, [KernelArg::Ptr(8), KernelArg::Ptr(16), KernelArg::U64(65536)]);
        assert_eq!(convert_to_f32(DType::BF16, 3, 8, 16, H200).unwrap().kernel, "convert_to_f32_bf16");
    }

    #[test]
    fn arguments_have_their_c_sizes() {
        assert_eq!(KernelArg::F32(1.0).to_bytes(), ([0, 0, 0x80, 0x3f, 0, 0, 0, 0], 4));
        assert_eq!(KernelArg::U64(1 << 40).to_bytes().1, 8);
        assert_eq!(KernelArg::Ptr(0xdead_beef).to_bytes().0[..4], [0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(
            KernelArg::I32(-1).to_bytes(),
            ([0xff; 4].iter().chain(&[0; 4]).copied().collect::<Vec<_>>().try_into().unwrap(), 4)
        );
    }
}
