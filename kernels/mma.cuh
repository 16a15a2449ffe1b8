// kernels/mma.cuh - TF32 tensor-core primitives (mma.sync m16n8k8) and the 3xTF32 split, on the GPU and in the
// simulator. Include it after common.cuh: `#include "common.cuh"` then `#include "mma.cuh"` (NVRTC gets it in
// memory by this name, like every kernels/*.cuh; no CUDA toolkit header is included).
//
// Provides, in namespace aiec_mma:
// * to_tf32(x): x rounded to TF32 like PTX cvt.rna.tf32.f32, returned as an f32 whose 13 low bits are zero;
// * split_tf32(x, big, small): big = to_tf32(x), small = to_tf32(x - big) (the 3xTF32 operand split);
// * a_row/a_col, b_row/b_col, c_row/c_col(lane, i): the fragment layouts below, as functions;
// * mma_m16n8k8_tf32(d, a, b, c): D = A B + C for one 16x8x8 tile, a warp-wide instruction, where AIEC_MMA_TF32
//   is 1: sm_80 and later, and the simulator. On sm_75 it does not exist (AIEC_MMA_TF32 is 0): guard its use
//   with `#if AIEC_MMA_TF32`, so nothing sm_80-only is emitted for sm_75;
// * mma_tile_abt_3xtf32(acc, ...): a warp accumulates a 16x8 tile of A B^T from f32 row-major A and B in 3xTF32
//   (a demonstration of the primitives and a building block; see its comment).
//
// to_tf32, exactly (GPU and simulator alike): round to nearest with ties away from zero to 10 explicit mantissa
// bits (cvt's .rna), subnormals kept and rounded the same way (no flush to zero), +-0 and +-inf unchanged, |x| at
// or above 0x1.ffep127 (the midpoint above the largest TF32, 0x1.ffcp127) -> +-inf. In f32 bits, for finite x:
// (bits + 0x1000) & 0xFFFFE000. NaN -> (bits & 0xFFFFE000) | 0x00400000: sign and top payload bits kept, quiet.
// On sm_80+ finite values and infinities go through cvt.rna.tf32.f32, whose 13 low result bits the PTX ISA leaves
// implementation-defined (the TF32 register layout is), so they are cleared; NaNs take the rule above in software,
// so the result is bit-identical to the simulator's wherever the hardware rounds as the PTX ISA defines .rna.
// On sm_75 (no cvt to .tf32) and in the simulator the same function is computed with integer operations.
// split_tf32: x - big is exact, so |big + small - x| <= 2^-22 |x| for 2^-115 <= |x| < 0x1.ffep127 (below, small
// may be subnormal, whose ulp is coarser; above, big is inf).
//
// mma_m16n8k8_tf32(float d[4], const u32 a[4], const u32 b[2], const float c[4]): PTX
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32. All 32 lanes of a warp must call it together, from the same
// source line, with converged control flow (a warp-wide .sync.aligned instruction); each lane passes its fragments
// of A (16x8, f32 bit patterns holding TF32 values, e.g. __float_as_uint(to_tf32(x))), B (8x8) and C (16x8, f32)
// and receives its fragment of D (16x8, f32). d may be c (accumulate in place).
// Numerics. The tensor cores use only the upper 19 bits (sign, exponent, 10 mantissa bits) of each A and B register
// (the 13 low bits are don't-care; PTX leaves the .tf32 register layout implementation-defined), and the simulator
// does the same: it clears the 13 low bits (truncation, not rounding; round with to_tf32 first). It then computes,
// for every (m, n), d = c; for k = 0, 1, ..., 7: d = fmaf(A[m][k], B[k][n], d), i.e. each product exact and each
// addition rounded to f32 (round to nearest even), IEEE inf/NaN rules, subnormals kept. The GPU's accumulation
// order, internal precision, rounding and handling of subnormals are not specified by NVIDIA, so GPU results may
// differ from the simulator's in the last bits (and NaN payloads may differ): compare them with a tolerance.
//
// Fragment layouts of mma.m16n8k8 with .tf32 A/B and .f32 C/D (PTX ISA 9.7.14.5.7 "Matrix Fragments for
// mma.m16n8k8"), for lane = %laneid, g = lane >> 2 (groupID), t = lane % 4 (threadID_in_group); (row, col):
//   A [16 x 8] (m, k):  a0 (g, t)   a1 (g + 8, t)   a2 (g, t + 4)   a3 (g + 8, t + 4)
//   B [ 8 x 8] (k, n):  b0 (t, g)   b1 (t + 4, g)
//   C, D [16 x 8] (m, n):  c0 (g, 2t)   c1 (g, 2t + 1)   c2 (g + 8, 2t)   c3 (g + 8, 2t + 1)
// kernels/sim/selftest.cpp pins these lane by lane against its own copy of the table.
//
// How to call (a warp, converged; A_s [16][8] and B_s [8][8] tiles in shared memory, acc zeroed once):
//   #if AIEC_MMA_TF32
//   using namespace aiec_mma;
//   const int lane = threadIdx.x & 31;
//   u32 a[4], b[2];
//   for (int i = 0; i < 4; ++i) a[i] = __float_as_uint(to_tf32(A_s[a_row(lane, i)][a_col(lane, i)]));
//   for (int i = 0; i < 2; ++i) b[i] = __float_as_uint(to_tf32(B_s[b_row(lane, i)][b_col(lane, i)]));
//   mma_m16n8k8_tf32(acc, a, b, acc);  // acc[i] is element (c_row(lane, i), c_col(lane, i)) of the tile
//   #endif
//
// Simulator: one call is one cuda_sim::warp_collective (kernels/sim/cuda_sim.h): every lane deposits its 10 words,
// the last lane to arrive computes the whole D, every lane takes its 4 values; a fiber switch per lane and call.
// Misuse is reported as a launch error: a warp of fewer than 32 threads, lanes that never arrive (exited or
// waiting elsewhere: deadlock report), lanes that call it from different source lines or meet another warp op.
#pragma once

