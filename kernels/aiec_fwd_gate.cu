/* aiec_fwd_gate.cu - consensus gatekeeping unit of an AIEC training forward (docs/SPEC.md "Forward" 6): the mask and
 * the layer's gate statistics, reduced to one AiecGateStats in the same launch (last-block-done pattern).
 *
 *   aiec_fwd_gate(v, w, targets, act, inh, mask, block_sum_sq, block_count, done, stats, s)   (f32; this name)
 *
 * v: f32 [B, C]; w: f32 [K, C]; targets: i64 [B] (an out-of-range target gives mask 0 and is never an index);
 * act, inh: i64 [K, C], read AFTER aiec_fwd_logits' update (a later launch); mask: u8 [B, C],
 * mask[b,c] = act[t,c] <= inh[t,c] && w[t,c] <= 0 (a NaN weight never masks); stats: S = sum mask * v^2 (f32),
 * N = sum mask. block_sum_sq: f32 [gridDim.x], block_count: u64 [gridDim.x] (scratch, any content);
 * done: one u32 that must be 0 before the launch (zero it once at allocation); the kernel leaves it 0 again.
 * Each block writes its partial S and N, __threadfence(), atomicAdd(done, 1); the block that draws gridDim.x - 1
 * adds all partials (strided by thread, then a fixed tree) and writes *stats (pad0 = 0). Deterministic for a given
 * grid: per-thread sums in index order, fixed trees, no float atomics. Writes only mask, the scratch, done, stats.
 * Geometry: block = 256 threads (MUST be); grid = min(ceil(B*C / 256), 1024) (any grid >= 1 is correct; the
 * scratch arrays need gridDim.x entries); no dynamic shared memory. Do not launch for B*C == 0 (then S = 0, N = 0).
 * Thread j of the grid handles the flat indices i = j, j + 256*gridDim.x, ... of [B, C].
 */
#include "common.cuh"
#include "aiec_params.cuh"

namespace aiec_gt {
using aiec::u32;
using aiec::u64;
constexpr int THREADS = 256;

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
                                                   float* block_sum_sq,                    // [gridDim.x]
                                                   aiec::u64* block_count,                 // [gridDim.x]
                                                   aiec::u32* done,                        // [1]
                                                   AiecGateStats* stats,                   // [1]
                                                   AiecShape s) {
  using namespace aiec_gt;
  __shared__ float rs[THREADS];
  __shared__ u64 rn[THREADS];
  __shared__ int last;
  const u64 C = s.channels, K = s.classes, n = s.batch * C;
  const int tid = (int)threadIdx.x;
  float ss = 0.0f;
  u64 cnt = 0;
  for (u64 i = (u64)blockIdx.x * THREADS + tid; i < n; i += (u64)gridDim.x * THREADS) {
    const u64 b = i / C, c = i - b * C;
    const long long t = targets[b];
    bool m = false;
    if (t >= 0 && (u64)t < K) {
      const u64 kc = (u64)t * C + c;
      m = act[kc] <= inh[kc] && w[kc] <= 0.0f;
    }
    mask[i] = (unsigned char)m;
    if (m) {
      const float val = v[i];
      ss += val * val;
      ++cnt;
    }
  }
  rs[tid] = ss;
  rn[tid] = cnt;
  block_reduce(rs, rn, tid);
  if (tid == 0) {
    block_sum_sq[blockIdx.x] = rs[0];
    block_count[blockIdx.x] = rn[0];
    __threadfence();  // the partials are visible to all blocks before the ticket is taken
    last = atomicAdd(done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;  // block-uniform
  __threadfence();
  float ps = 0.0f;
  u64 pn = 0;
  for (u32 j = (u32)tid; j < gridDim.x; j += THREADS) {  // volatile: bypass a stale L1 line
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
