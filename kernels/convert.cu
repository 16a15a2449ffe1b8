/* convert.cu - element type conversions through aiec::to_float / aiec::from_float<T> (common.cuh).
 *
 *   convert_to_f32_<dtype>(x, y, n):   y[i] = to_float(x[i])          (f16/bf16 -> f32, exact)
 *   convert_from_f32_<dtype>(x, y, n): y[i] = from_float<dtype>(x[i]) (f32 -> f16/bf16, nearest-even)
 *
 * dtype: f32 (a copy), f16, bf16. They exist so that tests can run the conversion helpers on every f16/bf16 bit
 * pattern, on the GPU and in the simulator, and compare with the `half` crate (NaN results: compare "is NaN").
 * Fuses nothing; writes only y. Shapes: x, y: [n]. Launch: 1-D, any grid and block (grid-stride), e.g. 256 threads.
 */
#include "common.cuh"

template <class T>
__device__ __forceinline__ void convert_to_f32(const T* __restrict__ x,  // [n]
                                               float* __restrict__ y,    // [n]
                                               aiec::u64 n) {
  const aiec::u64 stride = (aiec::u64)gridDim.x * blockDim.x;
  for (aiec::u64 i = (aiec::u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = aiec::to_float(x[i]);
}

template <class T>
__device__ __forceinline__ void convert_from_f32(const float* __restrict__ x,  // [n]
                                                 T* __restrict__ y,            // [n]
                                                 aiec::u64 n) {
  const aiec::u64 stride = (aiec::u64)gridDim.x * blockDim.x;
  for (aiec::u64 i = (aiec::u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = aiec::from_float<T>(x[i]);
}

AIEC_EXPORT(convert_to_f32, (const T* __restrict__ x, float* __restrict__ y, aiec::u64 n), (x, y, n))
AIEC_EXPORT(convert_from_f32, (const float* __restrict__ x, T* __restrict__ y, aiec::u64 n), (x, y, n))