#ifndef AIEC_EXPORT
#error "include common.cuh before mma.cuh"
#endif

#if !defined(AIEC_CUDA) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define AIEC_MMA_TF32 1
#else
#define AIEC_MMA_TF32 0
#endif

namespace aiec_mma {
using aiec::u32;
using aiec::u64;

// ---------------------------------------------------------------- TF32 rounding and the 3xTF32 split
__device__ __forceinline__ float to_tf32(float x) {
  const u32 u = __float_as_uint(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return __uint_as_float((u & 0xFFFFE000u) | 0x00400000u);  // NaN
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  u32 r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return __uint_as_float(r & 0xFFFFE000u);  // the low 13 bits of a .tf32 register are implementation-defined
#else
  // finite: adding half an ulp to the magnitude bits rounds ties away from zero; a carry may reach inf
  return __uint_as_float((u & 0x7F800000u) == 0x7F800000u ? u : (u + 0x1000u) & 0xFFFFE000u);
#endif
}

__device__ __forceinline__ void split_tf32(float x, float& big, float& small) {
  big = to_tf32(x);
  small = to_tf32(x - big);
}

// ---------------------------------------------------------------- fragment layouts (table in the file comment)
// Element i of lane `lane`'s fragment of A is A[a_row][a_col]; of B, B[b_row][b_col]; of C and D, C[c_row][c_col].
__device__ __forceinline__ constexpr int a_row(int lane, int i) { return (lane >> 2) + 8 * (i & 1); }
__device__ __forceinline__ constexpr int a_col(int lane, int i) { return (lane & 3) + 4 * (i >> 1); }
__device__ __forceinline__ constexpr int b_row(int lane, int i) { return (lane & 3) + 4 * i; }
__device__ __forceinline__ constexpr int b_col(int lane, int) { return lane >> 2; }
__device__ __forceinline__ constexpr int c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
__device__ __forceinline__ constexpr int c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

// ---------------------------------------------------------------- mma.sync m16n8k8 TF32
#if defined(AIEC_CUDA) && AIEC_MMA_TF32
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}
#elif !defined(AIEC_CUDA)
namespace detail {
// The whole warp's mma (a cuda_sim::WarpFn). Lane l's words: in[l].w[0..3] = a0..a3, w[4..5] = b0, b1,
// w[6..9] = c0..c3 (f32 bits); out[l].w[0..3] = d0..d3.
inline void mma_m16n8k8_tf32_warp(const ::cuda_sim::LaneWords* in, ::cuda_sim::LaneWords* out) {
  float A[16][8], B[8][8], D[16][8];
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 4; ++i) A[a_row(l, i)][a_col(l, i)] = __uint_as_float(in[l].w[i] & 0xFFFFE000u);
    for (int i = 0; i < 2; ++i) B[b_row(l, i)][b_col(l, i)] = __uint_as_float(in[l].w[4 + i] & 0xFFFFE000u);
    for (int i = 0; i < 4; ++i) D[c_row(l, i)][c_col(l, i)] = __uint_as_float(in[l].w[6 + i]);
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      float acc = D[m][n];
      for (int k = 0; k < 8; ++k) acc = fmaf(A[m][k], B[k][n], acc);
      D[m][n] = acc;
    }
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) out[l].w[i] = __float_as_uint(D[c_row(l, i)][c_col(l, i)]);
}
}  // namespace detail

