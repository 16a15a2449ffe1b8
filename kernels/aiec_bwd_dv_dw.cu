/* aiec_bwd_dv_dw.cu - the decision and gate part of an AIEC backward (docs/SPEC.md "Backward", first three rules):
 * dv and dW in one launch, as two register-tiled GEMMs (kernels/aiec_gemm.cuh). dlogits = a_b * g is formed on the
 * fly while the tiles are staged, never in global memory.
 *
 *   aiec_bwd_dv_dw(v, w, g, mask, losses, row_scale, dv, dw, s)          f32 SIMT products (every arch)
 *   aiec_bwd_dv_dw_tf32x3(v, w, g, mask, losses, row_scale, dv, dw, s)   3xTF32 tensor cores, about f32 accuracy
 *   aiec_bwd_dv_dw_tf32(v, w, g, mask, losses, row_scale, dv, dw, s)     plain TF32 (opt-in, ~1e-3; for speed only)
 *   aiec_bwd_dv_dw_tf32x3_m128, aiec_bwd_dv_dw_tf32_m128 (same arguments)  the same with 128-row tiles (and 128
 *                                                                         columns on plain TF32)
 *   aiec_bwd_sum_slices(dv, dw, s)                                        after a launch with split sums
 * The tensor-core entry points exist where AIEC_MMA_TF32 is 1 (sm_80 and later, the simulator), not on sm_75.
 *
 * v, dv: f32 [B, C]; w, dw: f32 [K, C]; g: f32 [B, K] (aiec_fwd_softmax's softmax - onehot); mask: u8 [B, C];
 * losses: the AiecLosses of aiec_loss (only aux_scale and gate_scale are read); row_scale: f32 [B] or null.
 * With a = row_scale ? row_scale[b] : aux_scale (the gradient of the loss with respect to row b's cross-entropy):
 *   dv[b,c] = sum_k (a_b * g[b,k]) * w[k,c], then + gate_scale * v[b,c] where mask[b,c] != 0;
 *   dw[k,c] = sum_b (a_b * g[b,k]) * v[b,c]   (all zeros when B == 0: still launch then);
 *   with s.flags & AIEC_FLAG_ACCUMULATE_DW, dw[k,c] += that sum instead (the buffer's old value plus the sum).
 * Sums in a fixed order (aiec_gemm.cuh: the SIMT path over k (resp. b) in increasing order with fmaf; the
 * tensor-core paths per 16 k, with 64-row tiles two halves of each 32 k added at the end): deterministic, no atomics. On the
 * tensor-core paths the scale of a row of dv is applied to its sum (a_b times the sum of g w) and a uniform scale
 * of dW likewise, while per-sample scales of dW (row_scale) multiply v's values as they are read (dW = sum_b g[b,k]
 * (a_b v[b,c]): one rounding like the SIMT path's a_b g[b,k], on the other factor; v has half as many values per
 * lane in the tile loop). Writes only dv and dw.
 * Split sums for dv (s.flags: AIEC_FLAG_DV_SLICES_SHIFT, nsl slices; the plans split where dv's tiles are few and
 * their sums over K long, as at B = 128, K = 1000): dv is then f32 [nsl, B, C], and the dv tiles are nsl times as
 * many, tile (z, i) summing the classes [z P, z P + P) (P = ceil(K / (32 nsl)) * 32) into slice z (with the gate term
 * where z == 0). Split sums for dW (AIEC_FLAG_DW_SLICES_SHIFT, nsw slices; where dW's tiles are few and their sums
 * over B long, as at B = 256, K = 100): the dW tiles are nsw times as many, tile (z, i') summing the samples [z Q,
 * z Q + Q) (Q = ceil(B / (32 nsw)) * 32, row_scale's too) into dw for z == 0 (written, or added with
 * ACCUMULATE_DW) and into dws + (z - 1) K C for z > 0, where dws = dv + nsl B C (the scratch after dv's slices:
 * dv then holds nsl B C + (nsw - 1) K C values). aiec_bwd_sum_slices(dv, dw, s) (block 256, any grid) then adds
 * dv's slices in the order 0, 1, ... into dv's first B C values and dW's in the order 1, 2, ... onto dw:
 * deterministic, no atomics; the sums differ from the unsplit ones in the last bits.
 * Geometry: block = 128 threads (MUST be), no dynamic shared memory (18 KiB static for SIMT, 36 KiB for the
 * 64-row tensor-core tiles, 39 KiB for the 128 x 64 ones, 34 KiB for the 128 x 128 one); R = 128 rows per tile for
 * the _m128 entry points, else 64; N = 128 columns for aiec_bwd_dv_dw_tf32_m128, else 64; CT = ceil(C / N);
 * grid = (nsl ceil(B / R) + nsw ceil(K / R)) * CT (any grid is correct: block i takes the tiles i, i + gridDim.x,
 * ...). Tile i < nsl ceil(B/R)*CT is slice z = i / (ceil(B/R)*CT) of the dv tile i" = i % (ceil(B/R)*CT),
 * [R (i" / CT), +R) x [N (i" % CT), +N) (A = dlogits [B, K], MK; B = w as (c, k), KM); with j = i - nsl ceil(B/R)*CT,
 * tile i is slice z = j / (ceil(K/R)*CT) of the dW tile i' = j % (ceil(K/R)*CT), [R (i' / CT), +R) x
 * [N (i' % CT), +N) (A = dlogits^T as (class, b), KM; B = v as (c, b), KM). The tensor-core
 * paths write each tile row by row from shared memory, 64 columns at a time (a warp's store covers 256 contiguous
 * bytes).
 */
