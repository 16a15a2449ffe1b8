/* aiec_bwd_dv_dw.cu - the decision and gate part of an AIEC backward (docs/SPEC.md "Backward", first three rules):
 * dv and dW in one launch. dlogits = aux_scale * g is formed on the fly in shared memory, never in global memory.
 *
 *   aiec_bwd_dv_dw(v, w, g, mask, losses, row_scale, dv, dw, s)   (f32; exactly this name)
 *
 * v, dv: f32 [B, C]; w, dw: f32 [K, C]; g: f32 [B, K] (aiec_fwd_logits' softmax - onehot); mask: u8 [B, C];
 * losses: the AiecLosses of aiec_loss (only aux_scale and gate_scale are read); row_scale: f32 [B] or null.
 * With a = row_scale ? row_scale[b] : aux_scale (the gradient of the loss with respect to row b's cross-entropy):
 *   dv[b,c] = sum_k (a_b * g[b,k]) * w[k,c], then + gate_scale * v[b,c] where mask[b,c] != 0;
 *   dw[k,c] = sum_b (a_b * g[b,k]) * v[b,c]   (all zeros when B == 0: still launch then);
 *   with s.flags & AIEC_FLAG_ACCUMULATE_DW, dw[k,c] += that sum instead (the buffer's old value plus the sum).
 * Every sum runs over k (resp. b) in increasing order in one thread: deterministic, no atomics.
 * Writes only dv and dw. Geometry: block = 256 threads (MUST be), no dynamic shared memory (8 KiB static);
 *   CB = ceil(C / 256); grid = (ceil(B / 16) + ceil(K / 16)) * CB.
 * Block i < ceil(B/16)*CB computes dv rows [16*(i / CB), +16) x channels [256*(i % CB), +256); block
 * i' = i - ceil(B/16)*CB computes dw rows (classes) [16*(i' / CB), +16) x the same channel tiles. Thread t owns one
 * channel; the 16 x 128 dlogits tile it needs is staged in shared memory (read back as 16-byte broadcasts), its W
 * (resp. v) reads are coalesced.
 */
#include "common.cuh"
#include "aiec_params.cuh"

namespace aiec_bd {
using aiec::u64;
using aiec_k::min64;
constexpr int S = 16, THREADS = 256, JT = 128;
struct __align__(16) F4 {  // four dlogits, read from shared memory in one 16-byte (warp-broadcast) load
  float x, y, z, w;
};
}  // namespace aiec_bd

__device__ __forceinline__ void aiec_bwd_dv_dw_body(const float* __restrict__ v,            // [B, C]
                                                    const float* __restrict__ w,            // [K, C]
                                                    const float* __restrict__ g,            // [B, K]
                                                    const unsigned char* __restrict__ mask,  // [B, C]
                                                    const AiecLosses* __restrict__ losses,  // [1]
                                                    const float* __restrict__ row_scale,    // [B] or null
                                                    float* __restrict__ dv,                 // [B, C]
                                                    float* __restrict__ dw,                 // [K, C]
                                                    AiecShape s) {
  using namespace aiec_bd;
  __shared__ __align__(16) float sa[JT * S];  // [jj][r]: dlogits of the tile's S rows at reduction index j0 + jj
  const u64 B = s.batch, C = s.channels, K = s.classes;
  const u64 CB = (C + THREADS - 1) / THREADS, nbv = (B + S - 1) / S * CB;
  const bool is_dv = blockIdx.x < nbv;
  const u64 tile = is_dv ? blockIdx.x : blockIdx.x - nbv;
  const u64 r0 = tile / CB * S, c = tile % CB * THREADS + threadIdx.x;
  const u64 R = is_dv ? B : K, J = is_dv ? K : B;  // output rows, reduction length
  if (r0 >= R) return;                               // block-uniform (grid larger than needed)
  const int ns = (int)min64(S, R - r0), tid = (int)threadIdx.x;
  const float* M = is_dv ? w : v;  // [J, C]
  const float aux_scale = losses->aux_scale;
  float acc[S];
  AIEC_UNROLL
  for (int r = 0; r < S; ++r) acc[r] = 0.0f;
  for (u64 j0 = 0; j0 < J; j0 += JT) {
    const int jn = (int)min64(JT, J - j0);
    if (j0) __syncthreads();  // the previous tile is consumed
    for (int idx = tid; idx < S * JT; idx += THREADS) {
      // dv: dlogits[r0 + r, j0 + jj] = g[(r0 + r)*K + j0 + jj], jj fastest (coalesced);
      // dw: dlogits[j0 + jj, r0 + r] = g[(j0 + jj)*K + r0 + r], r fastest.
      const int r = is_dv ? idx / JT : idx % S, jj = is_dv ? idx % JT : idx / S;
      float a = 0.0f;
      if (r < ns && jj < jn) {
        const u64 b = is_dv ? r0 + r : j0 + jj;  // the sample of this dlogits entry
        const float scale = row_scale ? row_scale[b] : aux_scale;
        a = scale * (is_dv ? g[(r0 + r) * K + j0 + jj] : g[(j0 + jj) * K + r0 + r]);
      }
      sa[jj * S + r] = a;
    }
    __syncthreads();
    if (c < C) {
      // Unrolled by 2, not the compiler's default 4: with 4, NVRTC 12.9 and 13.0 emit one of up to four
      // different cubins for this file, run to run (16 compiles each); with 2 (or 1), the same bytes every time.
      AIEC_UNROLL_BY(2)
      for (int jj = 0; jj < jn; ++jj) {
        const float m = M[(j0 + jj) * C + c];
        // The S dlogits of this jj, the same for the whole warp: 16-byte broadcast loads, one per 4 FMAs
        // (scalar loads made shared memory, not the FMAs, the limit). Same sums in the same order.
        const F4* a4 = reinterpret_cast<const F4*>(sa + jj * S);
        AIEC_UNROLL
        for (int q = 0; q < S / 4; ++q) {
          const F4 a = a4[q];
          acc[4 * q + 0] += a.x * m;
          acc[4 * q + 1] += a.y * m;
          acc[4 * q + 2] += a.z * m;
          acc[4 * q + 3] += a.w * m;
        }
      }
    }
  }
  if (c >= C) return;
  if (is_dv) {
    const float gate_scale = losses->gate_scale;
    AIEC_UNROLL
    for (int r = 0; r < ns; ++r) {
      const u64 i = (r0 + r) * C + c;
      float o = acc[r];
      if (mask[i]) o += gate_scale * v[i];
      dv[i] = o;
    }
  } else {
    AIEC_UNROLL
    for (int r = 0; r < ns; ++r) {
      float* o = dw + (r0 + r) * C + c;
      *o = (s.flags & AIEC_FLAG_ACCUMULATE_DW) ? *o + acc[r] : acc[r];
    }
  }
}

AIEC_EXPORT_NAMED(aiec_bwd_dv_dw, __launch_bounds__(256), aiec_bwd_dv_dw_body,
                  (const float* __restrict__ v, const float* __restrict__ w, const float* __restrict__ g,
                   const unsigned char* __restrict__ mask, const AiecLosses* __restrict__ losses,
                   const float* __restrict__ row_scale, float* __restrict__ dv, float* __restrict__ dw, AiecShape s),
                  (v, w, g, mask, losses, row_scale, dv, dw, s))
