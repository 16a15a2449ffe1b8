// kernels/aiec_gemm.cuh - the GEMM core of the decision projection (aiec_fwd_logits.cu, the logits v W^T;
// aiec_bwd_dv_dw.cu, dv = dlogits W and dW = dlogits^T v), on the tensor cores (3xTF32, or plain TF32 when asked
// for; namespace aiec_gemm::tc) or on the f32 SIMT units (tile_simt). Include it after common.cuh and
// aiec_params.cuh; NVRTC gets it in memory by this name, like every kernels/*.cuh.
//
// One block of 128 threads (4 warps) computes one 64 x 64 tile of C = A B (C[m][n] = sum over k of A[m][k] B[k][n]),
// or 128 x 64 (the tensor-core paths' WM = 2, tc::Geo), or 128 x 128 (plain TF32's WM = 2: WN = 2, wn_of), with the
// whole reduction over the k it is given. Nothing is atomic: every output element is a sum in a fixed order,
// whatever the grid (deterministic); the tiles sum in different orders (different last bits).
//
// Operands in global memory (Operand): element (i, k) of a matrix with `extent` rows i (m for A, n for B) and kdim
// columns k, either "MK" (k contiguous: p[i * ld + k]) or "KM" (i contiguous: p[k * ld + i]); elements past either
// bound read as 0. Operand::vec: p 16-byte aligned, ld and the contiguous extent multiples of 4 (16-byte copies).
//
// ---- The tensor-core paths (sm_80+, AIEC_MMA_TF32; tc::tile)
// Stages (tc::Geo): KT = 32 k per stage and two stages in shared memory (WM = 1: 36 KiB), or KT = 16 and three
// stages (WM = 2: 39 KiB; with WN = 2 two stages, 34 KiB), and KT scales per stage where the terms at k are scaled,
// filled by cp.async (no register round trip). Three stages: one barrier per stage; a thread waits for its copies
// of stage st (cp.async.wait_group 1), the barrier says every thread's have landed and every warp is done with stage
// st - 1, whose slot then takes the copies of stage st + 2, in flight during stage st's products. Two stages:
// stage st + 1's copies go out, then stage st is waited for (wait_group 1), and a barrier on each side of the
// products (with one barrier, ptxas kept more values live across the products of WM = 1 and spilled). Thread t
// copies 2 to 4 chunks of 4 elements per operand and stage (a warp's 32 chunks are 512 contiguous bytes of shared
// memory: no bank conflict) from as many source pointers plus one offset that advances by a constant (tc::Copier);
// chunks outside the matrix are zero-filled (the copy's ignore-src predicate); unless both operands are vec (and
// kdim < 2^29, so that the copies count k in 32 bits), both take 4-byte copies (a second instance of the stage
// loop, chosen once per tile). The stage loop counts in 32 bits.
// Layouts in shared memory, chosen so that every fragment load is one conflict-free 16-byte LDS:
// * MK: [rows][KT k]; KT = 32: the 16-byte chunk c of row r at chunk c ^ (4 (r & 1)) (so that the two rows a
//   quarter warp reads fall in different banks; rows of KT = 16 are 64 bytes and fall there unswizzled);
// * KM: [KT k][extent + 8 i] (row stride 72 or 136 = 8 mod 32), k row p of each 16-wide half stored at row
//   4 (p % 4) + p / 4 of that half.
// A permuted k order within each 16 k, the same for both operands (so the sum is unchanged): the mma k slots
// (k step kk, column tq or tq + 4 of lane 4 g + tq) take the matrix's k = 4 tq + j, j = 2 kk + (slot >= 4): one
// LDS.128 of an MK row gives a lane both k steps' values; a KM operand's rows (A) or columns (B) are permuted within
// each 32 instead (row_of / col_of), so that one LDS.128 of a k row gives 4 fragments' values.
// Warps: warp w computes 64 rows and columns 32 (w % 2) + 0..31 (4 x 4 fragments of mma.m16n8k8, 64 f32
// accumulators per lane): WM = 1, all 64 rows over the k half w / 2 of every stage ("sliced k"; at the end of the
// tile the upper half's sums are stored to shared memory and the lower half adds its own, lower + upper,
// deterministic); WM = 2, rows 64 (w / 2) + 0..63 over every stage's 16 k; WN = 2, columns 64 (w % 2) + 0..63 too
// (4 x 8 fragments, 128 accumulators per lane). The tile leaves through shared memory in 64-column halves (the
// caller's epilogue reads each from there). Per warp and stage (its 16 k):
// 12 LDS.128 for 32 fragments, 48 operand values split, 96 mma.sync (3xTF32) or 32 (TF32): 0.5 (resp. 1.5)
// shared-memory wavefronts per mma for the fragments; WN = 2: 16 LDS.128 for 64 mma.sync, 1.0 (BENCHMARKS.md "SASS
// report" has the measured mix). Fragment loads are asm (tc::ldsv): as plain C++ loads NVVM narrowed some of them
// on some runs only, and tests/nvrtc.rs requires one PTX per source.
// * TF32X3: every operand value x is split in registers, big = x truncated to TF32 (its 13 low bits cleared),
//   small = x - big (exact; the mma reads its upper 19 bits): two instructions per value. Per fragment and 16 k
//   (a warp's share of a stage), t = A_small B_big + A_big B_small + A_big B_big (six mma.sync into a fresh t,
//   small products first), then acc += t, one rounded f32 addition: the running sum never passes through the
//   tensor core's accumulator (whose rounding is not IEEE: NVIDIA documents no rounding mode for it), and it is
//   rounded once per 16 k instead of once per product. A_small B_small (below 2^-20 of the product) is dropped.
//   BENCHMARKS.md measures the accuracy against float64: better than the f32 paths on long reductions (the
//   blocked sum).
//   Non-finite values: a non-finite x (or one whose big rounds to inf) makes its small NaN, so every result whose
//   sum met one is NaN; each NaN result is recomputed at the end in f32 from global memory, exactly as the SIMT
//   path sums it: inf, -inf and NaN results are those of f32 arithmetic.
// * TF32 (opt-in, like torch.backends.cuda.matmul.allow_tf32): A_big B_big alone, operands truncated to TF32 (10
//   mantissa bits: A's values by big_bits as they go into the mma's register quads, an MK B's, and a KM B's
//   scaled by SK, as the mma reads them, its upper 19 bits; the simulator's mma truncates alike) and accumulated in
//   the tensor core:
//   about 1e-3 relative, for speed only. Never the default.
// The mma.sync path may differ from the simulator's documented emulation in the last bits (mma.cuh).
//
// ---- The SIMT path (every arch, the reference path; tile_simt)
// 64 x 64 tile, BK = 16 steps of k, both operands as [BK][64 + 8] k-major tiles in two register-staged stages
// (float4 global loads where Operand::vec; MK operands stored transposed, conflict-free). Thread t owns rows
// 4 (t / 8) + 0..3 and columns 4 (t % 8) + 0..3 and 32 + 4 (t % 8) + 0..3 (two float4 reads of B and one of A per
// k from shared memory, 32 fmaf). Every sum runs over k in increasing order with fmaf, so the SIMT path gives the
// same bits on the GPU and in the simulator. A scale of A's row or column (Operand::scale_by) is applied as staged.
#pragma once