#include "common.cuh"
#include "aiec_params.cuh"
#include "aiec_gemm.cuh"

// WM: the tensor-core paths' tile (aiec_gemm::tc::Geo): 64 (WM = 1) or 128 (WM = 2) rows; SIMT: 64, WM = 1.
template <int PATH, int WM = 1>
__device__ __forceinline__ void aiec_bwd_dv_dw_body(const float* __restrict__ v,            // [B, C]
                                                    const float* __restrict__ w,            // [K, C]
                                                    const float* __restrict__ g,            // [B, K]
                                                    const unsigned char* __restrict__ mask,  // [B, C]
                                                    const AiecLosses* __restrict__ losses,  // [1]
                                                    const float* __restrict__ row_scale,    // [B] or null
                                                    float* __restrict__ dv,                 // [B, C]
                                                    float* __restrict__ dw,                 // [K, C]
                                                    AiecShape s) {
  using namespace aiec_gemm;
  using aiec::u64;
  static_assert(PATH != SIMT || WM == 1, "the SIMT tile has 64 rows");
  constexpr int RT = BM * WM;                          // rows per tile (dv: samples; dW: classes)
  constexpr int WN = wn_of(PATH, WM), CW = BN * WN;  // columns per tile (channels)
  __shared__ __align__(16) float smem[Smem<PATH, WM>::FLOATS];
  const u64 B = s.batch, C = s.channels, K = s.classes;
  // The tile counts (CT column tiles; nbv dv tiles, then nbw dW tiles) live in shared memory, read where used:
  // registers held across the products would spill (the tensor-core paths use all 255).
  // geo[3]: dv tiles per slice of its sums over the classes (nsl slices: nbv = nsl geo[3]); geo[4]: dW tiles per
  // slice of its sums over the samples (nsw slices: nbw = nsw geo[4]).
  const u32 nsl = aiec_k::dv_slices(s), nsw = aiec_k::dw_slices(s);
  __shared__ u64 geo[5];
  if (threadIdx.x == 0) {
    geo[0] = (C + CW - 1) / CW;
    geo[3] = (B + RT - 1) / RT * geo[0];
    geo[4] = (K + RT - 1) / RT * geo[0];
    geo[1] = geo[3] * nsl;
    geo[2] = geo[1] + geo[4] * nsw;
  }
  __syncthreads();
  const float gate_scale = losses->gate_scale;
  const bool accumulate = (s.flags & AIEC_FLAG_ACCUMULATE_DW) != 0;
  float* const dws = dv + (u64)nsl * B * C;  // dW's slices 1 .. nsw - 1, K C values each, after dv's
  const bool pair = C % 2 == 0 && (aiec::addr(dv) & 7) == 0 && (aiec::addr(dw) & 7) == 0 && (aiec::addr(dws) & 7) == 0;
  // Slice z's dv[b, c], dv[b, c + 1] = (a0, a1) (each where inside), slice 0's plus the gate term where the mask is
  // set.
  auto dv_store = [&](u64 z, u64 b, u64 c, float a0, float a1) {
    if (b >= B || c >= C) return;
    const u64 i = b * C + c;
    if (z == 0 && mask[i]) a0 += gate_scale * v[i];
    if (z == 0 && c + 1 < C && mask[i + 1]) a1 += gate_scale * v[i + 1];
    aiec_gemm::put2(dv + z * B * C + b * C, c, C, pair, a0, a1);
  };
  // Slice z's dw[k, c], dw[k, c + 1] = (a0, a1): slice 0 into dw (+= with AIEC_FLAG_ACCUMULATE_DW), slice z > 0
  // into dws + (z - 1) K C.
  auto dw_store = [&](u64 z, u64 k, u64 c, float a0, float a1) {
    if (k >= K || c >= C) return;
    float* row = (z == 0 ? dw : dws + (z - 1) * K * C) + k * C;
    if (z == 0 && accumulate) {
      a0 = row[c] + a0;
      if (c + 1 < C) a1 = row[c + 1] + a1;
    }
    aiec_gemm::put2(row, c, C, pair, a0, a1);
  };
  for (u64 bt = blockIdx.x; bt < geo[2]; bt += gridDim.x) {  // block-uniform (one tile per block as planned)
    const bool is_dv = bt < geo[1];
    const u64 per_slice = is_dv ? geo[3] : geo[4], r = is_dv ? bt : bt - geo[1];
    const u64 z = r / per_slice, tile_i = r % per_slice;  // the slice of the sums, the tile in it
    const u64 m0 = tile_i / geo[0] * RT, n0 = tile_i % geo[0] * CW;
    // Slice z of the sum's index (dv: the classes; dW: the samples), [kb, ke): a multiple of 32 apart from the last,
    // so that each slice's operands are 16-byte aligned where the whole ones are.
    const u64 len = is_dv ? K : B, ns = is_dv ? nsl : nsw;
    const u64 per = (len + 32 * ns - 1) / (32 * ns) * 32;
    const u64 kb = aiec_k::min64(len, z * per), ke = aiec_k::min64(len, kb + per);
    // dv = dlogits W: A (b, class) = g[b * K + class] (MK), scaled by row b; B (c, class) = w[class * C + c] (KM).
    // dW = dlogits^T v: A (class, b) = g[b * K + class] (KM), scaled by column b; B (c, b) = v[b * C + c] (KM).
    Operand A = is_dv ? operand(g + kb, K, B, ke - kb, false) : operand(g + kb * K, K, K, ke - kb, true);
    const Operand Bop = is_dv ? operand(w + kb * C, C, C, ke - kb, true) : operand(v + kb * C, C, C, ke - kb, true);
    const float* const sample_scale = row_scale && !is_dv ? row_scale + kb : row_scale;  // dW: column b's of slice z
    Acc acc;
    __syncthreads();  // the previous tile's stages (and output staging) are consumed
    if constexpr (PATH == SIMT) {
      A.scale_by = is_dv ? 1 : 2;
      A.scale = sample_scale;
      A.scale_all = losses->aux_scale;
      tile_simt(A, Bop, m0, n0, smem, acc);  // the SIMT path reads the layouts at run time
      for_each<PATH>(acc, [&](int m, int n, float a0, float a1) {
        if (is_dv)
          dv_store(z, m0 + (u64)m, n0 + (u64)n, a0, a1);
        else
          dw_store(z, m0 + (u64)m, n0 + (u64)n, a0, a1);
      });
    } else {
#if AIEC_MMA_TF32
      // The scale of a row of dv is the output row's: applied in the epilogue (a_b times the sum of g w). dW's
      // per-sample scales vary along the sum: applied to v's fragments (tc::tile's SK); a uniform one in the
      // epilogue.
      constexpr int OT = BN + 4;  // row stride of the output tile
      float* ot = smem;           // the output tile [RT][OT] (its columns 64 h..), once the stages are consumed
      // Half h of the tile (64 columns) row by row from shared memory (tc::tile's barriers around it): each warp
      // writes 2 rows of 64 floats per step (coalesced).
      auto epi = [&](int h) {
        const u64 c0 = n0 + 64 * (u64)h;
        if (c0 >= C) return;  // block-uniform: the second half of a 128-column tile past C
        for (int q = (int)threadIdx.x; q < RT * BN / 2; q += THREADS) {
          const int m = q / (BN / 2), n = 2 * (q % (BN / 2));
          if (is_dv) {
            const u64 b = m0 + (u64)m;
            const float a_b = row_scale ? (b < B ? row_scale[b] : 0.0f) : losses->aux_scale;
            dv_store(z, b, c0 + (u64)n, a_b * ot[m * OT + n], a_b * ot[m * OT + n + 1]);
          } else {
            const float sc = row_scale ? 1.0f : losses->aux_scale;  // per-sample scales were applied to the products
            dw_store(z, m0 + (u64)m, c0 + (u64)n, sc * ot[m * OT + n], sc * ot[m * OT + n + 1]);
          }
        }
      };
      if (is_dv) {
        tc::tile<PATH, false, true, false, OT, WM>(A, Bop, m0, n0, smem, ot, epi);
      } else if (row_scale) {
        A.scale = sample_scale;
        tc::tile<PATH, true, true, true, OT, WM>(A, Bop, m0, n0, smem, ot, epi);
      } else {
        tc::tile<PATH, true, true, false, OT, WM>(A, Bop, m0, n0, smem, ot, epi);
      }
      epi(WN - 1);  // the last half (the whole tile for WN = 1)
#endif
    }
  }
}

