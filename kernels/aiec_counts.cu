/* aiec_counts.cu - adds one update step's counter increments, summed over the ranks of a data-parallel job, into
 * a layer's counters (docs/SPEC.md "Forward" 5, with the counts of every rank; see src/gpu/dp.rs).
 *
 *   aiec_counts_add(act, inh, total, inc, kc, k)   (i64; exactly this name)
 *
 * act, inh: i64 [K, C] (kc = K*C values each); total: i64 [K]; inc: i64 [2*K*C + K], the increments laid out as
 * act's, then inh's, then total's. act[i] += inc[i], inh[i] += inc[kc + i], total[j] += inc[2kc + j]. Integer
 * adds, exact; each element is written by one thread (no atomics). Writes only the counters; never inc.
 * Launch: 1-D, any grid and block (grid-stride loop over the 2*kc + k values). Suggested: block 256,
 * grid = min(ceil((2kc + k) / 256), 8 * SM count).
 */
#include "common.cuh"
#include "aiec_params.cuh"

__device__ __forceinline__ void aiec_counts_add_body(long long* __restrict__ act,        // [K, C]
                                                     long long* __restrict__ inh,        // [K, C]
                                                     long long* __restrict__ total,      // [K]
                                                     const long long* __restrict__ inc,  // [2*K*C + K]
                                                     aiec::u64 kc, aiec::u64 k) {
  const aiec::u64 n = 2 * kc + k, stride = (aiec::u64)gridDim.x * blockDim.x;
  for (aiec::u64 i = (aiec::u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const long long d = inc[i];
    if (i < kc) act[i] += d;
    else if (i < 2 * kc) inh[i - kc] += d;
    else total[i - 2 * kc] += d;
  }
}

AIEC_EXPORT_NAMED(aiec_counts_add, __launch_bounds__(256), aiec_counts_add_body,
                  (long long* __restrict__ act, long long* __restrict__ inh, long long* __restrict__ total,
                   const long long* __restrict__ inc, aiec::u64 kc, aiec::u64 k),
                  (act, inh, total, inc, kc, k))