#ifndef AIEC_EXPORT
#error "include common.cuh and aiec_params.cuh before aiec_gemm.cuh"
#endif
#include "mma.cuh"

// __launch_bounds__ of the GEMM kernels: 128 threads, at least 3 blocks (12 warps) per SM, so at most 170
// registers (the 3xTF32 path needs about 150; without a minimum, ptxas aimed at 128 and spilled).
#define AIEC_LB_GEMM 128, 3
// The tensor-core paths: at least 2 blocks per SM, so at most 255 registers (a warp's 64 x 32 accumulators and the
// split fragments of 16 k take 170 to 252; tests/nvrtc.rs fails on a spill).
#define AIEC_LB_GEMM_TC 128, 2

namespace aiec_gemm {
using aiec::u32;
using aiec::u64;
constexpr int BM = 64, BN = 64, BK = 16, THREADS = 128, LD = BM + 8, TILE = BK * LD;
enum Path { SIMT = 0, TF32X3 = 1, TF32 = 2 };

// An epilogue's store of a thread's column pair: (v0, v1) at row[n], row[n + 1] (n even), those below N; as one
// 8-byte store where pair is set (the row's start and the row length even: every even n is 8-byte aligned).
__device__ __forceinline__ void put2(float* row, u64 n, u64 N, bool pair, float v0, float v1) {
  if (pair && n + 1 < N) {
#ifdef AIEC_CUDA
    *reinterpret_cast<float2*>(row + n) = float2{v0, v1};
#else
    row[n] = v0;
    row[n + 1] = v1;
#endif
  } else {
    if (n < N) row[n] = v0;
    if (n + 1 < N) row[n + 1] = v1;
  }
}

// The block tiles of the tensor-core paths (tc::tile), by WM, the warps along m, and WN, the block tile's columns
// in 64s:
// * WM = 1: 64 x 64 outputs; warp w computes columns 32 (w % 2) + 0..31 over the k half w / 2 of every 32-k stage
//   ("sliced k": two warps share each output, their sums meet at the end of the tile); 2 stages.
// * WM = 2: 128 x 64 outputs; warp w computes rows 64 (w / 2) + 0..63 and columns 32 (w % 2) + 0..31 over every
//   16-k stage whole; 3 stages. Per mma, half the staging of WM = 1 (a block stages 192 rows of 16 k for 384 mma
//   where WM = 1 stages 128 rows of 32 k for as many); the plans take it where it does not cost waves.
// * WM = 2, WN = 2 (plain TF32 only: wn_of): 128 x 128 outputs; warp w computes rows 64 (w / 2) + 0..63 and
//   columns 64 (w % 2) + 0..63 (128 accumulators per lane, which 3xTF32's split fragments leave no registers
//   for) over every 16-k stage whole; 2 stages (three of 17 KiB would pass the 48 KiB of static shared memory).
//   Per mma, half the fragment loads of a 64 x 32 warp tile and 2/3 of WM = 2's staging (BENCHMARKS.md, "SASS
//   report"). The output leaves in two 64-column halves (tc::tile's epilogue).
// A warp's loop is the same slice_step either way: 16 k of each stage, NJ = 4 WN fragments of 8 columns.
namespace tc {
template <int WM, int WN = 1> struct Geo {
  static_assert(WM == 1 || WM == 2, "WM: 1 or 2");
  static_assert(WN == 1 || (WN == 2 && WM == 2), "WN: 1, or 2 with WM = 2");
  static constexpr int M = 64 * WM, N = 64 * WN;  // the block tile: M rows (A's extent), N columns (B's)
  static constexpr int KT = 32 / WM;              // k per stage
  static constexpr int STAGES = WN == 2 ? 2 : WM + 1;  // stages in shared memory (one or two in flight)
  static constexpr int NJ = 4 * WN;                    // a warp's fragments along n (8 columns each)
  static constexpr int ACC = 16 * NJ;                  // a lane's accumulators (4 fragments along m)
  static constexpr int SW = KT == 32 ? 4 : 0;     // MK: the chunk swizzle of odd rows (file comment)
  static constexpr int A_LD = M + 8, B_LD = N + 8;  // floats per k row of a KM tile (= 8 mod 32)
  static constexpr int A_SLOT = KT * A_LD, B_SLOT = KT * B_LD;  // floats per operand and stage (MK: M * KT)
  static constexpr int STAGE = A_SLOT + B_SLOT;
  static constexpr int FLOATS = STAGES * (STAGE + KT);  // the stages and the per-k scales (SK)
};
}  // namespace tc
// The block tile's columns in 64s (tc::Geo's WN) of a path and WM: 2 for plain TF32's 128-row tile, else 1.
__host__ __device__ constexpr int wn_of(int path, int wm) { return path == TF32 && wm == 2 ? 2 : 1; }
// Shared memory of one block, in floats: SIMT two stages of the A and B tiles; the tensor-core paths tc::Geo.
template <int PATH, int WM = 1> struct Smem {
  static constexpr int FLOATS = PATH == SIMT ? 2 * 2 * TILE : tc::Geo<WM, wn_of(PATH, WM)>::FLOATS;
};

struct Operand {
  const float* p;
  u64 ld;                // leading dimension, elements
  u64 extent;            // rows i
  u64 kdim;              // columns k
  bool km;               // KM (i contiguous) or MK (k contiguous)
  bool vec;              // float4 loads allowed
  int scale_by;          // 0: no scale; 1: scale of row i; 2: scale of column k
  const float* scale;    // per index (or null: scale_all)
  float scale_all;
};

__device__ __forceinline__ Operand operand(const float* p, u64 ld, u64 extent, u64 kdim, bool km) {
  Operand o;
  o.p = p;
  o.ld = ld;
  o.extent = extent;
  o.kdim = kdim;
  o.km = km;
  o.vec = ld % 4 == 0 && (aiec::addr(p) & 15) == 0 && (km ? extent : kdim) % 4 == 0;
  o.scale_by = 0;
  o.scale = nullptr;
  o.scale_all = 1.0f;
  return o;
}

// The 8 values thread t stages of operand o for the tile at (i0, k0): r[h][j] (see the file comment).
__device__ __forceinline__ void load_tile(const Operand& o, u64 i0, u64 k0, float r[2][4]) {
  const int t = (int)threadIdx.x;
  AIEC_UNROLL
  for (int h = 0; h < 2; ++h) {
    u64 i, k;  // the first of the 4 elements: (i, k); the others at i + j (KM) or k + j (MK)
    if (o.km) {
      k = k0 + (u64)(t / 16 + 8 * h);
      i = i0 + (u64)(4 * (t % 16));
    } else {
      i = i0 + (u64)(t % 64);
      k = k0 + (u64)(4 * (t / 64 + 2 * h));
    }
    const bool full = o.km ? (k < o.kdim && i + 3 < o.extent) : (i < o.extent && k + 3 < o.kdim);
    const float* src = o.km ? o.p + k * o.ld + i : o.p + i * o.ld + k;
    if (full && o.vec) {
#ifdef AIEC_CUDA
      const float4 q = *reinterpret_cast<const float4*>(src);
#else
      if (aiec::addr(src) & 15) throw ::cuda_sim::Error("misaligned float4 load (the GPU faults)");
      float4 q;
      memcpy(&q, src, 16);
#endif
      r[h][0] = q.x;
      r[h][1] = q.y;
      r[h][2] = q.z;
      r[h][3] = q.w;
    } else {
      AIEC_UNROLL
      for (int j = 0; j < 4; ++j) {
        const bool in = o.km ? (k < o.kdim && i + j < o.extent) : (i < o.extent && k + j < o.kdim);
        r[h][j] = in ? src[j] : 0.0f;
      }
    }
    if (o.scale_by) {
      AIEC_UNROLL
      for (int j = 0; j < 4; ++j) {
        const u64 ii = o.km ? i + j : i, kk = o.km ? k : k + j;
        const u64 idx = o.scale_by == 1 ? ii : kk;
        const bool in = ii < o.extent && kk < o.kdim;
        r[h][j] *= in && o.scale ? o.scale[idx] : o.scale_all;
      }
    }
  }
}

// 16-byte shared-memory access (p 16-byte aligned); memcpy in the simulator (no aliasing UB).
__device__ __forceinline__ float4 lds4(const float* p) {
#ifdef AIEC_CUDA
  return *reinterpret_cast<const float4*>(p);
#else
  float4 q;
  memcpy(&q, p, 16);
  return q;
#endif
}
__device__ __forceinline__ void sts4(float* p, float x, float y, float z, float w) {
#ifdef AIEC_CUDA
  *reinterpret_cast<float4*>(p) = float4{x, y, z, w};
#else
  const float q[4] = {x, y, z, w};
  memcpy(p, q, 16);
#endif
}

// Stores the staged values r of operand o into the stage's k-major tile (SIMT path).
__device__ __forceinline__ void store_tile(const Operand& o, const float r[2][4], float* tile) {
  const int t = (int)threadIdx.x;
  AIEC_UNROLL
  for (int h = 0; h < 2; ++h) {
    if (o.km) {
      sts4(tile + (t / 16 + 8 * h) * LD + 4 * (t % 16), r[h][0], r[h][1], r[h][2], r[h][3]);
    } else {
      const int i = t % 64, k = 4 * (t / 64 + 2 * h);
      AIEC_UNROLL
      for (int j = 0; j < 4; ++j) tile[(k + j) * LD + i] = r[h][j];
    }
  }
}

// The accumulators of one thread: 32 floats, whose tile coordinates for_each() gives.
struct Acc {
  float v[32];
};

// One BK step of the SIMT path on the stage's tiles.
__device__ __forceinline__ void simt_step(Acc& acc, const float* A, const float* B) {
  const int t = (int)threadIdx.x, m0 = 4 * (t / 8), n0 = 4 * (t % 8);
  AIEC_UNROLL_BY(1)  // not unrolled: unrolled, ptxas emits one of several cubins run to run (tests/nvrtc.rs)
  for (int k = 0; k < BK; ++k) {
    const float4 a = lds4(A + k * LD + m0), b0 = lds4(B + k * LD + n0), b1 = lds4(B + k * LD + 32 + n0);
    const float av[4] = {a.x, a.y, a.z, a.w}, bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
    AIEC_UNROLL
    for (int i = 0; i < 4; ++i)
      AIEC_UNROLL
      for (int j = 0; j < 8; ++j) acc.v[8 * i + j] = fmaf(av[i], bv[j], acc.v[8 * i + j]);
  }
}

// acc = the tile at (m0, n0) of A B with the SIMT path, A: operand a (extent M, kdim K), B: operand b (extent N,
// kdim K). All 128 threads of the block call it (barriers); smem: Smem<SIMT>::FLOATS floats, 16-byte aligned.
__device__ __forceinline__ void tile_simt(const Operand& a, const Operand& b, u64 m0, u64 n0, float* smem, Acc& acc) {
  AIEC_UNROLL
  for (int i = 0; i < 32; ++i) acc.v[i] = 0.0f;
  // stage s: A at smem + (2 s) * TILE, B at smem + (2 s + 1) * TILE
  auto arr = [&](int stage, int which) { return smem + (stage * 2 + which) * TILE; };
  const u64 K = a.kdim, steps = (K + BK - 1) / BK;
  float ra[2][4], rb[2][4];
  if (steps) {
    load_tile(a, m0, 0, ra);
    load_tile(b, n0, 0, rb);
    store_tile(a, ra, arr(0, 0));
    store_tile(b, rb, arr(0, 1));
    __syncthreads();
  }
  for (u64 s = 0; s < steps; ++s) {  // block-uniform
    const int cur = (int)(s & 1);
    const bool more = s + 1 < steps;
    if (more) {  // the next step's global loads, in flight during this step's products
      load_tile(a, m0, (s + 1) * BK, ra);
      load_tile(b, n0, (s + 1) * BK, rb);
    }
    simt_step(acc, arr(cur, 0), arr(cur, 1));
    if (more) {
      store_tile(a, ra, arr(cur ^ 1, 0));
      store_tile(b, rb, arr(cur ^ 1, 1));
    }
    __syncthreads();  // the next stage is stored; this one is consumed (it is written two steps on)
  }
}

#if AIEC_MMA_TF32
// ---------------------------------------------------------------- the tensor-core paths (TF32X3, TF32)
namespace tc {
// Asynchronous copies global -> shared (PTX cp.async, sm_80+; the simulator's cuda_sim::cp_async models their
// latency: a copy lands only when its thread waits): 16 or 4 bytes from src to dst, or zeros where !in (src is
// then not read). Destinations are Saddr: the shared-window address on the GPU (32 bits), a pointer in the
// simulator; saddr(p) converts a pointer into shared memory, sadd(a, n) is a + n floats.
#ifdef AIEC_CUDA
using Saddr = u32;
__device__ __forceinline__ Saddr saddr(const float* p) {
  u64 d;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(d) : "l"(p));
  return (u32)d;
}
__device__ __forceinline__ Saddr sadd(Saddr a, int n) { return a + 4u * (u32)n; }
#else
using Saddr = float*;
__device__ __forceinline__ Saddr saddr(float* p) { return p; }
__device__ __forceinline__ Saddr sadd(Saddr a, int n) { return a + n; }
#endif
__device__ __forceinline__ void cp16(Saddr dst, const float* src, bool in) {
#ifdef AIEC_CUDA
  asm volatile(
      "{\n .reg .pred z;\n setp.eq.u32 z, %2, 0;\n cp.async.cg.shared.global [%0], [%1], 16, z;\n}" ::"r"(dst),
      "l"(src), "r"((u32)in)
      : "memory");
#else
  ::cuda_sim::cp_async(dst, src, 16, in ? 16 : 0);
#endif
}
__device__ __forceinline__ void cp4(Saddr dst, const float* src, bool in) {
#ifdef AIEC_CUDA
  asm volatile(
      "{\n .reg .pred z;\n setp.eq.u32 z, %2, 0;\n cp.async.ca.shared.global [%0], [%1], 4, z;\n}" ::"r"(dst),
      "l"(src), "r"((u32)in)
      : "memory");
#else
  ::cuda_sim::cp_async(dst, src, 4, in ? 4 : 0);
#endif
}
__device__ __forceinline__ void cp_commit() {
#ifdef AIEC_CUDA
  asm volatile("cp.async.commit_group;" ::: "memory");
#else
  ::cuda_sim::cp_async_commit();
#endif
}
template <int N> __device__ __forceinline__ void cp_wait() {
#ifdef AIEC_CUDA
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#else
  ::cuda_sim::cp_async_wait(N);
#endif
}

// Thread t's copies of one operand, stage after stage (see the file comment for both layouts), for a tile of EXT
// rows (MK; KM: EXT columns along i) and KT k per stage: EXT KT / 4 chunks of 4 consecutive elements a stage, H =
// EXT KT / 512 per thread; a warp's 32 chunks fill 512 contiguous bytes of shared memory (MK: 128 / KT rows;
// KM: 128 / EXT k rows), so the stores are free of bank conflicts. RP = 512 / (KT or EXT) rows (MK) or k rows
// (KM) per pass of the 128 threads: chunk h of thread t is MK row t / (KT / 4) + RP h, k chunk t % (KT / 4); KM k
// row t / (EXT / 4) + RP h, i chunk t % (EXT / 4). Everything that does not change from stage to stage is computed
// once: the H chunks' stage-0 sources plus one offset, the same for all, that advances by a constant (ptxas then
// derives the addresses from one pointer and a uniform stride: fewer 64-bit adds than H pointers advanced apart),
// and only the extent left along k is counted down (in 32 bits for VEC, which tile takes only for kdim < 2^29: a
// 64-bit count costs two instructions per test and per step). A chunk outside the matrix copies nothing (zeros):
// its source is never read. VEC (Operand::vec): every chunk is whole or outside and takes one 16-byte copy; else
// 4 of 4 bytes.
// The type of Copier::left: 32 bits for the 16-byte copies (tile takes them only where kdim < VEC_KDIM), else 64.
template <bool VEC> struct LeftT {
  using T = long long;
};
template <> struct LeftT<true> {
  using T = int;
};
constexpr u64 VEC_KDIM = (u64)1 << 29;

template <bool KM, bool VEC, int EXT, int KT, int KLD> struct Copier {
  static constexpr int CPR = KM ? EXT / 4 : KT / 4;  // chunks per row (MK) or k row (KM)
  static constexpr int RP = 128 / CPR;               // rows (k rows) per pass
  static constexpr int H = EXT * KT / 512;           // chunks per thread and stage
  static constexpr int SW = KT == 32 ? 4 : 0;        // MK: the chunk swizzle of odd rows
  static_assert(H >= 1 && (KM ? RP * H == KT && (RP == 8 || (RP == 4 && KT == 16)) : RP * H == EXT), "copier geometry");
  using L = typename LeftT<VEC>::T;
  const float* src[H];  // chunk h's source in stage 0
  u64 adv;              // elements from one stage to the next
  u64 off = 0;          // elements from stage 0's chunks to the next stage's (the same for every chunk)
  L left;               // MK: elements of the chunk's row from its first k on; KM: k rows from chunk 0's on
  int fixed;            // MK: rows from chunk 0's on (at most EXT); KM: elements along i from the chunk's first
  Saddr d0;             // chunk 0's destination in stage 0
  __device__ __forceinline__ Copier(const Operand& o, u64 i0, float* smem) {
    const int t = (int)threadIdx.x, c = t % CPR, r0 = t / CPR;
    const u64 i = KM ? i0 + (u64)(4 * c) : i0 + (u64)r0, k = KM ? (u64)r0 : (u64)(4 * c);
    const u64 fx = o.extent - aiec_k::min64(i, o.extent);
    fixed = fx < EXT ? (int)fx : EXT;
    left = (L)((long long)o.kdim - (long long)k);
    // KM, 16-byte copies: a chunk whose i is past the extent is outside at every stage: as if no k were left (one
    // counter to test per copy instead of two; kdim < VEC_KDIM = 2^29 keeps it above -2^30 at every stage).
    if (KM && VEC && fixed <= 0) left = (L)(-(long long)VEC_KDIM);
    const float* p = KM ? o.p + k * o.ld + i : o.p + i * o.ld + k;
    const u64 step = (u64)RP * o.ld;  // elements from chunk h to h + 1
    AIEC_UNROLL
    for (int h = 0; h < H; ++h) src[h] = p + (u64)h * step;
    adv = KM ? (u64)KT * o.ld : (u64)KT;
    d0 = saddr(smem + (KM ? (4 * (r0 % 4) + r0 / 4) * KLD + 4 * c : r0 * KT + 4 * (c ^ (SW * (r0 & 1)))));
  }
  // Issues the next stage's copies into the slot at dst_floats floats from stage 0's.
  __device__ __forceinline__ void issue(int dst_floats) {
    const Saddr d = sadd(d0, dst_floats);
    AIEC_UNROLL
    for (int h = 0; h < H; ++h) {
      // from chunk 0's: KM, k row r0 + RP h of the 16-k half (r0 + RP h) / 16 is stored at its row 4 (p % 4) + p / 4
      // (p = (r0 + RP h) % 16; r0 < RP)
      const int so = KM ? (RP == 8 ? 16 * (h / 2) + 2 * (h % 2) : h) * KLD : RP * h * KT;
      // elements of the chunk inside the matrix: 0 to 4 (VEC: 0 or 4)
      const bool row_in = KM ? left > RP * h : fixed > RP * h;
      const L along = KM ? (L)fixed : left;
      if (VEC) {
        cp16(sadd(d, so), src[h] + off, KM ? row_in : row_in && along > 0);
      } else {
        AIEC_UNROLL
        for (int j = 0; j < 4; ++j) cp4(sadd(d, so + j), src[h] + off + j, row_in && along > j);
      }
    }
    off += adv;
    left -= KT;
  }
};

// The 16 bytes at a + n floats of shared memory (16-byte aligned). An asm statement on the GPU: NVVM, free to
// narrow a vector load whose lanes it finds partly used, did so for some of these on some runs and not on others
// (a different PTX from the same source, which tests/nvrtc.rs rejects); it cannot narrow an asm.
__device__ __forceinline__ float4 ldsv(Saddr a, int n) {
  float4 q;
#ifdef AIEC_CUDA
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(q.x), "=f"(q.y), "=f"(q.z), "=f"(q.w)
               : "r"(sadd(a, n)));
#else
  memcpy(&q, sadd(a, n), 16);
#endif
  return q;
}

