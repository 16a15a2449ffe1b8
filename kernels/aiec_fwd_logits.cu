/* aiec_fwd_logits.cu - decision-making and activation-counting units of an AIEC training forward (docs/SPEC.md
 * "Forward" 4 and 5, and the per-row half of the auxiliary loss): logits = v W^T, then per row the cross-entropy,
 * the unscaled softmax gradient and the argmax; on an update step the counters of correctly predicted samples.
 *
 *   aiec_fwd_logits(v, w, targets, status, step, logits, ce, g, act, inh, total, done, s)   (f32; this name)
 *
 * v: f32 [B, C]; w: f32 [K, C]; targets: i64 [B] (an out-of-range one gets ce = NaN, no one-hot term, no count,
 * and is never used as an index); status: the AiecTargetStatus aiec_fwd_x wrote for these targets (or null): when
 * it names a bad target (index >= 0) the step counts nothing at all, so a bad batch changes no counter;
 * step: null, or the layer's step counter (i64 [1], already incremented for this forward) when the update
 * decision is made on the device: then the counters update when *step % s.update == 0 (s.update holds the
 * update interval, >= 1), else when s.update != 0. logits, g: f32 [B, K]; ce: f32 [B];
 * act, inh: i64 [K, C]; total: i64 [K]; done: u32 [ceil(B / 8)], all 0 before the launch (zero them once at
 * allocation); the kernel leaves them 0 again.
 * ce[b] = (m + logf(sum_k expf(z_k - m))) - z_t with m = max_k z_k (NaN if any z is NaN), as the CPU reference;
 * g[b,k] = expf(z_k - m) / sum - [k == t]. pred = argmax: lowest index among equal maxima, NaN above any number.
 * If s.update, for each sample with pred == t: act[t,c] += 1 where v > 0, inh[t,c] += 1 where v == 0 (NaN: neither),
 * total[t] += 1, as 64-bit integer atomics pre-aggregated per block: one atomicAdd per (class present among the
 * block's correct samples, channel) with a nonzero increment, one per class for total.
 * Never writes v or w. Logits, ce and g are deterministic (fixed summation order, no float atomics).
 * Geometry: block = 512 threads (16 warps); grid = (ceil(B / 8), min(ceil(K / 64), 65535)) (do not launch for
 * B == 0; any grid.y >= 1 is correct: a block loops over class tiles j, j + gridDim.y, ...); no
 * dynamic shared memory (16 KiB static). Block (i, j) computes the logits of samples [8i, 8i + 8) and classes
 * [64j, 64j + 64): the v rows are staged in shared memory 512 channels at a time; warp w computes the 8 dot products
 * of each of the classes k = 64j + w, + 16, + 32, + 48 together (lanes over channels, W rows read coalesced, each
 * staged value used for 4 classes, an 8-row transposed butterfly reduces each class's sums; the channel tiles are added into logits in tile order, so every logit has the same summation order
 * whatever the grid). The block then writes its logits, __threadfence(), and takes a ticket from done[i]; the block
 * that draws the last ticket of sample group i (last-block-done, as in aiec_fwd_gate) reads all K logits of its
 * rows (volatile: other blocks wrote them), warp r < 8 finishes row 8i + r, and the block does the counting. Tiling
 * the classes fills the GPU (ViT-B: 32 x 16 blocks, not 32) without a fourth launch.
 */
#include "common.cuh"
#include "aiec_params.cuh"

