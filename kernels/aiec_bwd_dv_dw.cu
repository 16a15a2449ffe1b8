/* aiec_bwd_dv_dw.cu - the decision and gate part of an AIEC backward (docs/SPEC.md "Backward", first three rules):
 * dv and dW in one launch, as two register-tiled GEMMs (kernels/aiec_gemm.cuh). dlogits = a_b * g is formed on the
 * fly while the tiles are staged, never in global memory.
 *
 *   aiec_bwd_dv_dw(v, w, g, mask, losses, row_scale, dv, dw, s)          f32 SIMT products (every arch)
 *   aiec_bwd_dv_dw_tf32x3(v, w, g, mask, losses, row_scale, dv, dw, s)   3xTF32 tensor cores, about f32 accuracy
 *   aiec_bwd_dv_dw_tf32(v, w, g, mask, losses, row_scale, dv, dw, s)     plain TF32 (opt-in, ~1e-3; for speed only)
 *   aiec_bwd_dv_dw_tf32x3_m128, aiec_bwd_dv_dw_tf32_m128 (same arguments)  the same with 128-row tiles (and 128
 *                                                                         columns on plain TF32)
 *   aiec_bwd_dv_sum(dv, s)                                                after a launch with split sums for dv
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
 * where z == 0). aiec_bwd_dv_sum(dv, s) (block 256, any grid) then adds the slices in the order 0, 1, ... into dv's
 * first B C values: deterministic, no atomics; the sums differ from the unsplit ones in the last bits.
 * Geometry: block = 128 threads (MUST be), no dynamic shared memory (18 KiB static for SIMT, 36 KiB for the
 * 64-row tensor-core tiles, 39 KiB for the 128 x 64 ones, 34 KiB for the 128 x 128 one); R = 128 rows per tile for
 * the _m128 entry points, else 64; N = 128 columns for aiec_bwd_dv_dw_tf32_m128, else 64; CT = ceil(C / N);
 * grid = (nsl ceil(B / R) + ceil(K / R)) * CT (any grid is correct: block i takes the tiles i, i + gridDim.x, ...).
 * Tile i < nsl ceil(B/R)*CT is slice z = i / (ceil(B/R)*CT) of the dv tile i" = i % (ceil(B/R)*CT), [R (i" / CT), +R)
 * x [N (i" % CT), +N) (A = dlogits [B, K], MK; B = w as (c, k), KM); tile i' = i - nsl ceil(B/R)*CT the dW tile
 * [R (i' / CT), +R) x [N (i' % CT), +N) (A = dlogits^T as (class, b), KM; B = v as (c, b), KM). The tensor-core
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
  // geo[3]: dv tiles per slice of its sums over the classes (nsl slices: nbv = nsl geo[3]).
  const u32 nsl = aiec_k::dv_slices(s);
  __shared__ u64 geo[4];
  if (threadIdx.x == 0) {
    geo[0] = (C + CW - 1) / CW;
    geo[3] = (B + RT - 1) / RT * geo[0];
    geo[1] = geo[3] * nsl;
    geo[2] = geo[1] + (K + RT - 1) / RT * geo[0];
  }
  __syncthreads();
  const float gate_scale = losses->gate_scale;
  const bool accumulate = (s.flags & AIEC_FLAG_ACCUMULATE_DW) != 0;
  const bool pair = C % 2 == 0 && (aiec::addr(dv) & 7) == 0 && (aiec::addr(dw) & 7) == 0;
  // Slice z's dv[b, c], dv[b, c + 1] = (a0, a1) (each where inside), slice 0's plus the gate term where the mask is
  // set.
  auto dv_store = [&](u64 z, u64 b, u64 c, float a0, float a1) {
    if (b >= B || c >= C) return;
    const u64 i = b * C + c;
    if (z == 0 && mask[i]) a0 += gate_scale * v[i];
    if (z == 0 && c + 1 < C && mask[i + 1]) a1 += gate_scale * v[i + 1];
    aiec_gemm::put2(dv + z * B * C + b * C, c, C, pair, a0, a1);
  };
  // dw[k, c], dw[k, c + 1] = (a0, a1), or += with AIEC_FLAG_ACCUMULATE_DW.
  auto dw_store = [&](u64 k, u64 c, float a0, float a1) {
    if (k >= K || c >= C) return;
    float* row = dw + k * C;
    if (accumulate) {
      a0 = row[c] + a0;
      if (c + 1 < C) a1 = row[c + 1] + a1;
    }
    aiec_gemm::put2(row, c, C, pair, a0, a1);
  };
  for (u64 bt = blockIdx.x; bt < geo[2]; bt += gridDim.x) {  // block-uniform (one tile per block as planned)
    const bool is_dv = bt < geo[1];
    const u64 z = is_dv ? bt / geo[3] : 0;  // the slice of dv's sums (0 for dW)
    const u64 tile_i = is_dv ? bt % geo[3] : bt - geo[1];
    const u64 m0 = tile_i / geo[0] * RT, n0 = tile_i % geo[0] * CW;
    // Slice z of the classes, [kb, ke): a multiple of 32 classes apart from the last, so that each slice's operands
    // are 16-byte aligned where the whole ones are.
    const u64 per = (K + 32 * nsl - 1) / (32 * nsl) * 32;
    const u64 kb = aiec_k::min64(K, z * per), ke = aiec_k::min64(K, kb + per);
    // dv = dlogits W: A (b, class) = g[b * K + class] (MK), scaled by row b; B (c, class) = w[class * C + c] (KM).
    // dW = dlogits^T v: A (class, b) = g[b * K + class] (KM), scaled by column b; B (c, b) = v[b * C + c] (KM).
    Operand A = is_dv ? operand(g + kb, K, B, ke - kb, false) : operand(g, K, K, B, true);
    const Operand Bop = is_dv ? operand(w + kb * C, C, C, ke - kb, true) : operand(v, C, C, B, true);
    Acc acc;
    __syncthreads();  // the previous tile's stages (and output staging) are consumed
    if constexpr (PATH == SIMT) {
      A.scale_by = is_dv ? 1 : 2;
      A.scale = row_scale;
      A.scale_all = losses->aux_scale;
      tile_simt(A, Bop, m0, n0, smem, acc);  // the SIMT path reads the layouts at run time
      for_each<PATH>(acc, [&](int m, int n, float a0, float a1) {
        if (is_dv)
          dv_store(z, m0 + (u64)m, n0 + (u64)n, a0, a1);
        else
          dw_store(m0 + (u64)m, n0 + (u64)n, a0, a1);
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
            dw_store(m0 + (u64)m, c0 + (u64)n, sc * ot[m * OT + n], sc * ot[m * OT + n + 1]);
          }
        }
      };
      if (is_dv) {
        tc::tile<PATH, false, true, false, OT, WM>(A, Bop, m0, n0, smem, ot, epi);
      } else if (row_scale) {
        A.scale = row_scale;
        tc::tile<PATH, true, true, true, OT, WM>(A, Bop, m0, n0, smem, ot, epi);
      } else {
        tc::tile<PATH, true, true, false, OT, WM>(A, Bop, m0, n0, smem, ot, epi);
      }
      epi(WN - 1);  // the last half (the whole tile for WN = 1)
#endif
    }
  }
}

// dv[i] = slice 0 + slice 1 + ... (in that order) of dv's split sums (AIEC_FLAG_DV_SLICES_SHIFT: s.flags gives the
// slices, dv holds them, B C values each), for i < B C: one pass over the slices, 4 values a thread at a time where
// B C % 4 == 0 and dv is 16-byte aligned. Grid-stride: any grid and block.
__device__ __forceinline__ void aiec_bwd_dv_sum_body(float* __restrict__ dv, AiecShape s) {
  using aiec::u64;
  const u64 n = s.batch * s.channels, stride = (u64)gridDim.x * blockDim.x;
  const aiec::u32 ns = aiec_k::dv_slices(s);
  const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  if (n % 4 == 0 && (aiec::addr(dv) & 15) == 0) {
    float4* d = reinterpret_cast<float4*>(dv);
    const u64 n4 = n / 4;
    for (u64 i = t; i < n4; i += stride) {
      float4 a = d[i];
      for (aiec::u32 z = 1; z < ns; ++z) {
        const float4 b = d[z * n4 + i];
        a.x += b.x;
        a.y += b.y;
        a.z += b.z;
        a.w += b.w;
      }
      d[i] = a;
    }
  } else {
    for (u64 i = t; i < n; i += stride) {
      float a = dv[i];
      for (aiec::u32 z = 1; z < ns; ++z) a += dv[z * n + i];
      dv[i] = a;
    }
  }
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
AIEC_EXPORT_NAMED(aiec_bwd_dv_sum, __launch_bounds__(256), aiec_bwd_dv_sum_body, (float* __restrict__ dv, AiecShape s),
                  (dv, s))
