/* aiec_bwd_x.cu - the activation pass of an AIEC backward (docs/SPEC.md "Backward", last two rules): ONE read of dy
 * and of the keep bits gives dx = keep ? dy + unpool(dv) : +0. Fuses the unpooling (dy_total is never written).
 *
 *   aiec_bwd_x_tokens_<dtype>(dy, keep, dv, dx, s)   dy, dx: [B, P, C]; pool token (0), avg_token (1), none (3)
 *   aiec_bwd_x_hw_<dtype>(dy, keep, dv, dx, s)       dy, dx: [B, C, P]; pool avg_hw (2)
 *
 * dtype: f32, f16, bf16. keep: the forward's bits (aiec_fwd_x.cu). dv: f32 [B, C], or null for a forward without
 * targets (then dx = keep ? dy : +0, dy's bits copied). u = unpool(dv)[b, c, p]:
 * token: dv[b,c] at p == 0 only; avg_token / avg_hw: dv[b,c] / (float)P at every p; none: dv[b,c].
 * dx[i] = keep bit ? from_float(to_float(dy[i]) + u) : +0, except where u is absent (token mode, p != 0):
 * there a kept dy is copied bit for bit, as the CPU reference leaves dy_total = dy there.
 * Writes only dx; dx MAY alias dy (in-place; each element is read then written by the same thread).
 * No shared memory, no atomics, no barriers.
 * Geometry (block MUST be 256 threads = 8 warps; V = 16 / sizeof(T): 4 for f32, 8 for f16/bf16), as aiec_fwd_x:
 *   tokens, avg_token: grid = (ceil(C / (32*V)), min(B, 65535)), block 256: lane l of warp w of block (bx, by)
 *     owns channels [(bx*32 + l)*V, +V) of samples by, by + gridDim.y, ... at positions p = w, w+8, ...
 *   tokens, token and none: grid = (ceil(C / (32*V)), min(ceil(B*P / 32), 65535)): rows r = b*P + p spread over
 *     the grid, 32 per block step, as aiec_fwd_x. (Any gridDim.y is correct in every mode.)
 *   hw: grid = min(ceil(B*C / 8), 2^31 - 1), block 256: one warp per row r = b*C + c (r = bx*8 + w, then
 *     + 8*gridDim.x), lane l owns V consecutive positions of each 32V-position chunk.
 * Vector path (16-byte dy loads / dx stores, one keep word per chunk) when dy and dx are 16-byte aligned and
 * C % V == 0 (tokens) / P % V == 0 (hw); else one element at a time. 4 rows (chunks) in flight per warp;
 * __launch_bounds__(256, 3), no spills on sm_75/80/90.
 */
#include "common.cuh"
#include "aiec_params.cuh"

namespace aiec_bx {
using aiec::Pack16;
using aiec::u32;
using aiec::u64;
using aiec_k::min64;
constexpr int WARPS = 8, UNROLL = 4;

template <class T>
__device__ __forceinline__ void load(const T* dy, const u32* __restrict__ keep, u64 i0, int cnt, bool vec,
                                     Pack16<T>& p, u32& bits) {
  constexpr int V = Pack16<T>::N;
  if (vec && cnt == V) {  // i0 % V == 0: the chunk lies in one keep word
    p.u = aiec::ld16(dy + i0);
    bits = (keep[i0 >> 5] >> (i0 & 31)) & ((1u << V) - 1u);
  } else {
    bits = 0;
    AIEC_UNROLL
    for (int j = 0; j < V; ++j) {
      const u64 i = i0 + j;
      p.v[j] = j < cnt ? dy[i] : T{};
      if (j < cnt) bits |= ((keep[i >> 5] >> (i & 31)) & 1u) << j;
    }
  }
}

// dx for the chunk: kept elements get dy + u[j] (add) or dy's bits (!add), dropped ones +0.
template <class T>
__device__ __forceinline__ void apply(Pack16<T>& p, u32 bits, const float* u, bool add, T* dx, u64 i0, int cnt,
                                      bool vec) {
  constexpr int V = Pack16<T>::N;
  AIEC_UNROLL
  for (int j = 0; j < V; ++j) {
    if (!((bits >> j) & 1u)) p.v[j] = T{};
    else if (add) p.v[j] = aiec::from_float<T>(aiec::to_float(p.v[j]) + u[j]);
  }
  if (vec && cnt == V) {
    aiec::st16(dx + i0, p.u);
  } else {
    AIEC_UNROLL
    for (int j = 0; j < V; ++j)
      if (j < cnt) dx[i0 + j] = p.v[j];
  }
}
}  // namespace aiec_bx