namespace aiec_lg {
using aiec::u32;
using aiec::u64;
using aiec_k::min64;
constexpr int S = 8, THREADS = 512, WARPS = THREADS / 32, CT = 512, KT = 64, Q = KT / WARPS;
constexpr u64 NONE = ~(u64)0;

// Sums a[r] (r < 8) over the warp; returns on every lane the total of row lane >> 2 (bits 4, 3, 2 of the lane
// select the row by halving exchanges, bits 1, 0 finish by a butterfly). Fixed order on every schedule.
__device__ __forceinline__ float warp_sum8(float* a, int lane) {
  const unsigned full = 0xffffffffu;
  bool up = (lane & 16) != 0;
  AIEC_UNROLL
  for (int r = 0; r < 4; ++r) {
    const float send = up ? a[r] : a[r + 4], keep = up ? a[r + 4] : a[r];
    a[r] = keep + __shfl_xor_sync(full, send, 16);
  }
  up = (lane & 8) != 0;
  AIEC_UNROLL
  for (int r = 0; r < 2; ++r) {
    const float send = up ? a[r] : a[r + 2], keep = up ? a[r + 2] : a[r];
    a[r] = keep + __shfl_xor_sync(full, send, 8);
  }
  up = (lane & 4) != 0;
  const float send = up ? a[0] : a[1], keep = up ? a[1] : a[0];
  float t = keep + __shfl_xor_sync(full, send, 4);
  t += __shfl_xor_sync(full, t, 2);
  t += __shfl_xor_sync(full, t, 1);
  return t;
}

// Whether (a, ia) ranks above (b, ib) for the argmax: NaN above numbers, then larger, then lower index.
__device__ __forceinline__ bool beats(float a, u64 ia, float b, u64 ib) {
  if (ib == NONE) return ia != NONE;
  if (ia == NONE) return false;
  const bool an = aiec_k::is_nan(a), bn = aiec_k::is_nan(b);
  if (an != bn) return an;
  if (!an && a != b) return a > b;
  return ia < ib;
}
}  // namespace aiec_lg

