/* sim/selftest_kernels.cu - kernels that exercise the simulator itself (selftest.cpp only; not part of aiec).
 * Also compiled by nvrtc_check.py, to show they are valid CUDA with the same common.cuh.
 *
 * selftest_reduce_<dtype>: per-block float sum of x through dynamic shared memory (AIEC_DYN_SHARED, blockDim.x
 *   floats) and __shfl_down_sync; counts x > 0 twice (__syncthreads_count, and __ballot_sync + __popc) into
 *   64-bit atomicAdd counters; atomicOr/atomicAnd bit masks; an atomicCAS increment loop per thread.
 *   Launch: 1-D, blockDim.x a power of two >= 32, dynamic shared memory blockDim.x * 4 bytes.
 * selftest_tf32_round_f32: t[i] = to_tf32(x[i]), split_tf32(x[i], hi[i], lo[i]) (mma.cuh), grid-stride loop.
 * selftest_mma_layout_f32: warp w of the grid (global thread index / 32) computes D_w = A_w B_w + C_w with one
 *   mma_m16n8k8_tf32 (A_w = A + 128 w [16, 8], B_w = B + 64 w [8, 8] (k, n), C_w = C + 128 w, D_w = D + 128 w
 *   [16, 8], all row-major), loading its fragments and storing D by mma.cuh's layout functions; lane l writes the
 *   words it passed to frags[w][l][0..9] (a0..a3, b0, b1, c0..c3, f32 bits, before `junk`) and the values it got
 *   to dfrags[w][l][0..3]. junk is ORed into the 13 low bits of every A/B register (the mma must ignore them).
 *   1-D launch, blockDim.x a multiple of 32.
 * selftest_mma_tile_f32: C [M, N] = A [M, K] B [N, K]^T (row-major f32) with mma_tile_abt_3xtf32: warp w of the
 *   grid computes tile (w / ceil(N / 8), w % ceil(N / 8)) of 16x8 elements; warps past the last tile return.
 * On sm_75 (AIEC_MMA_TF32 = 0) the mma kernels are empty: they run in the simulator only.
 * The other kernels are bugs the simulator must report (early exit before a barrier, divergent barriers, a
 *   shuffle only half a warp reaches, a write past the end of dynamic shared memory, an mma half a warp reaches
 *   (or launched with 16 threads: a partial warp), an mma called from two source lines).
 */
#include "../common.cuh"
#include "../mma.cuh"

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