__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const u32 a[4], const u32 b[2], const float c[4],
                                                 int line = __builtin_LINE(), const char* file = __builtin_FILE()) {
  const u32 in[10] = {a[0], a[1], a[2], a[3], b[0], b[1], __float_as_uint(c[0]), __float_as_uint(c[1]),
                      __float_as_uint(c[2]), __float_as_uint(c[3])};
  u32 out[4];
  ::cuda_sim::warp_collective("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", &detail::mma_m16n8k8_tf32_warp,
                              in, 10, out, 4, line, file);
  for (int i = 0; i < 4; ++i) d[i] = __uint_as_float(out[i]);
}
#endif

// ---------------------------------------------------------------- a 16x8 tile of A B^T in 3xTF32
#if AIEC_MMA_TF32
// acc[i] += sum over k < kd of A[r][k] * B[n][k], for the tile element (r, n) = (c_row(lane, i), c_col(lane, i)).
// A: f32 rows of the tile, row r at A + r * lda (r < rows_a; rows >= rows_a read as 0); B: f32, row n at
// B + n * ldb (n < rows_b; others 0); both read for k < kd only. Called by all 32 lanes of a warp (lane =
// threadIdx.x & 31), with the same arguments. Per 8-wide k step, each operand is split (split_tf32) and three
// mma.sync add A_small B_big, A_big B_small, then A_big B_big to acc (A_small B_small, ~2^-22 relative, is
// dropped): about f32 accuracy, each element being a sum of 3 ceil(kd / 8) rounded additions. Plain global loads
// (4 + 2 per lane and k step, not coalesced): a reference for tiled GEMMs to build on, not a fast kernel.
__device__ __forceinline__ void mma_tile_abt_3xtf32(float acc[4], const float* A, u64 lda, int rows_a,
                                                    const float* B, u64 ldb, int rows_b, int kd, int lane) {
  for (int k0 = 0; k0 < kd; k0 += 8) {
    u32 a_big[4], a_small[4], b_big[2], b_small[2];
    for (int i = 0; i < 4; ++i) {
      const int r = a_row(lane, i), k = k0 + a_col(lane, i);
      float big, small;
      split_tf32(r < rows_a && k < kd ? A[(u64)r * lda + k] : 0.0f, big, small);
      a_big[i] = __float_as_uint(big);
      a_small[i] = __float_as_uint(small);
    }
    for (int i = 0; i < 2; ++i) {
      const int n = b_col(lane, i), k = k0 + b_row(lane, i);
      float big, small;
      split_tf32(n < rows_b && k < kd ? B[(u64)n * ldb + k] : 0.0f, big, small);
      b_big[i] = __float_as_uint(big);
      b_small[i] = __float_as_uint(small);
    }
    mma_m16n8k8_tf32(acc, a_small, b_big, acc);
    mma_m16n8k8_tf32(acc, a_big, b_small, acc);
    mma_m16n8k8_tf32(acc, a_big, b_big, acc);
  }
}
#endif
}  // namespace aiec_mma