// Whether slice_step reads SK's scales in pairs and shuffles (3xTF32's 128 x 64 tile, where it takes the loop under
// 0.8 wavefronts per mma at sm_90, for 0.06 instructions more; elsewhere it cost more instructions than it saved
// wavefronts, up to 0.35 per mma at sm_80).
__host__ __device__ constexpr bool spair(int path, int wm) { return path == TF32X3 && wm == 2; }

// The 8 bytes at a (8-byte aligned), as ldsv.
__device__ __forceinline__ float2 ldsv2(Saddr a) {
  float2 q;
#ifdef AIEC_CUDA
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(q.x), "=f"(q.y) : "r"(a));
#else
  memcpy(&q, a, 8);
#endif
  return q;
}

// x = big + small: big = x truncated to TF32 (its 13 low bits cleared), small = x - big (exact: the 13 low bits'
// worth, of x's sign), which reaches the mma as it is, whose operand read keeps its upper 19 bits (truncation too).
// Two instructions per value, as CUTLASS's round_toward_zero big; truncating both parts (instead of rounding big
// to nearest, one instruction more) loses about 2^-21 of the operand instead of 2^-22 (BENCHMARKS.md measures the
// results against float64). A non-finite x makes small NaN: the tile's NaN results are then recomputed (tile).
// mask is 0xFFFFE000 made opaque to ptxas (tf32_mask): knowing that the mma reads only the upper 19 bits, ptxas
// would pass x itself as big, and then move every A value into a register quad (one move per value).
__device__ __forceinline__ u32 big_bits(float x, u32 mask) { return __float_as_uint(x) & mask; }
// 0xFFFFE000, computed from kdim (< 2^63 always: an element count) so that ptxas cannot fold it (big_bits).
__device__ __forceinline__ u32 tf32_mask(u64 kdim) { return 0xFFFFE000u | (u32)(kdim >> 63); }

