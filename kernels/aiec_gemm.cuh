// kernels/aiec_gemm.cuh - the register-tiled GEMM core of the decision projection (aiec_fwd_logits.cu, the logits
// v W^T; aiec_bwd_dv_dw.cu, dv = dlogits W and dW = dlogits^T v), on the tensor cores (3xTF32, or plain TF32 when
// asked for) or on the f32 SIMT units. Include it after common.cuh and aiec_params.cuh; NVRTC gets it in memory by
// this name, like every kernels/*.cuh.
//
// One block computes one BM x BN = 64 x 64 tile of C = A B (C[m][n] = sum over k of A[m][k] B[k][n]) with the whole
// reduction, in BK = 16 steps of k, with 128 threads (4 warps). Nothing is atomic and nothing is split over blocks:
// every output element is one thread's sum in a fixed order, whatever the grid (deterministic).
//
// Operands in global memory (Operand): element (i, k) of a matrix with `extent` rows i (m for A, n for B) and kdim
// columns k, either "MK" (k contiguous: p[i * ld + k]) or "KM" (i contiguous: p[k * ld + i]); elements past either
// bound read as 0. Optionally each element is multiplied by a scale of its row i or its column k (the dlogits: a_b g).
// float4 loads where the matrix allows them (Operand::vec: p 16-byte aligned, ld % 4 == 0), else 4-byte loads.
//
// Shared memory: both operands as [BK][BM + 8] tiles, k-major ([k][i], row stride LD = 72 floats, LD = 8 mod 32), two
// stages (the next k step is stored while this one is consumed: one barrier per step, the global loads of the next
// step in flight during the products of this one). Staging, bank by bank (32 banks of 4 bytes):
// * KM operands: thread t loads the float4 at (k, i) = (t / 16 + 8 h, 4 (t % 16)) (16 lanes read 256 contiguous
//   bytes) and stores it as one float4: 8 lanes of a quarter warp cover 128 contiguous bytes of one row: no conflict;
// * MK operands: thread t loads the float4 at (i, k) = (t % 64, 4 (t / 64 + 2 h)) (32 rows per warp instruction) and
//   stores its 4 values transposed, T[k + j][i]: for each j the warp's 32 lanes write 32 consecutive i of one row k:
//   banks (8 (k + j) + i) mod 32, all different: no conflict.
// Products:
// * TF32X3 (sm_80+, AIEC_MMA_TF32): warp w owns the 32 x 32 sub-tile at (32 (w % 2), 32 (w / 2)): 2 x 4 tiles of
//   mma.m16n8k8 per 8-wide k step (kernels/mma.cuh). Every operand is split when staged, x = big + small with big =
//   to_tf32(x) and small = to_tf32(x - big), into two smem arrays; per 16x8 tile and 8-wide k step, t = A_small
//   B_big + A_big B_small (two mma.sync into a zeroed t), then d = d + A_big B_big (one mma.sync), then d += t:
//   the running sum is rounded as often as the f32 path's plus once per k step (one accumulator for all three
//   products would round it three times as often, which measurably costs accuracy where sums cancel);
//   A_small B_small, about 2^-22 of the product, is dropped: about f32 accuracy (BENCHMARKS.md measures it against
//   f64). Fragment loads are conflict free: A element (g, t) of lane 4g + t at T[k0 + t][i0 + g], bank 8 t + g
//   (and B likewise).
//   Non-finite values: big keeps an inf or NaN and small is 0; a finite x whose big would round to inf keeps the
//   truncated big instead. A k step whose tiles hold an inf or NaN (one __syncthreads_or) uses 0 for such bigs in
//   the two correction products, so that 0 * inf in a correction term does not turn an inf result into NaN:
//   the result is then A_big B_big's, inf or NaN as f32 arithmetic would give (up to weights below 2^-136 in
//   magnitude, which TF32 rounding may take to 0).
// * TF32 (opt-in, like torch.backends.cuda.matmul.allow_tf32): A_big B_big alone, operands rounded to TF32 (10
//   mantissa bits): about 1e-3 relative, for speed only. Never the default.
// * SIMT (every arch, the reference path): thread t owns rows 4 (t / 8) + 0..3 and columns 4 (t % 8) + 0..3 and
//   32 + 4 (t % 8) + 0..3 (two float4 reads of B and one of A per k from shared memory, 32 fmaf).
// Every sum runs over k in increasing order (in TF32X3 per 8-wide k step as above, each product an mma.sync), with
// fmaf, so the SIMT path gives the same bits on the GPU and in the simulator; the mma.sync path may
// differ from the simulator's documented emulation in the last bits (mma.cuh).
#pragma once

