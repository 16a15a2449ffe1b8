/* threshold.cu - the AIEC threshold unit (docs/SPEC.md "Threshold unit" and the dx rule), elementwise.
 *
 *   threshold_fwd_<dtype>(x, y, tau, n):      y  = (x <= tau) ? 0 : x
 *   threshold_bwd_<dtype>(x, dy, dx, tau, n): dx = (x <= tau) ? 0 : dy
 *
 * dtype: f32, f16, bf16 (aiec_f16 / aiec_bf16 storage). The comparison is done in f32 exactly as written
 * (`!(x <= tau)` keeps): f16/bf16 inputs are widened exactly, tau is an f32, so a NaN x is kept and its dy passes.
 * A kept element is copied bit for bit (a NaN keeps its payload); a dropped one becomes +0.
 * Fuses nothing else. fwd writes only y, bwd only dx; neither writes x. y must not alias x; dx may alias dy
 * (in-place backward), never x. No shared memory, no atomics, no barriers.
 * Shapes: x, y, dy, dx: [n] (any tensor, flattened, contiguous); 64-bit n and indices.
 * Launch: 1-D, any grid and block (grid-stride loops). Suggested: block 256,
 * grid = min(ceil(n / (256 * 16 / sizeof(T))), 8 * SM count): each thread moves 16 bytes per step.
 * Vector path: when every pointer has the same address modulo 16 (always for whole buffers from the allocator),
 * elements up to the first 16-byte boundary (the head) and after the last one (the tail) are done one at a
 * time, the rest with 16-byte loads/stores; otherwise every element is done one at a time.
 */
#include "common.cuh"

// Elements [head, vec_end) go 16 bytes at a time (nvec packs); [0, head) and [vec_end, n) one by one.
struct AiecSplit { aiec::u64 head, nvec, vec_end; };

template <class T>
__device__ __forceinline__ AiecSplit aiec_split(aiec::u64 a0, aiec::u64 differ, aiec::u64 n) {
  const aiec::u64 V = aiec::Pack16<T>::N, off = a0 & 15;
  AiecSplit s;
  if ((differ & 15) != 0 || off % sizeof(T) != 0) {  // no common 16-byte alignment: all scalar
    s.head = n; s.nvec = 0; s.vec_end = n;
    return s;
  }
  s.head = off ? (16 - off) / sizeof(T) : 0;
  if (s.head > n) s.head = n;
  s.nvec = (n - s.head) / V;
  s.vec_end = s.head + s.nvec * V;
  return s;
}

template <class T>
__device__ __forceinline__ bool aiec_keep(T x, float tau) { return !(aiec::to_float(x) <= tau); }

template <class T>
__device__ __forceinline__ void threshold_fwd(const T* __restrict__ x,  // [n]
                                              T* __restrict__ y,        // [n]
                                              float tau, aiec::u64 n) {
  using aiec::u64;
  const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x;
  const AiecSplit s = aiec_split<T>(aiec::addr(x), aiec::addr(x) ^ aiec::addr(y), n);
  for (u64 k = tid; k < s.nvec; k += stride) {
    const u64 i = s.head + k * aiec::Pack16<T>::N;
    aiec::Pack16<T> px, py;
    px.u = aiec::ld16(x + i);
    for (int j = 0; j < aiec::Pack16<T>::N; ++j) py.v[j] = aiec_keep(px.v[j], tau) ? px.v[j] : T{};
    aiec::st16(y + i, py.u);
  }
  const u64 nscalar = s.head + (n - s.vec_end);
  for (u64 k = tid; k < nscalar; k += stride) {
    const u64 i = k < s.head ? k : s.vec_end + (k - s.head);
    const T v = x[i];
    y[i] = aiec_keep(v, tau) ? v : T{};
  }
}

template <class T>
__device__ __forceinline__ void threshold_bwd(const T* __restrict__ x,  // [n]
                                              const T* dy,              // [n], may alias dx
                                              T* dx,                    // [n]
                                              float tau, aiec::u64 n) {
  using aiec::u64;
  const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x;
  const u64 a = aiec::addr(x);
  const AiecSplit s = aiec_split<T>(a, (a ^ aiec::addr(dy)) | (a ^ aiec::addr(dx)), n);
  for (u64 k = tid; k < s.nvec; k += stride) {
    const u64 i = s.head + k * aiec::Pack16<T>::N;
    aiec::Pack16<T> px, pg;
    px.u = aiec::ld16(x + i);
    pg.u = aiec::ld16(dy + i);
    for (int j = 0; j < aiec::Pack16<T>::N; ++j) pg.v[j] = aiec_keep(px.v[j], tau) ? pg.v[j] : T{};
    aiec::st16(dx + i, pg.u);
  }
  const u64 nscalar = s.head + (n - s.vec_end);
  for (u64 k = tid; k < nscalar; k += stride) {
    const u64 i = k < s.head ? k : s.vec_end + (k - s.head);
    const T g = dy[i];
    dx[i] = aiec_keep(x[i], tau) ? g : T{};
  }
}

AIEC_EXPORT(threshold_fwd, (const T* __restrict__ x, T* __restrict__ y, float tau, aiec::u64 n), (x, y, tau, n))
AIEC_EXPORT(threshold_bwd, (const T* __restrict__ x, const T* dy, T* dx, float tau, aiec::u64 n),
            (x, dy, dx, tau, n))
