/* sim/selftest_kernels.cu - kernels that exercise the simulator itself (selftest.cpp only; not part of aiec).
 * Also compiled by nvrtc_check.py, to show they are valid CUDA with the same common.cuh.
 *
 * selftest_reduce_<dtype>: per-block float sum of x through dynamic shared memory (AIEC_DYN_SHARED, blockDim.x
 *   floats) and __shfl_down_sync; counts x > 0 twice (__syncthreads_count, and __ballot_sync + __popc) into
 *   64-bit atomicAdd counters; atomicOr/atomicAnd bit masks; an atomicCAS increment loop per thread.
 *   Launch: 1-D, blockDim.x a power of two >= 32, dynamic shared memory blockDim.x * 4 bytes.
 * The other kernels are bugs the simulator must report (early exit before a barrier, divergent barriers, a
 *   shuffle only half a warp reaches, a write past the end of dynamic shared memory).
 */
#include "../common.cuh"

template <class T>
__device__ __forceinline__ void selftest_reduce(const T* __restrict__ x, aiec::u64 n,  // [n]
                                                float* __restrict__ block_sums,         // [gridDim.x]
                                                aiec::u64* counts,                      // [2]
                                                aiec::u32* bits,                        // [2]: or, and
                                                int* cas_counter) {
  AIEC_DYN_SHARED(float, smem);  // [blockDim.x]
  const unsigned tid = threadIdx.x, lane = tid & 31;
  float sum = 0.0f;
  for (aiec::u64 base = (aiec::u64)blockIdx.x * blockDim.x; base < n; base += (aiec::u64)gridDim.x * blockDim.x) {
    const aiec::u64 i = base + tid;  // uniform trip count: every thread reaches the barrier and the ballot
    const float v = i < n ? aiec::to_float(x[i]) : 0.0f;
    sum += v;
    const int c = __syncthreads_count(i < n && v > 0.0f);
    if (tid == 0 && c) atomicAdd(&counts[0], (aiec::u64)c);
    const unsigned b = __ballot_sync(0xffffffffu, i < n && v > 0.0f);
    if (lane == 0 && b) atomicAdd(&counts[1], (aiec::u64)__popc(b));
  }
  smem[tid] = sum;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s >= 32; s >>= 1) {
    if (tid < s) smem[tid] += smem[tid + s];
    __syncthreads();
  }
  if (tid < 32) {
    float w = smem[tid];
    for (int o = 16; o > 0; o >>= 1) w += __shfl_down_sync(0xffffffffu, w, o);
    if (tid == 0) block_sums[blockIdx.x] = w;
  }
  atomicOr(&bits[0], 1u << (tid & 31));
  atomicAnd(&bits[1], ~(1u << (blockIdx.x & 31)));
  int old = *(volatile int*)cas_counter, assumed;
  do {
    assumed = old;
    old = atomicCAS(cas_counter, assumed, assumed + 1);
  } while (old != assumed);
}

template <class T>
__device__ __forceinline__ void selftest_early_exit(T* y) {  // threads >= 32 skip a barrier the others wait at
  __shared__ float s[32];
  if (threadIdx.x >= 32) return;
  s[threadIdx.x] = (float)threadIdx.x;
  __syncthreads();
  y[threadIdx.x] = s[(threadIdx.x + 1) & 31];
}

template <class T>
__device__ __forceinline__ void selftest_divergent_barrier(T* y) {  // two __syncthreads in divergent branches
  if (threadIdx.x < 32) {
    y[threadIdx.x] = 1.0f;
    __syncthreads();
  } else {
    y[threadIdx.x] = 2.0f;
    __syncthreads();
  }
}

template <class T>
__device__ __forceinline__ void selftest_half_warp_shfl(T* y) {  // half of each warp exits before a full shuffle
  float v = (float)threadIdx.x;
  if ((threadIdx.x & 31) < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);
  y[threadIdx.x] = v;
}

template <class T>
__device__ __forceinline__ void selftest_dyn_overflow(T* y) {  // dynamic smem: blockDim.x floats; writes one more
  AIEC_DYN_SHARED(float, smem);
  smem[threadIdx.x + 1] = (float)threadIdx.x;
  __syncthreads();
  y[threadIdx.x] = smem[threadIdx.x];
}

AIEC_EXPORT(selftest_reduce,
            (const T* __restrict__ x, aiec::u64 n, float* __restrict__ block_sums, aiec::u64* counts, aiec::u32* bits,
             int* cas_counter),
            (x, n, block_sums, counts, bits, cas_counter))
AIEC_EXPORT_ONE(selftest_early_exit, f32, float, (T * y), (y))
AIEC_EXPORT_ONE(selftest_divergent_barrier, f32, float, (T * y), (y))
AIEC_EXPORT_ONE(selftest_half_warp_shfl, f32, float, (T * y), (y))
AIEC_EXPORT_ONE(selftest_dyn_overflow, f32, float, (T * y), (y))
