/* aiec_counts.cu - one update step's counter increments, summed over the ranks of a data-parallel job (docs/SPEC.md
 * "Forward" 5, with the counts of every rank; see src/gpu/dp.rs). The counting launches count into i64 increments;
 * they are exchanged as i32 (exact: an increment sums at most one count per sample of every rank, and the host
 * checks world * batch <= INT32_MAX), then added into the i64 counters.
 *
 *   aiec_counts_narrow(inc, out, n)                 (exactly this name)
 *   aiec_counts_add(act, inh, total, inc, kc, k)    (exactly this name)
 *
 * narrow: out[i] = (int)inc[i] for i < n; inc: i64 [n], out: i32 [n], disjoint.
 * add: act, inh: i64 [K, C] (kc = K*C values each); total: i64 [K]; inc: i32 [2*K*C + K], the summed increments
 * laid out as act's, then inh's, then total's. act[i] += inc[i], inh[i] += inc[kc + i], total[j] += inc[2kc + j].
 * Integer adds, exact; each element is written by one thread (no atomics). Writes only the counters; never inc.
 * Launch (both): 1-D, any grid and block (grid-stride loops). Suggested: block 256, grid = ceil(n / 256), at most
 * 65535.
 */
#include "common.cuh"
#include "aiec_params.cuh"

__device__ __forceinline__ void aiec_counts_narrow_body(const long long* __restrict__ inc,  // [n]
                                                        int* __restrict__ out,              // [n]
                                                        aiec::u64 n) {
  const aiec::u64 stride = (aiec::u64)gridDim.x * blockDim.x;
  for (aiec::u64 i = (aiec::u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = (int)inc[i];
}

__device__ __forceinline__ void aiec_counts_add_body(long long* __restrict__ act,  // [K, C]
                                                     long long* __restrict__ inh,  // [K, C]
                                                     long long* __restrict__ total,  // [K]
                                                     const int* __restrict__ inc,    // [2*K*C + K]
                                                     aiec::u64 kc, aiec::u64 k) {
  const aiec::u64 n = 2 * kc + k, stride = (aiec::u64)gridDim.x * blockDim.x;
  for (aiec::u64 i = (aiec::u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const long long d = inc[i];
    if (i < kc) act[i] += d;
    else if (i < 2 * kc) inh[i - kc] += d;
    else total[i - 2 * kc] += d;
  }
}

AIEC_EXPORT_NAMED(aiec_counts_narrow, __launch_bounds__(256), aiec_counts_narrow_body,
                  (const long long* __restrict__ inc, int* __restrict__ out, aiec::u64 n), (inc, out, n))

AIEC_EXPORT_NAMED(aiec_counts_add, __launch_bounds__(256), aiec_counts_add_body,
                  (long long* __restrict__ act, long long* __restrict__ inh, long long* __restrict__ total,
                   const int* __restrict__ inc, aiec::u64 kc, aiec::u64 k),
                  (act, inh, total, inc, kc, k))
