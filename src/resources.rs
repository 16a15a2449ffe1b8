//! What each kernel costs an SM, without a GPU: registers, spills, stack and
//! static shared memory as ptxas reports them (`--ptxas-options=-v` through
//! NVRTC), and the theoretical occupancy that follows for the block size the
//! launch plans use. Tests hold every kernel to no spills; the bench prints the
//! table.

use crate::error::Result;
use crate::nvrtc::{self, Arch, Module, Target};

/// What ptxas reported for one entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelResources {
    /// The entry point.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of spill stores and of spill loads (local memory traffic).
    pub spill_stores: u32,
    /// See `spill_stores`.
    pub spill_loads: u32,
    /// Bytes of stack frame per thread.
    pub stack_bytes: u32,
    /// Bytes of static shared memory per block.
    pub shared_bytes: u32,
}

/// The per-SM limits occupancy is computed against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmLimits {
    /// Resident threads per SM.
    pub threads: u32,
    /// Resident blocks per SM.
    pub blocks: u32,
    /// 32-bit registers per SM.
    pub registers: u32,
    /// Shared memory per SM available to blocks, in bytes.
    pub shared_bytes: u32,
}

impl SmLimits {
    /// The limits of `arch` (CUDA C Programming Guide, "Compute Capabilities"
    /// table): sm_75 (Turing), sm_80 (A100), sm_90 (H100, H200). None for
    /// other architectures.
    pub fn of(arch: Arch) -> Option<SmLimits> {
        let (threads, blocks, shared_kib) = match (arch.major, arch.minor) {
            (7, 5) => (1024, 16, 64),
            (8, 0) => (2048, 32, 164),
            (9, 0) => (2048, 32, 228),
            _ => return None,
        };
        Some(SmLimits { threads, blocks, registers: 65_536, shared_bytes: shared_kib * 1024 })
    }
}

/// Registers are allocated per warp in units of 256.
const REGISTER_UNIT: u32 = 256;
/// Shared memory the system reserves per resident block (sm_80 and later).
const RESERVED_SHARED: u32 = 1024;

impl KernelResources {
    /// Blocks of `threads` threads that fit on one SM at once, and what limits
    /// them ("threads", "registers" or "shared memory"; "blocks" for the
    /// per-SM block limit).
    pub fn blocks_per_sm(&self, threads: u32, sm: SmLimits) -> (u32, &'static str) {
        let warps = threads.div_ceil(32).max(1);
        let per_warp = (self.registers * 32).div_ceil(REGISTER_UNIT) * REGISTER_UNIT;
        let by_registers = sm.registers.checked_div(per_warp).map_or(u32::MAX, |w| w / warps);
        let by_shared = match self.shared_bytes {
            0 => u32::MAX,
            b => sm.shared_bytes / (b + RESERVED_SHARED),
        };
        [
            (sm.threads / (warps * 32), "threads"),
            (sm.blocks, "blocks"),
            (by_registers, "registers"),
            (by_shared, "shared memory"),
        ]
        .into_iter()
        .min_by_key(|&(n, _)| n)
        .expect("four limits")
    }

    /// Resident warps per SM over the most an SM holds, for blocks of `threads`.
    pub fn occupancy(&self, threads: u32, sm: SmLimits) -> f64 {
        let (blocks, _) = self.blocks_per_sm(threads, sm);
        (blocks * threads.div_ceil(32)) as f64 / (sm.threads / 32) as f64
    }
}

/// Compiles `module` for `arch` with ptxas's verbose report and returns one
/// entry per entry point of the module, in the report's order.
pub fn resources(module: Module, arch: Arch) -> Result<Vec<KernelResources>> {
    let (_, log) = nvrtc::compile_logged(module, Target::Cubin(arch), &["--ptxas-options=-v"])?;
    Ok(parse_ptxas_log(&log))
}