// to[i] = to[i] + from[i] + from[n + i] + ... (ns terms after to's own, in that order) for i < n: one pass over the
// slices, 4 values a thread at a time where n % 4 == 0 and both are 16-byte aligned. Grid-stride from thread t.
__device__ __forceinline__ void aiec_add_slices(float* __restrict__ to, const float* __restrict__ from, aiec::u64 n,
                                                aiec::u32 ns, aiec::u64 t, aiec::u64 stride) {
  using aiec::u64;
  if (n % 4 == 0 && ((aiec::addr(to) | aiec::addr(from)) & 15) == 0) {
    float4* d = reinterpret_cast<float4*>(to);
    const float4* f = reinterpret_cast<const float4*>(from);
    const u64 n4 = n / 4;
    for (u64 i = t; i < n4; i += stride) {
      float4 a = d[i];
      for (aiec::u32 z = 0; z < ns; ++z) {
        const float4 b = f[z * n4 + i];
        a.x += b.x;
        a.y += b.y;
        a.z += b.z;
        a.w += b.w;
      }
      d[i] = a;
    }
  } else {
    for (u64 i = t; i < n; i += stride) {
      float a = to[i];
      for (aiec::u32 z = 0; z < ns; ++z) a += from[z * n + i];
      to[i] = a;
    }
  }
}

