/* aiec_loss.cu - the combined AIEC losses of L layers that share one target vector (docs/SPEC.md "Losses") and the
 * two scales every layer's backward needs, in one block.
 *
 *   aiec_loss(p)         (AiecLossParams by value; f32; exactly this name)
 *   aiec_loss_count(p)   (data-parallel training: this process's count, before the ranks sum it)
 *
 * aiec_loss reads p.ce[l] (f32 [B], written by aiec_fwd_softmax) and *p.stats[l] (AiecGateStats, aiec_fwd_gate) for
 * l < min(p.layers, 32), and p.count_all's two ints when it is not 0; writes only *p.out (AiecLosses, pad0 = 0):
 *   aux = (sum over l, b of ce_l[b]) / (float)(L*B), 0 if L*B == 0; sum_sq = sum_l S_l (f32, in l order);
 *   count = N (aiec_params.cuh: sum_l N_l, or the ranks' sum from count_all); W = p.world with count_all, else 1;
 *   gate = W * sum_sq / (float)count, 0 if count == 0;
 *   aux_scale = aux_coef / (float)(L*B), 0 if L*B == 0; gate_scale = (2 * gate_coef) * W / (float)count, 0 if
 *   count == 0. (W = 1 gives bit for bit the values of the formulas without W.)
 * The CE sum: thread j adds ce_l[b] for b = j, j+256, ... layer after layer, then a fixed tree (deterministic).
 * aiec_loss_count writes (n >> 20, n & 0xFFFFF) of n = sum_l N_l into count_all's two ints (thread 0).
 * Geometry (both): grid = 1, block = 256 threads (MUST be), no dynamic shared memory. B == 0 is fine (aux 0).
 */
#include "common.cuh"
#include "aiec_params.cuh"

__device__ __forceinline__ void aiec_loss_body(AiecLossParams p) {
  constexpr int THREADS = 256;
  __shared__ float red[THREADS];
  const int tid = (int)threadIdx.x;
  const aiec::u32 L = p.layers < AIEC_MAX_LAYERS ? p.layers : AIEC_MAX_LAYERS;
  const aiec::u64 B = p.batch, rows = (aiec::u64)L * B;
  float acc = 0.0f;
  for (aiec::u32 l = 0; l < L; ++l) {
    const float* ce = reinterpret_cast<const float*>(p.ce[l]);
    for (aiec::u64 b = (aiec::u64)tid; b < B; b += THREADS) acc += ce[b];
  }
  red[tid] = acc;
  __syncthreads();
  for (int h = THREADS / 2; h > 0; h >>= 1) {
    if (tid < h) red[tid] += red[tid + h];
    __syncthreads();
  }
  if (tid != 0) return;
  float sum_sq = 0.0f;
  aiec::u64 count = 0;
  for (aiec::u32 l = 0; l < L; ++l) {
    const AiecGateStats* st = reinterpret_cast<const AiecGateStats*>(p.stats[l]);
    sum_sq += st->sum_sq;
    count += st->count;
  }
  float world = 1.0f;
  if (p.count_all) {
    const unsigned* all = reinterpret_cast<const unsigned*>(p.count_all);
    count = ((aiec::u64)all[0] << 20) + (aiec::u64)all[1];
    world = p.world > 1 ? (float)p.world : 1.0f;
  }
  AiecLosses* out = reinterpret_cast<AiecLosses*>(p.out);
  const float frows = (float)rows, fcount = (float)count;
  out->aux = rows ? red[0] / frows : 0.0f;
  out->gate = count ? world * sum_sq / fcount : 0.0f;
  out->sum_sq = sum_sq;
  out->aux_scale = rows ? p.aux_coef / frows : 0.0f;
  out->gate_scale = count ? (2.0f * p.gate_coef) * world / fcount : 0.0f;
  out->pad0 = 0;
  out->count = count;
}

__device__ __forceinline__ void aiec_loss_count_body(AiecLossParams p) {
  if (threadIdx.x != 0) return;
  const aiec::u32 L = p.layers < AIEC_MAX_LAYERS ? p.layers : AIEC_MAX_LAYERS;
  aiec::u64 n = 0;
  for (aiec::u32 l = 0; l < L; ++l) n += reinterpret_cast<const AiecGateStats*>(p.stats[l])->count;
  unsigned* all = reinterpret_cast<unsigned*>(p.count_all);
  all[0] = (unsigned)(n >> 20);
  all[1] = (unsigned)(n & 0xFFFFFu);
}

AIEC_EXPORT_NAMED(aiec_loss, __launch_bounds__(256), aiec_loss_body, (AiecLossParams p), (p))
AIEC_EXPORT_NAMED(aiec_loss_count, __launch_bounds__(256), aiec_loss_count_body, (AiecLossParams p), (p))