template <class T>
__device__ __forceinline__ void selftest_tf32_round(const T* __restrict__ x, T* __restrict__ t,  // [n], [n]
                                                    T* __restrict__ hi, T* __restrict__ lo,       // [n], [n]
                                                    aiec::u64 n) {
  for (aiec::u64 i = (aiec::u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (aiec::u64)gridDim.x * blockDim.x) {
    t[i] = aiec_mma::to_tf32(x[i]);
    aiec_mma::split_tf32(x[i], hi[i], lo[i]);
  }
}

template <class T>
__device__ __forceinline__ void selftest_mma_layout(const T* A, const T* B, const T* C,  // [warps, 16|8, 8]
                                                    T* D,                                // [warps, 16, 8]
                                                    aiec::u32* frags,                    // [warps, 32, 10]
                                                    T* dfrags,                           // [warps, 32, 4]
                                                    aiec::u32 junk) {
#if AIEC_MMA_TF32
  using namespace aiec_mma;
  const int lane = (int)(threadIdx.x & 31);
  const aiec::u64 w = ((aiec::u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  A += 128 * w; B += 64 * w; C += 128 * w; D += 128 * w;
  aiec::u32* fr = frags + (w * 32 + lane) * 10;
  u32 a[4], b[2];
  float c[4], d[4];
  for (int i = 0; i < 4; ++i) fr[i] = a[i] = __float_as_uint(A[a_row(lane, i) * 8 + a_col(lane, i)]);
  for (int i = 0; i < 2; ++i) fr[4 + i] = b[i] = __float_as_uint(B[b_row(lane, i) * 8 + b_col(lane, i)]);
  for (int i = 0; i < 4; ++i) fr[6 + i] = __float_as_uint(c[i] = C[c_row(lane, i) * 8 + c_col(lane, i)]);
  for (int i = 0; i < 4; ++i) a[i] |= junk & 0x1FFFu;
  for (int i = 0; i < 2; ++i) b[i] |= junk & 0x1FFFu;
  mma_m16n8k8_tf32(d, a, b, c);
  for (int i = 0; i < 4; ++i) {
    dfrags[(w * 32 + lane) * 4 + i] = d[i];
    D[c_row(lane, i) * 8 + c_col(lane, i)] = d[i];
  }
#endif
}

template <class T>
__device__ __forceinline__ void selftest_mma_tile(const T* __restrict__ A,  // [M, K]
                                                  const T* __restrict__ B,  // [N, K]
                                                  T* __restrict__ C,        // [M, N]
                                                  int M, int N, int K) {
#if AIEC_MMA_TF32
  const int lane = (int)(threadIdx.x & 31), tiles_n = (N + 7) / 8;
  const int w = (int)((blockIdx.x * blockDim.x + threadIdx.x) / 32), m0 = 16 * (w / tiles_n), n0 = 8 * (w % tiles_n);
  if (m0 >= M) return;  // the whole warp
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  aiec_mma::mma_tile_abt_3xtf32(acc, A + (aiec::u64)m0 * K, (aiec::u64)K, M - m0, B + (aiec::u64)n0 * K,
                                (aiec::u64)K, N - n0, K, lane);
  for (int i = 0; i < 4; ++i) {
    const int r = m0 + aiec_mma::c_row(lane, i), n = n0 + aiec_mma::c_col(lane, i);
    if (r < M && n < N) C[(aiec::u64)r * N + n] = acc[i];
  }
#endif
}

template <class T>
__device__ __forceinline__ void selftest_half_warp_mma(T* y) {  // lanes >= 16 skip an mma the others wait at
#if AIEC_MMA_TF32
  const aiec::u32 a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float d[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  if ((threadIdx.x & 31) < 16) aiec_mma::mma_m16n8k8_tf32(d, a, b, d);
  y[threadIdx.x] = d[0];
#endif
}

template <class T>
__device__ __forceinline__ void selftest_divergent_mma(T* y) {  // the two half warps call mma from two lines
#if AIEC_MMA_TF32
  const aiec::u32 a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float d[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  if ((threadIdx.x & 31) < 16) {
    aiec_mma::mma_m16n8k8_tf32(d, a, b, d);
  } else {
    aiec_mma::mma_m16n8k8_tf32(d, a, b, d);
  }
  y[threadIdx.x] = d[0];
#endif
}

AIEC_EXPORT(selftest_reduce,
            (const T* __restrict__ x, aiec::u64 n, float* __restrict__ block_sums, aiec::u64* counts, aiec::u32* bits,
             int* cas_counter),
            (x, n, block_sums, counts, bits, cas_counter))
AIEC_EXPORT_ONE(selftest_early_exit, f32, float, (T * y), (y))
AIEC_EXPORT_ONE(selftest_divergent_barrier, f32, float, (T * y), (y))
AIEC_EXPORT_ONE(selftest_half_warp_shfl, f32, float, (T * y), (y))
AIEC_EXPORT_ONE(selftest_dyn_overflow, f32, float, (T * y), (y))
AIEC_EXPORT_ONE(selftest_tf32_round, f32, float,
                (const T* __restrict__ x, T* __restrict__ t, T* __restrict__ hi, T* __restrict__ lo, aiec::u64 n),
                (x, t, hi, lo, n))
AIEC_EXPORT_ONE(selftest_mma_layout, f32, float,
                (const T* A, const T* B, const T* C, T* D, aiec::u32* frags, T* dfrags, aiec::u32 junk),
                (A, B, C, D, frags, dfrags, junk))
AIEC_EXPORT_ONE(selftest_mma_tile, f32, float,
                (const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C, int M, int N, int K),
                (A, B, C, M, N, K))
AIEC_EXPORT_ONE(selftest_half_warp_mma, f32, float, (T * y), (y))
AIEC_EXPORT_ONE(selftest_divergent_mma, f32, float, (T * y), (y))