// After an aiec_bwd_dv_dw with split sums (s.flags: AIEC_FLAG_DV_SLICES_SHIFT, AIEC_FLAG_DW_SLICES_SHIFT): dv[i] =
// slice 0 + slice 1 + ... (in that order) for i < B C, where dv's sums split (dv holds the slices, B C values each),
// and dw[i] = dw[i] + dW slice 1 + dW slice 2 + ... for i < K C, where dW's do (the slices 1 .. after dv's in the
// scratch, K C values each). Grid-stride: any grid and block.
__device__ __forceinline__ void aiec_bwd_sum_slices_body(float* __restrict__ dv, float* __restrict__ dw, AiecShape s) {
  using aiec::u64;
  const u64 stride = (u64)gridDim.x * blockDim.x, t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  const aiec::u32 nsl = aiec_k::dv_slices(s), nsw = aiec_k::dw_slices(s);
  const u64 bc = s.batch * s.channels;
  if (nsl > 1) aiec_add_slices(dv, dv + bc, bc, nsl - 1, t, stride);
  if (nsw > 1) aiec_add_slices(dw, dv + nsl * bc, s.classes * s.channels, nsw - 1, t, stride);
}

#define AIEC_BWD_DV_DW_PARAMS                                                                        \
  (const float* __restrict__ v, const float* __restrict__ w, const float* __restrict__ g,            \
   const unsigned char* __restrict__ mask, const AiecLosses* __restrict__ losses,                   \
   const float* __restrict__ row_scale, float* __restrict__ dv, float* __restrict__ dw, AiecShape s)