/// The entry points of a ptxas verbose report (`Compiling entry function
/// 'name'`, then its `Function properties` and `Used N registers` lines). The
/// spills of the functions an entry calls, listed after it, count as its own,
/// and its stack is its cumulative stack (its frame and its callees'); what
/// comes before the first entry (helpers such as `__internal_0_$...div_u64`
/// reported first) is not attributed.
pub fn parse_ptxas_log(log: &str) -> Vec<KernelResources> {
    let number_before = |line: &str, unit: &str| -> u32 {
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(unit).and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    };
    let mut out: Vec<KernelResources> = Vec::new();
    for raw in log.lines() {
        // "ptxas info    : <text>" or "ptxas         .     <text>"
        let line = raw.strip_prefix("ptxas").unwrap_or(raw).trim_start();
        let line = line.trim_start_matches("info").trim_start().trim_start_matches([':', '.']).trim();
        if let Some(rest) = line.strip_prefix("Compiling entry function '") {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources {
                kernel: name,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
                stack_bytes: 0,
                shared_bytes: 0,
            });
        } else if line.contains("bytes stack frame") {
            // The entry's own frame, or that of a function it calls (ptxas lists
            // those after the entry): their spills count against the entry.
            if let Some(k) = out.last_mut() {
                k.stack_bytes = k.stack_bytes.max(number_before(line, "bytes stack frame"));
                k.spill_stores += number_before(line, "bytes spill stores");
                k.spill_loads += number_before(line, "bytes spill loads");
            }
        } else if let Some(rest) = line.strip_prefix("Used ") {
            if let Some(k) = out.last_mut() {
                k.registers = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
                k.shared_bytes = number_before(line, "bytes smem");
                k.stack_bytes = k.stack_bytes.max(number_before(line, "bytes cumulative stack size"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // NVRTC 12.9's report for aiec_fwd_logits (entry) with an internal helper.
    const LOG: &str = "ptxas info    : 12 bytes gmem
ptxas info    : Function properties for $__internal_0_$__cuda_sm20_div_u64
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function 'aiec_fwd_logits' for 'sm_90'
ptxas info    : Function properties for aiec_fwd_logits
ptxas         .     16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 108 registers, used 1 barriers, 16896 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'other' for 'sm_90'
ptxas info    : Function properties for other
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 48 bytes cumulative stack size
ptxas info    : Compile time = 153.354 ms
ptxas info    : Function properties for _ZN7aiec_fx7hw_bodyILb0ELb0E9aiec_bf16EEvPKT1_PS2_PjPfRK9AiecShape
ptxas         .     0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads";

    #[test]
    fn the_report_is_parsed_per_entry_point() {
        let r = parse_ptxas_log(LOG);
        assert_eq!(r.len(), 2);
        let want = KernelResources {
            kernel: "aiec_fwd_logits".into(),
            registers: 108,
            spill_stores: 12,
            spill_loads: 20,
            stack_bytes: 16,
            shared_bytes: 16_896,
        };
        assert_eq!(r[0], want);
        // A callee's spills and the cumulative stack are the entry's.
        let other = &r[1];
        assert_eq!((other.kernel.as_str(), other.registers, other.shared_bytes), ("other", 32, 0));
        assert_eq!((other.stack_bytes, other.spill_stores, other.spill_loads), (48, 8, 8));
    }

    #[test]
    fn occupancy_follows_the_calculator() {
        let sm90 = SmLimits::of(Arch { major: 9, minor: 0 }).unwrap();
        let k = |registers, shared_bytes| KernelResources {
            kernel: "k".into(),
            registers,
            spill_stores: 0,
            spill_loads: 0,
            stack_bytes: 0,
            shared_bytes,
        };
        // 108 registers: 3456 per warp, 3584 allocated, 18 warps per SM: one 16-warp block.
        assert_eq!(k(108, 0).blocks_per_sm(512, sm90), (1, "registers"));
        assert_eq!(k(108, 0).occupancy(512, sm90), 0.25);
        // 48 registers: 1536 per warp, 42 warps: 5 blocks of 8 warps.
        assert_eq!(k(48, 8192).blocks_per_sm(256, sm90), (5, "registers"));
        // 32 registers: the thread limit, 8 blocks of 256.
        assert_eq!(k(32, 0).blocks_per_sm(256, sm90), (8, "threads"));
        assert_eq!(k(32, 0).occupancy(256, sm90), 1.0);
        // 40 KiB of shared memory: 228 KiB / 41 KiB = 5 blocks.
        assert_eq!(k(16, 40 * 1024).blocks_per_sm(128, sm90), (5, "shared memory"));
        // Tiny blocks hit the 32-block limit.
        assert_eq!(k(16, 0).blocks_per_sm(32, sm90), (32, "blocks"));
        assert!(SmLimits::of(Arch { major: 8, minor: 6 }).is_none());
    }
}