// Warp w computes rows wm + 0..63 of the tile (4 fragments mi of 16 rows; wm = 64 (w / 2) for WM = 2, else 0) and
// the 32 WN columns wn + 0.. (NJ = 4 WN fragments nj of 8; wn = 32 WN (w % 2)) (Geo). Accumulator element r of
// fragment (mi, nj) is acc[4 (NJ mi + nj) + r], at row wm + row_of and column wn + col_of of the tile; the KM
// layouts permute rows (A) and columns (B) within each 32 (file comment).
template <bool AKM> __device__ __forceinline__ int row_of(int lane, int mi, int r) {
  const int g = lane >> 2, e = r >> 1;
  return AKM ? 32 * (mi >> 1) + 4 * g + 2 * (mi & 1) + e : 16 * mi + g + 8 * e;
}
template <bool BKM> __device__ __forceinline__ int col_of(int lane, int nj, int r) {
  const int c = 2 * (lane & 3) + (r & 1);
  return BKM ? 32 * (nj >> 2) + 4 * c + (nj & 3) : 8 * nj + c;
}

// The offset in a stage's operand slot of a lane's first fragment load of the 16-k half s, for a warp whose
// fragments start at row (or column) w0: KM (LD floats per k row), k row 16 s + tq, at w0 + 4 g; MK (KT k per
// row), row w0 + g, the swizzled chunk of k 16 s + 4 tq (w0 is even, so every row the lane reads has the parity
// of g).
template <bool KM, int LD, int KT>
__device__ __forceinline__ int frag_base(int lane, int w0, int s) {
  constexpr int SW = KT == 32 ? 4 : 0;
  const int g = lane >> 2, tq = lane & 3;
  return KM ? (16 * s + tq) * LD + w0 + 4 * g : (w0 + g) * KT + 4 * ((4 * s + tq) ^ (SW * (g & 1)));
}