#ifndef AIEC_EXPORT
#error "include common.cuh and aiec_params.cuh before aiec_gemm.cuh"
#endif
#include "mma.cuh"

// __launch_bounds__ of the GEMM kernels: 128 threads, at least 3 blocks (12 warps) per SM, so at most 170
// registers (the 3xTF32 path needs about 150; without a minimum, ptxas aimed at 128 and spilled).
#define AIEC_LB_GEMM 128, 3

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

// Shared memory of one block: two stages of A and B tiles (big; and small for TF32X3), as floats.
template <int PATH> struct Smem {
  static constexpr int ARRAYS = PATH == TF32X3 ? 4 : 2;  // A big, B big (, A small, B small)
  static constexpr int FLOATS = 2 * ARRAYS * TILE;
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
  o.vec = ld % 4 == 0 && (aiec::addr(p) & 15) == 0;
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

__device__ __forceinline__ bool finite_bits(u32 u) { return (u & 0x7F800000u) != 0x7F800000u; }

// x = big + small for the 3xTF32 products (see the file comment for non-finite values).
__device__ __forceinline__ void split(float x, float& big, float& small) {
  const u32 u = __float_as_uint(x);
  if (!finite_bits(u)) {
    big = x;
    small = 0.0f;
    return;
  }
  big = aiec_mma::to_tf32(x);
  if (!finite_bits(__float_as_uint(big))) big = __uint_as_float(u & 0xFFFFE000u);  // would round to inf
  small = aiec_mma::to_tf32(x - big);
}

// Stores the staged values r of operand o into the stage's tiles (big, small), splitting or rounding per PATH;
// returns whether any value is not finite.
template <int PATH>
__device__ __forceinline__ bool store_tile(const Operand& o, const float r[2][4], float* big, float* small) {
  const int t = (int)threadIdx.x;
  bool nonfinite = false;
  AIEC_UNROLL
  for (int h = 0; h < 2; ++h) {
    float b[4], s[4];
    AIEC_UNROLL
    for (int j = 0; j < 4; ++j) {
      nonfinite |= !finite_bits(__float_as_uint(r[h][j]));
      if constexpr (PATH == TF32X3) {
        split(r[h][j], b[j], s[j]);
      } else if constexpr (PATH == TF32) {
        b[j] = aiec_mma::to_tf32(r[h][j]);
        s[j] = 0.0f;
      } else {
        b[j] = r[h][j];
        s[j] = 0.0f;
      }
    }
    if (o.km) {
      const int off = (t / 16 + 8 * h) * LD + 4 * (t % 16);
      sts4(big + off, b[0], b[1], b[2], b[3]);
      if constexpr (PATH == TF32X3) sts4(small + off, s[0], s[1], s[2], s[3]);
    } else {
      const int i = t % 64, k = 4 * (t / 64 + 2 * h);
      AIEC_UNROLL
      for (int j = 0; j < 4; ++j) {
        big[(k + j) * LD + i] = b[j];
        if constexpr (PATH == TF32X3) small[(k + j) * LD + i] = s[j];
      }
    }
  }
  return nonfinite;
}

// The accumulators of one thread: 32 floats, whose tile coordinates for_each() gives.
struct Acc {
  float v[32];
};

#if AIEC_MMA_TF32
// One 8-wide k step of the mma paths on the stage's tiles (k rows kk .. kk + 7). NF: the step holds an inf or NaN.
template <int PATH, bool NF>
__device__ __forceinline__ void mma_step(Acc& acc, const float* Ab, const float* As, const float* Bb, const float* Bs,
                                         int kk) {
  using namespace aiec_mma;
  const int lane = (int)(threadIdx.x & 31), warp = (int)(threadIdx.x >> 5);
  const int wm = 32 * (warp % 2), wn = 32 * (warp / 2);
  u32 ab[2][4], as[2][4] = {};
  AIEC_UNROLL
  for (int mi = 0; mi < 2; ++mi)
    AIEC_UNROLL
    for (int q = 0; q < 4; ++q) {
      const int off = (kk + a_col(lane, q)) * LD + wm + 16 * mi + a_row(lane, q);
      ab[mi][q] = __float_as_uint(Ab[off]);
      if constexpr (PATH == TF32X3) as[mi][q] = __float_as_uint(As[off]);
    }
  AIEC_UNROLL
  for (int nj = 0; nj < 4; ++nj) {  // B's fragments one n8 tile at a time (registers)
    u32 bb[2], bs[2] = {};
    AIEC_UNROLL
    for (int q = 0; q < 2; ++q) {
      const int off = (kk + b_row(lane, q)) * LD + wn + 8 * nj + b_col(lane, q);
      bb[q] = __float_as_uint(Bb[off]);
      if constexpr (PATH == TF32X3) bs[q] = __float_as_uint(Bs[off]);
    }
    AIEC_UNROLL
    for (int mi = 0; mi < 2; ++mi) {
      float* d = acc.v + 4 * (4 * mi + nj);
      if constexpr (PATH == TF32X3) {
        u32 bc[2], ac[4];  // the bigs of the correction products: non-finite ones as 0 (NF only)
        AIEC_UNROLL
        for (int q = 0; q < 2; ++q) bc[q] = NF && !finite_bits(bb[q]) ? 0u : bb[q];
        AIEC_UNROLL
        for (int q = 0; q < 4; ++q) ac[q] = NF && !finite_bits(ab[mi][q]) ? 0u : ab[mi][q];
        // The two correction products into a fresh accumulator t, then t added once: the running sum d takes 8
        // roundings per 8 k (those of A_big B_big, as the f32 path) and one more, not 24.
        float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_m16n8k8_tf32(t, as[mi], bc, t);
        mma_m16n8k8_tf32(t, ac, bs, t);
        mma_m16n8k8_tf32(d, ab[mi], bb, d);
        AIEC_UNROLL
        for (int q = 0; q < 4; ++q) d[q] += t[q];
      } else {
        mma_m16n8k8_tf32(d, ab[mi], bb, d);
      }
    }
  }
}
#endif

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

// acc = the tile at (m0, n0) of A B, A: operand a (extent M, kdim K), B: operand b (extent N, kdim K).
// All 128 threads of the block call it (barriers); smem: Smem<PATH>::FLOATS floats, 16-byte aligned.
template <int PATH>
__device__ __forceinline__ void tile(const Operand& a, const Operand& b, u64 m0, u64 n0, float* smem, Acc& acc) {
  AIEC_UNROLL
  for (int i = 0; i < 32; ++i) acc.v[i] = 0.0f;
  constexpr int ARR = Smem<PATH>::ARRAYS;
  // stage s: A big, B big at smem + (s * ARR + 0 / 1) * TILE; A small, B small at + 2 / 3 (TF32X3)
  auto arr = [&](int stage, int which) { return smem + (stage * ARR + which) * TILE; };
  const u64 K = a.kdim, steps = (K + BK - 1) / BK;
  float ra[2][4], rb[2][4];
  bool nf = false;
  if (steps) {
    load_tile(a, m0, 0, ra);
    load_tile(b, n0, 0, rb);
    bool f = store_tile<PATH>(a, ra, arr(0, 0), PATH == TF32X3 ? arr(0, 2) : nullptr);
    f |= store_tile<PATH>(b, rb, arr(0, 1), PATH == TF32X3 ? arr(0, 3) : nullptr);
    nf = __syncthreads_or(f);
  }
  for (u64 s = 0; s < steps; ++s) {  // block-uniform
    const int cur = (int)(s & 1);
    const bool more = s + 1 < steps;
    if (more) {  // the next step's global loads, in flight during this step's products
      load_tile(a, m0, (s + 1) * BK, ra);
      load_tile(b, n0, (s + 1) * BK, rb);
    }
    if constexpr (PATH == SIMT) {
      simt_step(acc, arr(cur, 0), arr(cur, 1));
    } else {
#if AIEC_MMA_TF32
      AIEC_UNROLL_BY(1)  // one 8-wide k step's fragments live at a time (registers)
      for (int kk = 0; kk < BK; kk += 8) {
        if (PATH == TF32X3 && nf)
          mma_step<PATH, true>(acc, arr(cur, 0), arr(cur, 2), arr(cur, 1), arr(cur, 3), kk);
        else
          mma_step<PATH, false>(acc, arr(cur, 0), PATH == TF32X3 ? arr(cur, 2) : nullptr, arr(cur, 1),
                                PATH == TF32X3 ? arr(cur, 3) : nullptr, kk);
      }
#endif
    }
    bool f = false;
    if (more) {
      f = store_tile<PATH>(a, ra, arr(cur ^ 1, 0), PATH == TF32X3 ? arr(cur ^ 1, 2) : nullptr);
      f |= store_tile<PATH>(b, rb, arr(cur ^ 1, 1), PATH == TF32X3 ? arr(cur ^ 1, 3) : nullptr);
    }
    nf = __syncthreads_or(f);  // the next stage is stored; this one is consumed (it is written two steps on)
  }
}

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
