/* aiec_fwd_gate.cu - consensus gatekeeping unit of an AIEC training forward (docs/SPEC.md "Forward" 6): the mask and
 * the layer's gate statistics, reduced to one AiecGateStats in the same launch (last-block-done pattern).
 *
 *   aiec_fwd_gate(v, w, targets, act, inh, mask, block_sum_sq, block_count, done, stats, s)   (f32; this name)
 *
 * v: f32 [B, C]; w: f32 [K, C]; targets: i64 [B] (an out-of-range target gives mask 0 and is never an index);
 * act, inh: i64 [K, C], read AFTER aiec_fwd_softmax's update (a later launch); mask: u8 [B, C],
 * mask[b,c] = irrelevant[t,c] = act[t,c] <= inh[t,c] && w[t,c] <= 0 (a NaN weight never masks); stats:
 * S = sum mask * v^2 (f32), N = sum mask. block_sum_sq: f32 [gridDim.x * gridDim.y], block_count: u64 [same]
 * (scratch, any content); done: one u32 that must be 0 before the launch (zero it once at allocation); the kernel
 * leaves it 0 again. Writes only mask, the scratch, done, stats.
 *
 * Class-major: the irrelevant bits of each (class, channel) pair are built once per step, from one read of act,
 * inh and w for the classes present in the batch, and applied to every sample of that class (a gather per sample
 * would read 20 bytes per (b, c): at B >> K each class row many times over).
 * Geometry: block = 256 threads (MUST be); grid = (ceil(C / 64), min(ceil(K / 256), 65535)) (block rows loop over
 * the class groups g = blockIdx.y, + gridDim.y, ...); no dynamic shared memory (about 6 KiB static). Block (cx, g)
 * owns the channels [64 cx, 64 cx + 64) and the classes [256 g, 256 g + 256) (group 0 also the samples whose
 * target is out of range, masked 0): it scans the targets for the classes present, builds
 * their 256 x 64 irrelevant bits in shared memory (warp ballots), then takes the batch's samples of its classes in
 * increasing b, 256 targets at a time (compacted in order): thread (q, c) = (tid / 64, tid % 64) writes mask[b, c]
 * and adds v^2 for the q-th of every 4 listed samples. Every (b, c) is written by exactly one thread. The scan
 * costs O(B) target reads per block (B * ceil(K / 256) * ceil(C / 64) in all, from L1/L2). Each of these loops
 * issues NB = 4 iterations' loads (targets, a class's act / inh / w, a sample's v) before it uses the first, so that
 * they are in flight together; v^2 is still added in list order.
 * S and N: each block writes its partial (per-thread sums in list order, then a fixed tree), __threadfence(),
 * atomicAdd(done, 1); the block that draws the last ticket adds all partials (strided by thread, then a fixed tree)
 * and writes *stats (pad0 = 0). Deterministic for a given grid: fixed orders, no float atomics. Do not launch for
 * B*C == 0 (then S = 0, N = 0).
 */
#include "common.cuh"
#include "aiec_params.cuh"

namespace aiec_gt {
using aiec::u32;
using aiec::u64;
constexpr int THREADS = 256, CC = 64, KG = 256, LANES = THREADS / CC;  // LANES sample lanes of 64 channels
constexpr u32 BAD = KG;                                                // list entry of an out-of-range target
constexpr int NB = 4;  // loads in flight per thread in each loop (targets, class rows, samples' v)

// Fixed-order tree over the block (THREADS entries of rs, rn); result in rs[0], rn[0] for every thread.
__device__ __forceinline__ void block_reduce(float* rs, u64* rn, int tid) {
  __syncthreads();
  for (int h = THREADS / 2; h > 0; h >>= 1) {
    if (tid < h) {
      rs[tid] += rs[tid + h];
      rn[tid] += rn[tid + h];
    }
    __syncthreads();
  }
}
}  // namespace aiec_gt