template <class T>
__device__ __forceinline__ void aiec_bwd_x_tokens(const T* dy,                         // [B, P, C], may alias dx
                                                  const aiec::u32* __restrict__ keep,  // [ceil(B*P*C / 32)]
                                                  const float* __restrict__ dv,        // [B, C] or null
                                                  T* dx,                               // [B, P, C]
                                                  AiecShape s) {
  using namespace aiec_bx;
  constexpr int V = Pack16<T>::N;
  const u64 B = s.batch, P = s.positions, C = s.channels;
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const u64 c0 = ((u64)blockIdx.x * 32 + lane) * V;
  const int cnt = c0 < C ? (int)min64(V, C - c0) : 0;
  if (!cnt) return;  // no barriers, no warp ops below
  const bool vec = C % V == 0 && ((aiec::addr(dy) | aiec::addr(dx)) & 15) == 0;
  const bool avg = s.pool == AIEC_POOL_AVG_TOKEN || s.pool == AIEC_POOL_AVG_HW;
  const bool token = s.pool == AIEC_POOL_TOKEN;
  if (!avg) {
    // token / none: rows r = b*P + p spread over the grid (as aiec_fwd_x); dv is added at p == 0 only.
    const u64 R = B * P;
    for (u64 r0 = (u64)blockIdx.y * WARPS * UNROLL; r0 < R; r0 += (u64)gridDim.y * WARPS * UNROLL) {
      Pack16<T> pg[UNROLL];
      u32 bits[UNROLL];
      AIEC_UNROLL
      for (int q = 0; q < UNROLL; ++q) {
        const u64 r = r0 + (u64)q * WARPS + warp;
        if (r < R) load(dy, keep, r * C + c0, cnt, vec, pg[q], bits[q]);
      }
      AIEC_UNROLL
      for (int q = 0; q < UNROLL; ++q) {
        const u64 r = r0 + (u64)q * WARPS + warp;
        if (r >= R) continue;
        const bool add = dv && (!token || r % P == 0);
        float u[V];
        AIEC_UNROLL
        for (int j = 0; j < V; ++j) u[j] = add && j < cnt ? dv[(r / P) * C + c0 + j] : 0.0f;
        apply(pg[q], bits[q], u, add, dx, r * C + c0, cnt, vec);
      }
    }
    return;
  }
  for (u64 b = blockIdx.y; b < B; b += gridDim.y) {
    float u[V];
    AIEC_UNROLL
    for (int j = 0; j < V; ++j) {
      u[j] = j < cnt && dv ? dv[b * C + c0 + j] : 0.0f;
      if (avg) u[j] = u[j] / (float)P;
    }
    for (u64 p0 = (u64)warp; p0 < P; p0 += WARPS * UNROLL) {
      Pack16<T> pg[UNROLL];
      u32 bits[UNROLL];
      AIEC_UNROLL
      for (int q = 0; q < UNROLL; ++q) {
        const u64 p = p0 + (u64)q * WARPS;
        if (p < P) load(dy, keep, (b * P + p) * C + c0, cnt, vec, pg[q], bits[q]);
      }
      AIEC_UNROLL
      for (int q = 0; q < UNROLL; ++q) {
        const u64 p = p0 + (u64)q * WARPS;
        if (p >= P) continue;  // warp-uniform (and so are the later u)
        apply(pg[q], bits[q], u, dv && (!token || p == 0), dx, (b * P + p) * C + c0, cnt, vec);
      }
    }
  }
}

template <class T>
__device__ __forceinline__ void aiec_bwd_x_hw(const T* dy,                         // [B, C, P], may alias dx
                                              const aiec::u32* __restrict__ keep,  // [ceil(B*C*P / 32)]
                                              const float* __restrict__ dv,        // [B, C] or null
                                              T* dx,                               // [B, C, P]
                                              AiecShape s) {
  using namespace aiec_bx;
  constexpr int V = Pack16<T>::N, CHUNK = 32 * V;
  const u64 P = s.positions, rows = s.batch * s.channels;
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const bool vec = P % V == 0 && ((aiec::addr(dy) | aiec::addr(dx)) & 15) == 0;
  for (u64 r = (u64)blockIdx.x * WARPS + warp; r < rows; r += (u64)gridDim.x * WARPS) {
    const float g = dv ? dv[r] / (float)P : 0.0f;
    float u[V];
    AIEC_UNROLL
    for (int j = 0; j < V; ++j) u[j] = g;
    for (u64 q0 = (u64)lane * V; q0 < P; q0 += (u64)CHUNK * UNROLL) {
      Pack16<T> pg[UNROLL];
      u32 bits[UNROLL];
      AIEC_UNROLL
      for (int q = 0; q < UNROLL; ++q) {
        const u64 pos = q0 + (u64)q * CHUNK;
        if (pos < P) load(dy, keep, r * P + pos, (int)min64(V, P - pos), vec, pg[q], bits[q]);
      }
      AIEC_UNROLL
      for (int q = 0; q < UNROLL; ++q) {
        const u64 pos = q0 + (u64)q * CHUNK;
        if (pos >= P) continue;
        apply(pg[q], bits[q], u, dv != nullptr, dx, r * P + pos, (int)min64(V, P - pos), vec);
      }
    }
  }
}

AIEC_EXPORT_LB(aiec_bwd_x_tokens, AIEC_LB_X,
               (const T* dy, const aiec::u32* __restrict__ keep, const float* __restrict__ dv, T* dx, AiecShape s),
               (dy, keep, dv, dx, s))
AIEC_EXPORT_LB(aiec_bwd_x_hw, AIEC_LB_X,
               (const T* dy, const aiec::u32* __restrict__ keep, const float* __restrict__ dv, T* dx, AiecShape s),
               (dy, keep, dv, dx, s))