// The warp's products over its 16-wide half of a stage: fragments by 16-byte loads (As, Bs: the lane's first
// load, frag_base; the others a constant away), split in registers, 3 (TF32X3) or 1 (TF32) mma.sync per 16 x 8
// fragment and 8 k. TF32X3 sums each fragment's 16 k into a fresh t (small products first) that is added to acc
// with one rounded f32 addition per element: the running sum never passes through the tensor core's accumulator.
// SK: B's value at k is multiplied by its staged scale first (S: the half's scales of the lane's k rows; B holds
// half as many values per lane as A, so half the multiplications).
// ALD, BLD: floats per k row of a KM A, B; KT: k per row of an MK one; NJ: B's fragments (Geo::NJ). SPAIR: SK's
// scales read in pairs (spair; S where tile_v's fs puts it).
template <int PATH, bool AKM, bool BKM, bool SK, int ALD, int BLD, int KT, int NJ, bool SPAIR>
__device__ __forceinline__ void slice_step(float* acc, Saddr As, Saddr Bs, Saddr S, u32 mask) {
  using namespace aiec_mma;
  auto split = [&](float x, u32& big, u32& small) {
    big = big_bits(x, mask);
    if constexpr (PATH == TF32X3) small = __float_as_uint(x - __uint_as_float(big));
  };
  // TF32: an MK operand B's value goes to the mma as it is (which reads its upper 19 bits: the same truncation)
  // where the 16-byte load leaves it in place (a register pair of one fragment).
  auto raw = [&](float x, u32& big, u32& small) {
    if constexpr (PATH == TF32X3)
      split(x, big, small);
    else
      big = __float_as_uint(x);
  };
  // B's fragments of both 8-wide k steps, split: [kk][nj][register]
  u32 bb[2][NJ][2], bs[2][NJ][2];
  float sc[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  if constexpr (SK) {  // the scales of k rows 4 tq + j of the half (staged; 0 past kdim, where A and B are 0 too)
    static_assert(BKM, "per-k scales are applied to a KM operand B");
    if constexpr (SPAIR) {
      // An 8-byte load a lane, of k rows 4 tq + 2 o + 0..1 where o = g % 2 (S), and the other two from the lane 4
      // away (the same tq, the other o): 2 shared-memory wavefronts a warp where a 16-byte load of all 4 takes 4,
      // for 2 shuffles and 4 selects.
      const float2 mine = ldsv2(S);
      const float ox = __shfl_xor_sync(0xffffffffu, mine.x, 4), oy = __shfl_xor_sync(0xffffffffu, mine.y, 4);
      const bool odd = (threadIdx.x >> 2) & 1;
      sc[0] = odd ? ox : mine.x;
      sc[1] = odd ? oy : mine.y;
      sc[2] = odd ? mine.x : ox;
      sc[3] = odd ? mine.y : oy;
    } else {  // one 16-byte load (S: k row 4 tq)
      const float4 q = ldsv(S, 0);
      sc[0] = q.x;
      sc[1] = q.y;
      sc[2] = q.z;
      sc[3] = q.w;
    }
  }
  if constexpr (BKM) {
    AIEC_UNROLL
    for (int n32 = 0; n32 < NJ / 4; ++n32)  // each 32 columns: fragments 4 n32 + 0..3
      AIEC_UNROLL
      for (int j = 0; j < 4; ++j) {  // k row 4 tq + j of the half: k step j / 2, fragment row tq + 4 (j % 2)
        const float4 q = ldsv(Bs, 4 * j * BLD + 32 * n32);
        const int kk = j >> 1, h = j & 1, f = 4 * n32;
        // TF32 and SK: the product goes to the mma as it is (its upper 19 bits, the same truncation): the FMUL
        // writes the fragment's register, where a mask would cost one more instruction per value.
        auto put = [&](float x, u32& big, u32& small) {
          if constexpr (PATH == TF32 && SK)
            raw(x, big, small);
          else
            split(x, big, small);
        };
        put(SK ? q.x * sc[j] : q.x, bb[kk][f][h], bs[kk][f][h]);
        put(SK ? q.y * sc[j] : q.y, bb[kk][f + 1][h], bs[kk][f + 1][h]);
        put(SK ? q.z * sc[j] : q.z, bb[kk][f + 2][h], bs[kk][f + 2][h]);
        put(SK ? q.w * sc[j] : q.w, bb[kk][f + 3][h], bs[kk][f + 3][h]);
      }
  } else {
    AIEC_UNROLL
    for (int nj = 0; nj < NJ; ++nj) {
      const float4 q = ldsv(Bs, 8 * nj * KT);  // row wn + 8 nj + g; row & 1 = g & 1
      raw(q.x, bb[0][nj][0], bs[0][nj][0]);
      raw(q.y, bb[0][nj][1], bs[0][nj][1]);
      raw(q.z, bb[1][nj][0], bs[1][nj][0]);
      raw(q.w, bb[1][nj][1], bs[1][nj][1]);
    }
  }
  // A one load group at a time (KM: 2 fragments mi, MK: 1), so that only its fragments are live beside B's.
  constexpr int MG = AKM ? 2 : 1;
  AIEC_UNROLL
  for (int m0i = 0; m0i < 4; m0i += MG) {
    u32 ab[2][MG][4], as[2][MG][4];  // [kk][mi - m0i][register]
    if constexpr (AKM) {
      AIEC_UNROLL
      for (int j = 0; j < 4; ++j) {  // k row 4 tq + j of the half: k step j / 2, fragment column tq + 4 (j % 2)
        const float4 q = ldsv(As, 4 * j * ALD + 16 * m0i);
        const int kk = j >> 1, h = 2 * (j & 1);
        split(q.x, ab[kk][0][h], as[kk][0][h]);
        split(q.y, ab[kk][0][h + 1], as[kk][0][h + 1]);
        split(q.z, ab[kk][MG - 1][h], as[kk][MG - 1][h]);
        split(q.w, ab[kk][MG - 1][h + 1], as[kk][MG - 1][h + 1]);
      }
    } else {
      AIEC_UNROLL
      for (int e = 0; e < 2; ++e) {
        const float4 q = ldsv(As, (16 * m0i + 8 * e) * KT);  // row 16 m0i + 8 e + g
        split(q.x, ab[0][0][e], as[0][0][e]);
        split(q.y, ab[0][0][e + 2], as[0][0][e + 2]);
        split(q.z, ab[1][0][e], as[1][0][e]);
        split(q.w, ab[1][0][e + 2], as[1][0][e + 2]);
      }
    }
    AIEC_UNROLL
    for (int mm = 0; mm < MG; ++mm)
      AIEC_UNROLL
      for (int nj = 0; nj < NJ; ++nj) {
        float* d = acc + 4 * (NJ * (m0i + mm) + nj);
        if constexpr (PATH == TF32X3) {
          float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          AIEC_UNROLL
          for (int kk = 0; kk < 2; ++kk) {
            mma_m16n8k8_tf32(t, as[kk][mm], bb[kk][nj], t);
            mma_m16n8k8_tf32(t, ab[kk][mm], bs[kk][nj], t);
            mma_m16n8k8_tf32(t, ab[kk][mm], bb[kk][nj], t);
          }
          AIEC_UNROLL
          for (int r = 0; r < 4; ++r) d[r] += t[r];
        } else {
          AIEC_UNROLL
          for (int kk = 0; kk < 2; ++kk) mma_m16n8k8_tf32(d, ab[kk][mm], bb[kk][nj], d);
        }
      }
  }
}

// Element (i, k) of operand o as the SIMT path reads it (0 outside the matrix).
__device__ __forceinline__ float at(const Operand& o, u64 i, u64 k) {
  if (i >= o.extent || k >= o.kdim) return 0.0f;
  return o.km ? o.p[k * o.ld + i] : o.p[i * o.ld + k];
}

template <int PATH, bool AKM, bool BKM, bool SK, int LDO, bool VEC, int WM, int WN, bool FIX, class Epi>
__device__ __forceinline__ void tile_v(const Operand& a, const Operand& b, u64 m0, u64 n0, float* smem, float* out,
                                       Epi epi) {
  using G = Geo<WM, WN>;
  static_assert(WN == 1 || PATH == TF32, "the 128 x 128 tile is plain TF32's (wn_of)");
  constexpr int NJ = G::NJ, ACC = G::ACC;
  const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kh = WM == 1 ? warp >> 1 : 0, wm = WM == 1 ? 0 : 64 * (warp >> 1);  // the warp's k half, first row
  const int wn = 32 * WN * (warp & 1);                                             // the warp's first column
  float acc[ACC];
  AIEC_UNROLL
  for (int i = 0; i < ACC; ++i) acc[i] = 0.0f;
  // Stages are counted in 32 bits: a kdim of 2^36 or more (a 256 GiB operand row) is never launched.
  const u64 K = a.kdim;
  const u32 steps = (u32)((K + G::KT - 1) / G::KT);
  // stage s at smem + s STAGE: A, then B at + A_SLOT; SK: the scales at smem + STAGES STAGE + s KT
  Copier<AKM, VEC, G::M, G::KT, G::A_LD> ca(a, m0, smem);
  Copier<BKM, VEC, G::N, G::KT, G::B_LD> cb(b, n0, smem + G::A_SLOT);
  float* const scales = smem + G::STAGES * G::STAGE;
  const u32 mask = tf32_mask(K);
  const Saddr sm = saddr(smem);
  const int fa = frag_base<AKM, G::A_LD, G::KT>(lane, wm, kh);
  const int fb = G::A_SLOT + frag_base<BKM, G::B_LD, G::KT>(lane, wn, kh);
  // SK: the lane's scales of the half (16 kh + 4 tq), or the pair it reads (spair)
  constexpr bool SPAIR = spair(PATH, WM);
  const int fs = G::STAGES * G::STAGE + 16 * kh + 4 * (lane & 3) + (SPAIR ? 2 * ((lane >> 2) & 1) : 0);
  // SK: threads t < KT copy the stage's KT scales, thread t the one at k = KT st + t (like a Copier: a source that
  // advances by KT, the k left counted down; past kdim nothing is read and the scale is 0).
  const float* sp = SK ? a.scale + tid : nullptr;
  typename LeftT<VEC>::T sleft = (typename LeftT<VEC>::T)((long long)K - tid);
  const Saddr sd = saddr(scales + tid);
  // The next stage's copies into slot ws (0 .. STAGES - 1); every thread commits a group per stage, empty where
  // there is no stage left, so that the wait below always leaves the newest STAGES - 2 groups in flight.
  int ws = 0;
  auto issue = [&](bool any) {
    if (any) {  // block-uniform
      ca.issue(ws * G::STAGE);
      cb.issue(ws * G::STAGE);
      if (SK && tid < G::KT) {
        cp4(sadd(sd, ws * G::KT), sp, sleft > 0);
        sp += G::KT;
        sleft -= G::KT;
      }
    }
    cp_commit();
    ws = ws + 1 == G::STAGES ? 0 : ws + 1;
  };
  int rs = 0;  // the slot of stage st
  auto products = [&]() {
    const Saddr A = sadd(sm, rs * G::STAGE);
    slice_step<PATH, AKM, BKM, SK, G::A_LD, G::B_LD, G::KT, NJ, SPAIR>(acc, sadd(A, fa), sadd(A, fb),
                                                               sadd(sm, fs + rs * G::KT), mask);
    rs = rs + 1 == G::STAGES ? 0 : rs + 1;
  };
  if constexpr (G::STAGES == 2) {
    // Two stages: stage st + 1's copies go out before stage st is waited for, and a second barrier frees its slot
    // (ptxas keeps fewer values live across the products this way: WM = 1 holds its 64 accumulators per lane
    // with 223 of 255 registers; with the one-barrier order below it spilled).
    if (steps) issue(true);
    for (u32 st = 0; st < steps; ++st) {  // block-uniform
      if (st + 1 < steps) {
        issue(true);
        cp_wait<1>();
      } else {
        cp_wait<0>();
      }
      __syncthreads();  // every thread's copies of stage st have landed
      products();
      __syncthreads();  // stage st is consumed: the copies of stage st + 2 may overwrite it
    }
  } else {
    AIEC_UNROLL
    for (int p = 0; p + 1 < G::STAGES; ++p) issue((u32)p < steps);
    for (u32 st = 0; st < steps; ++st) {  // block-uniform
      cp_wait<G::STAGES - 2>();  // this thread's copies of stage st have landed
      __syncthreads();            // every thread's have, and stage st - 1 is consumed by every warp
      issue(st + (G::STAGES - 1) < steps);  // into the slot of stage st - 1, in flight during the products
      products();
    }
    __syncthreads();  // every warp is done with the stages: out (which may be smem itself) may be written
  }
  // Fragment f = NJ mi + nj's element r in out, whose column 0 is the tile's column c0.
  auto at_out = [&](int f, int r, int c0) -> float& {
    return out[(wm + row_of<AKM>(lane, f / NJ, r)) * LDO + wn - c0 + col_of<BKM>(lane, f % NJ, r)];
  };
  if constexpr (WN == 2) {  // the two 64-column halves, one after the other (out holds 128 x 64)
    AIEC_UNROLL
    for (int h = 0; h < 2; ++h) {
      if ((warp & 1) == h) {  // warp-uniform: the half's two warps
        AIEC_UNROLL
        for (int f = 0; f < ACC / 4; ++f)
          AIEC_UNROLL
          for (int r = 0; r < 4; ++r) at_out(f, r, 64 * h) = acc[4 * f + r];
      }
      __syncthreads();  // the half is in out
      if (h == 0) {
        epi(0);
        __syncthreads();  // the epilogue is done with out
      }
    }
    return;  // the last half is in out
  }
  if (WM == 1) {  // the two k halves meet in out: the upper half's sums are stored, the lower half adds its own
    if (kh == 1) {
      AIEC_UNROLL
      for (int f = 0; f < ACC / 4; ++f)
        AIEC_UNROLL
        for (int r = 0; r < 4; ++r) at_out(f, r, 0) = acc[4 * f + r];
    }
    __syncthreads();
  }
  if (kh == 0) {
    AIEC_UNROLL
    for (int f = 0; f < ACC / 4; ++f)
      AIEC_UNROLL
      for (int r = 0; r < 4; ++r) {
        if (WM == 1)
          at_out(f, r, 0) += acc[4 * f + r];
        else
          at_out(f, r, 0) = acc[4 * f + r];
      }
    if constexpr (PATH == TF32X3 && FIX) {
      AIEC_UNROLL_BY(1)
      for (int f = 0; f < ACC; ++f) {  // an inf or NaN operand (or a spurious NaN of the split): the f32 sum
        const int m = wm + row_of<AKM>(lane, f / (4 * NJ), f % 4), n = wn + col_of<BKM>(lane, (f / 4) % NJ, f % 4);
        float& x = out[m * LDO + n];
        if (x == x) continue;
        const u64 i = m0 + (u64)m, j = n0 + (u64)n;
        float sum = 0.0f;
        if (i < a.extent && j < b.extent)
          for (u64 k = 0; k < K; ++k) sum = fmaf(SK ? at(a, i, k) * a.scale[k] : at(a, i, k), at(b, j, k), sum);
        x = sum;
      }
    }
  }
  __syncthreads();  // the tile is in out
}

// The tile at (m0, n0) of C = A B on the tensor cores, in 64-column halves h = 0 .. WN - 1 (WN = wn_of(PATH, WM)):
// out[m * LDO + n] = element (m0 + m, n0 + 64 h + n) of C for m < Geo<WM, WN>::M, n < 64 (0 past the matrix), the
// last half when tile returns, every other one while epi(h) runs (WN = 2: epi(0), then half 1 at the return; the
// caller then runs its epilogue for half WN - 1 itself: one copy of it after the calls of several instances of tile,
// which keeps the registers of the 3xTF32 kernels below their spill point). A: a (a.km == AKM), B: b (b.km == BKM).
// SK: every term at k is multiplied by a.scale[k] (applied to B's value; no other scale is applied).
// All 128 threads call it and epi (barriers; epi may have its own); smem: Geo<WM, WN>::FLOATS floats, 16-byte
// aligned; out: Geo<WM, WN>::M rows of LDO floats (may be smem itself: the stages are consumed when it is written),
// which epi may overwrite. The copies take 16 bytes where a.vec and b.vec, else 4 (two instances of the stage
// loop, one chosen per tile). TF32X3 and FIX: a result that is NaN is recomputed in f32 from global memory (the
// SIMT path's sum), so non-finite operands give the f32 results; without FIX the caller does that (after the loop,
// where a and b need no registers across it: fix_nan).
template <int PATH, bool AKM, bool BKM, bool SK, int LDO, int WM, bool FIX = true, class Epi>
__device__ __forceinline__ void tile(const Operand& a, const Operand& b, u64 m0, u64 n0, float* smem, float* out,
                                     Epi&& epi) {
  constexpr int WN = wn_of(PATH, WM);
  static_assert(Geo<WM, WN>::M * LDO <= Geo<WM, WN>::FLOATS, "the output tile fits in shared memory");
  if (a.vec && b.vec && a.kdim < VEC_KDIM)
    tile_v<PATH, AKM, BKM, SK, LDO, true, WM, WN, FIX>(a, b, m0, n0, smem, out, epi);
  else
    tile_v<PATH, AKM, BKM, SK, LDO, false, WM, WN, FIX>(a, b, m0, n0, smem, out, epi);
}

// tile's NaN fix-up done by its caller (tile<..., FIX = false>): every NaN among out's rows < M and columns < N
// (M x N, LDO floats a row) is recomputed as the f32 sum over the whole of a and b (a.kdim), as the SIMT path
// sums it. All 128 threads call it (a barrier at the end).
template <int LDO>
__device__ __forceinline__ void fix_nan(const Operand& a, const Operand& b, u64 m0, u64 n0, int M, int N, float* out) {
  for (int q = (int)threadIdx.x; q < M * N; q += THREADS) {
    const int m = q / N, n = q % N;
    float& x = out[m * LDO + n];
    if (x == x) continue;
    const u64 i = m0 + (u64)m, j = n0 + (u64)n;
    float sum = 0.0f;
    if (i < a.extent && j < b.extent)
      for (u64 k = 0; k < a.kdim; ++k) sum = fmaf(at(a, i, k), at(b, j, k), sum);
    x = sum;
  }
  __syncthreads();
}
}  // namespace tc
#endif