__device__ __forceinline__ void aiec_fwd_logits_body(const float* __restrict__ v,            // [B, C]
                                                     const float* __restrict__ w,            // [K, C]
                                                     const long long* __restrict__ targets,  // [B]
                                                     const AiecTargetStatus* status,         // [1] or null
                                                     const long long* step,                  // [1] or null
                                                     float* logits,                          // [B, K] (re-read)
                                                     float* __restrict__ ce,                 // [B]
                                                     float* __restrict__ g,                  // [B, K]
                                                     long long* act,                         // [K, C]
                                                     long long* inh,                         // [K, C]
                                                     long long* total,                       // [K]
                                                     aiec::u32* done,                        // [ceil(B / 8)]
                                                     AiecShape s) {
  using namespace aiec_lg;
  __shared__ float sv[S * CT];
  __shared__ int sok[S];
  __shared__ long long st[S];
  __shared__ bool last;
  const u64 B = s.batch, C = s.channels, K = s.classes, b0 = (u64)blockIdx.x * S;
  if (b0 >= B) return;  // block-uniform; never taken with the documented grid
  const bool update = step ? s.update != 0 && *step % (long long)s.update == 0 : s.update != 0;
  const int ns = (int)min64(S, B - b0);
  const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31;

  // 1. the block's logits: its class tiles (one unless K > 65535 * 64), each channel tile by channel tile
  for (u64 k0 = (u64)blockIdx.y * KT; k0 < K; k0 += (u64)gridDim.y * KT) {  // block-uniform
    const u64 k1 = min64(K, k0 + KT);
    for (u64 c0 = 0; c0 < C; c0 += CT) {
      const int ct = (int)min64(CT, C - c0);
      __syncthreads();  // the previous tile is consumed
      for (int idx = tid; idx < S * CT; idx += THREADS) {
        const int r = idx / CT, cc = idx % CT;
        sv[idx] = (r < ns && cc < ct) ? v[(b0 + r) * C + c0 + cc] : 0.0f;
      }
      __syncthreads();
      // Warp w owns the tile's classes k0 + w + 16 q, q < Q, all at once: each staged v value feeds Q FMAs (one
      // class at a time made shared-memory loads, not FMAs, the limit). Every logit is still summed alone, in the
      // same order: lane-strided over the channels, then the butterfly.
      const u64 kw = k0 + (u64)warp;
      if (kw < k1) {  // warp-uniform
        float acc[Q][S];
        const float* wk[Q];
        bool ok[Q];
        AIEC_UNROLL
        for (int q = 0; q < Q; ++q) {
          ok[q] = kw + (u64)(q * WARPS) < k1;  // warp-uniform
          wk[q] = w + (ok[q] ? kw + (u64)(q * WARPS) : kw) * C + c0;
          AIEC_UNROLL
          for (int r = 0; r < S; ++r) acc[q][r] = 0.0f;
        }
        for (int cc = lane; cc < ct; cc += 32) {
          float wv[Q];
          AIEC_UNROLL
          for (int q = 0; q < Q; ++q) wv[q] = ok[q] ? wk[q][cc] : 0.0f;
          AIEC_UNROLL
          for (int r = 0; r < S; ++r) {
            const float x = sv[r * CT + cc];
            AIEC_UNROLL
            for (int q = 0; q < Q; ++q) acc[q][r] += x * wv[q];
          }
        }
        AIEC_UNROLL
        for (int q = 0; q < Q; ++q) {
          if (!ok[q]) continue;  // warp-uniform
          const float t = warp_sum8(acc[q], lane);
          const int r = lane >> 2;
          if ((lane & 3) == 0 && r < ns) {
            float* z = logits + (b0 + r) * K + kw + (u64)(q * WARPS);
            *z = c0 ? *z + t : t;
          }
        }
      }
    }
  }
  // The last block of the sample group to finish goes on; its reads of the other blocks' logits are ordered after
  // their writes by the fences around the ticket.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    last = atomicAdd(done + blockIdx.x, 1u) == gridDim.y - 1;
    if (last) done[blockIdx.x] = 0;  // every block of the group has taken its ticket: ready for the next launch
  }
  __syncthreads();
  if (!last) return;  // block-uniform
  __threadfence();

  // 2. per row: argmax, cross-entropy, softmax gradient
  if (warp < ns) {
    const u64 b = b0 + warp;
    const volatile float* z = logits + b * K;  // volatile: bypass a stale L1 line
    const long long t = targets[b];
    const bool tok = t >= 0 && (u64)t < K;
    float bv = 0.0f;
    u64 bi = NONE;
    for (u64 k = (u64)lane; k < K; k += 32) {
      const float zk = z[k];
      if (beats(zk, k, bv, bi)) { bv = zk; bi = k; }
    }
    AIEC_UNROLL
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const u64 oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (beats(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    const float m = bv;
    float se = 0.0f;
    for (u64 k = (u64)lane; k < K; k += 32) se += expf(z[k] - m);
    se = aiec_k::warp_sum(se);
    for (u64 k = (u64)lane; k < K; k += 32)
      g[b * K + k] = expf(z[k] - m) / se - ((tok && k == (u64)t) ? 1.0f : 0.0f);
    if (lane == 0) {
      ce[b] = tok ? (m + logf(se)) - z[t] : __int_as_float(0x7fc00000);
      sok[warp] = update && tok && bi == (u64)t;
      st[warp] = t;
    }
  } else if (warp < S && lane == 0) {
    sok[warp] = 0;
    st[warp] = -1;
  }
  if (!update || (status && status->index >= 0)) return;  // uniform: no update, or a bad target in the batch
  __syncthreads();

  // 3. counters: the block's correct samples grouped by class, one atomic per (class, channel) and per class
  for (u64 c = (u64)tid; c < C; c += THREADS) {
    AIEC_UNROLL
    for (int r = 0; r < S; ++r) {
      if (!sok[r]) continue;
      bool first = true;
      for (int q = 0; q < r; ++q) first = first && !(sok[q] && st[q] == st[r]);
      if (!first) continue;
      unsigned long long a = 0, i = 0;
      for (int q = r; q < S; ++q) {
        if (!sok[q] || st[q] != st[r]) continue;
        const float val = v[(b0 + q) * C + c];
        a += val > 0.0f;
        i += val == 0.0f;
      }
      const u64 kc = (u64)st[r] * C + c;
      if (a) atomicAdd(reinterpret_cast<unsigned long long*>(act) + kc, a);
      if (i) atomicAdd(reinterpret_cast<unsigned long long*>(inh) + kc, i);
    }
  }
  if (tid == 0) {
    AIEC_UNROLL
    for (int r = 0; r < S; ++r) {
      if (!sok[r]) continue;
      bool first = true;
      unsigned long long n = 0;
      for (int q = 0; q < S; ++q)
        if (sok[q] && st[q] == st[r]) {
          if (q < r) first = false;
          ++n;
        }
      if (first) atomicAdd(reinterpret_cast<unsigned long long*>(total) + st[r], n);
    }
  }
}

AIEC_EXPORT_NAMED(aiec_fwd_logits, __launch_bounds__(512), aiec_fwd_logits_body,
                  (const float* __restrict__ v, const float* __restrict__ w, const long long* __restrict__ targets,
                   const AiecTargetStatus* status, const long long* step, float* logits, float* __restrict__ ce,
                   float* __restrict__ g, long long* act, long long* inh, long long* total, aiec::u32* done,
                   AiecShape s),
                  (v, w, targets, status, step, logits, ce, g, act, inh, total, done, s))