__device__ __forceinline__ void aiec_fwd_gate_body(const float* __restrict__ v,            // [B, C]
                                                   const float* __restrict__ w,            // [K, C]
                                                   const long long* __restrict__ targets,  // [B]
                                                   const long long* __restrict__ act,      // [K, C]
                                                   const long long* __restrict__ inh,      // [K, C]
                                                   unsigned char* __restrict__ mask,       // [B, C]
                                                   float* block_sum_sq,                    // [gridDim.x * y]
                                                   aiec::u64* block_count,                 // [gridDim.x * y]
                                                   aiec::u32* done,                        // [1]
                                                   AiecGateStats* stats,                   // [1]
                                                   AiecShape s) {
  using namespace aiec_gt;
  __shared__ float rs[THREADS];
  __shared__ u64 rn[THREADS];
  __shared__ u32 present[KG / 32];     // classes of the group that some sample has
  __shared__ u32 irr[KG][CC / 32];     // irrelevant bits: class k0 + kk, channel c0 + 32 i + bit
  __shared__ u32 list[THREADS];        // (b - b0) << 9 | kk of the chunk's samples in the group, in b order
  __shared__ u32 warp_n[THREADS / 32];
  __shared__ int last;
  const u64 B = s.batch, C = s.channels, K = s.classes;
  const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const u64 c0 = (u64)blockIdx.x * CC, groups = (K + KG - 1) / KG;
  const int q = tid / CC, cl = tid & (CC - 1);
  const u64 c = c0 + (u64)cl;
  float ss = 0.0f;
  u64 cnt = 0;
  for (u64 g = blockIdx.y; g < groups; g += gridDim.y) {  // block-uniform (one group unless K > 65535 * 256)
    const u64 k0 = g * KG;
    const bool group0 = g == 0;
    // The list entry of a target for this group: its class kk in the group, BAD (group 0 only), or none.
    auto entry = [&](long long t, u32& e) -> bool {
      if (t < 0 || (u64)t >= K) {
        e = BAD;
        return group0;
      }
      e = (u32)((u64)t - k0);
      return (u64)t >= k0 && (u64)t - k0 < (u64)KG;
    };

    // 1. The classes present, then their irrelevant bits over the block's 64 channels (one read of act, inh, w).
    __syncthreads();  // the previous group's irr and list are consumed
    if (tid < KG / 32) present[tid] = 0;
    __syncthreads();
    for (u64 b1 = (u64)tid; b1 < B; b1 += THREADS * NB) {  // NB targets in flight per thread
      long long t[NB];
      AIEC_UNROLL
      for (int u = 0; u < NB; ++u) {
        const u64 b = b1 + (u64)u * THREADS;
        t[u] = b < B ? targets[b] : -1;
      }
      AIEC_UNROLL
      for (int u = 0; u < NB; ++u) {
        u32 e;
        if (b1 + (u64)u * THREADS < B && entry(t[u], e) && e != BAD) atomicOr(&present[e >> 5], 1u << (e & 31));
      }
    }
    __syncthreads();
    // Warps 2q, 2q + 1: the 64 channels of classes kk = q mod 4, NB classes at a time: their act, inh and w are all
    // loaded (in flight together) before the first is used.
    for (int k1 = q; k1 < KG; k1 += LANES * NB) {
      long long a[NB], h[NB];
      float wv[NB];
      u32 pr = 0;  // bit u: class k1 + u LANES is present
      AIEC_UNROLL
      for (int u = 0; u < NB; ++u) {
        const int kk = k1 + u * LANES;
        pr |= ((present[kk >> 5] >> (kk & 31)) & 1u) << u;
        a[u] = 1;  // not irrelevant: a class absent from the batch, or a channel past C
        h[u] = 0;
        wv[u] = 0.0f;
        if (((pr >> u) & 1u) && c < C) {
          const u64 kc = (k0 + (u64)kk) * C + c;
          a[u] = act[kc];
          h[u] = inh[kc];
          wv[u] = w[kc];
        }
      }
      AIEC_UNROLL
      for (int u = 0; u < NB; ++u) {
        const int kk = k1 + u * LANES;
        if (!((pr >> u) & 1u)) continue;  // warp-uniform
        const u32 word = __ballot_sync(0xffffffffu, a[u] <= h[u] && wv[u] <= 0.0f);
        if (lane == 0) irr[kk][cl >> 5] = word;
      }
    }
    __syncthreads();

    // 2. The batch's samples of these classes, in increasing b, 256 targets at a time.
    for (u64 b0 = 0; b0 < B; b0 += THREADS) {  // block-uniform
      const u64 b = b0 + (u64)tid;
      u32 e = 0;
      const bool in = b < B && entry(targets[b], e);
      const u32 ballot = __ballot_sync(0xffffffffu, in);
      if (lane == 0) warp_n[warp] = (u32)__popc(ballot);
      __syncthreads();
      u32 pos = (u32)__popc(ballot & ((1u << lane) - 1u)), n = 0;
      for (int j = 0; j < THREADS / 32; ++j) {
        if (j < warp) pos += warp_n[j];
        n += warp_n[j];
      }
      if (in) list[pos] = (u32)tid << 9 | e;
      __syncthreads();
      for (u32 i1 = (u32)q; i1 < n; i1 += LANES * NB) {  // NB samples' v in flight, then added in list order
        bool m[NB];
        float val[NB];
        AIEC_UNROLL
        for (int u = 0; u < NB; ++u) {
          const u32 i = i1 + (u32)(u * LANES);
          m[u] = false;
          val[u] = 0.0f;
          if (i < n && c < C) {
            const u32 it = list[i], kk = it & 511u;
            const u64 bi = b0 + (it >> 9);
            m[u] = kk != BAD && ((irr[kk][cl >> 5] >> (cl & 31)) & 1u);
            mask[bi * C + c] = (unsigned char)m[u];
            if (m[u]) val[u] = v[bi * C + c];
          }
        }
        AIEC_UNROLL
        for (int u = 0; u < NB; ++u) {
          if (m[u]) {
            ss += val[u] * val[u];
            ++cnt;
          }
        }
      }
      __syncthreads();  // list and warp_n are reused by the next chunk
    }
  }

  // 3. S and N: the block's partial, then the last block adds all partials.
  const u32 nblocks = gridDim.x * gridDim.y, bid = blockIdx.y * gridDim.x + blockIdx.x;
  rs[tid] = ss;
  rn[tid] = cnt;
  block_reduce(rs, rn, tid);
  if (tid == 0) {
    block_sum_sq[bid] = rs[0];
    block_count[bid] = rn[0];
    __threadfence();  // the partials are visible to all blocks before the ticket is taken
    last = atomicAdd(done, 1u) == nblocks - 1;
  }
  __syncthreads();
  if (!last) return;  // block-uniform
  __threadfence();
  float ps = 0.0f;
  u64 pn = 0;
  for (u32 j = (u32)tid; j < nblocks; j += THREADS) {  // volatile: bypass a stale L1 line
    ps += reinterpret_cast<volatile float*>(block_sum_sq)[j];
    pn += reinterpret_cast<volatile u64*>(block_count)[j];
  }
  __syncthreads();  // everyone has read rs[0] / rn[0] of the first reduction
  rs[tid] = ps;
  rn[tid] = pn;
  block_reduce(rs, rn, tid);
  if (tid == 0) {
    stats->sum_sq = rs[0];
    stats->pad0 = 0;
    stats->count = rn[0];
    *done = 0;  // ready for the next launch (kernel boundaries order it)
  }
}

AIEC_EXPORT_NAMED(aiec_fwd_gate, __launch_bounds__(256), aiec_fwd_gate_body,
                  (const float* __restrict__ v, const float* __restrict__ w, const long long* __restrict__ targets,
                   const long long* __restrict__ act, const long long* __restrict__ inh,
                   unsigned char* __restrict__ mask, float* block_sum_sq, aiec::u64* block_count, aiec::u32* done,
                   AiecGateStats* stats, AiecShape s),
                  (v, w, targets, act, inh, mask, block_sum_sq, block_count, done, stats, s))