#define AIEC_BWD_DV_DW_ARGS (v, w, g, mask, losses, row_scale, dv, dw, s)
// The 128-row tile of the tensor-core paths, under a name with one template argument (a macro argument).
template <int PATH>
__device__ __forceinline__ void aiec_bwd_dv_dw_m128 AIEC_BWD_DV_DW_PARAMS {
  aiec_bwd_dv_dw_body<PATH, 2> AIEC_BWD_DV_DW_ARGS;
}
AIEC_EXPORT_NAMED(aiec_bwd_dv_dw, __launch_bounds__(AIEC_LB_GEMM), aiec_bwd_dv_dw_body<aiec_gemm::SIMT>,
                  AIEC_BWD_DV_DW_PARAMS, AIEC_BWD_DV_DW_ARGS)
#if AIEC_MMA_TF32
AIEC_EXPORT_NAMED(aiec_bwd_dv_dw_tf32x3, __launch_bounds__(AIEC_LB_GEMM_TC), aiec_bwd_dv_dw_body<aiec_gemm::TF32X3>,
                  AIEC_BWD_DV_DW_PARAMS, AIEC_BWD_DV_DW_ARGS)
AIEC_EXPORT_NAMED(aiec_bwd_dv_dw_tf32, __launch_bounds__(AIEC_LB_GEMM_TC), aiec_bwd_dv_dw_body<aiec_gemm::TF32>,
                  AIEC_BWD_DV_DW_PARAMS, AIEC_BWD_DV_DW_ARGS)
AIEC_EXPORT_NAMED(aiec_bwd_dv_dw_tf32x3_m128, __launch_bounds__(AIEC_LB_GEMM_TC), aiec_bwd_dv_dw_m128<aiec_gemm::TF32X3>,
                  AIEC_BWD_DV_DW_PARAMS, AIEC_BWD_DV_DW_ARGS)
AIEC_EXPORT_NAMED(aiec_bwd_dv_dw_tf32_m128, __launch_bounds__(AIEC_LB_GEMM_TC), aiec_bwd_dv_dw_m128<aiec_gemm::TF32>,
                  AIEC_BWD_DV_DW_PARAMS, AIEC_BWD_DV_DW_ARGS)
#endif
AIEC_EXPORT_NAMED(aiec_bwd_sum_slices, __launch_bounds__(256), aiec_bwd_sum_slices_body,
                  (float* __restrict__ dv, float* __restrict__ dw, AiecShape s), (dv, dw, s))