// Calls f(m, n, v0, v1) for the thread's accumulators in pairs (m, n), (m, n + 1) of the tile (n even).
template <int PATH, class F> __device__ __forceinline__ void for_each(const Acc& acc, F&& f) {
  const int t = (int)threadIdx.x;
  if constexpr (PATH == SIMT) {
    const int m0 = 4 * (t / 8), n0 = 4 * (t % 8);
    AIEC_UNROLL
    for (int i = 0; i < 4; ++i)
      AIEC_UNROLL
      for (int j = 0; j < 8; j += 2) f(m0 + i, (j < 4 ? n0 : 32 + n0 - 4) + j, acc.v[8 * i + j], acc.v[8 * i + j + 1]);
  } else {
    const int lane = t & 31, warp = t >> 5, wm = 32 * (warp % 2), wn = 32 * (warp / 2);
    AIEC_UNROLL
    for (int mi = 0; mi < 2; ++mi)
      AIEC_UNROLL
      for (int nj = 0; nj < 4; ++nj)
        AIEC_UNROLL
        for (int h = 0; h < 2; ++h) {
          const float* d = acc.v + 4 * (4 * mi + nj) + 2 * h;
          f(wm + 16 * mi + aiec_mma::c_row(lane, 2 * h), wn + 8 * nj + aiec_mma::c_col(lane, 0), d[0], d[1]);
        }
  }
}
}  // namespace aiec_gemm
