/* aiec_bwd_x.cu - the activation pass of an AIEC backward (docs/SPEC.md "Backward", last two rules): ONE read of dy
 * and of the keep bits gives dx = keep ? dy + unpool(dv) : +0. Fuses the unpooling (dy_total is never written).
 *
 *   aiec_bwd_x_tokens_<dtype>(dy, keep, dv, dx, s)   dy, dx: [B, P, C]; pool token (0), avg_token (1), none (3)
 *   aiec_bwd_x_hw_<dtype>(dy, keep, dv, dx, s)       dy, dx: [B, C, P]; pool avg_hw (2)
 *
 * dtype: f32, f16, bf16. keep: the forward's bits (aiec_fwd_x.cu: row by row, each row from a word). dv: f32 [B, C],
 * or null for a forward without targets (then dx = keep ? dy : +0, dy's bits copied). u = unpool(dv)[b, c, p]:
 * token: dv[b,c] at p == 0 only; avg_token / avg_hw: dv[b,c] / (float)P at every p; none: dv[b,c].
 * dx[i] = keep bit ? from_float(to_float(dy[i]) + u) : +0, except where u is absent (token mode, p != 0):
 * there a kept dy is copied bit for bit, as the CPU reference leaves dy_total = dy there.
 * Writes only dx; dx MAY alias dy (in-place; each element is read then written by the same thread).
 * No shared memory, no atomics, no barriers.
 * Geometry (block MUST be 256 threads = 8 warps; V = 16 / sizeof(T): 4 for f32, 8 for f16/bf16), as aiec_fwd_x
 * (any grid is correct; the plans cap it at one wave of 3 blocks per SM, so that every block streams many steps):
 *   tokens, avg_token: grid = (ceil(C / (32*V)), min(B, cap)), block 256: warp w of block (bx, by) owns V
 *     channels per lane of the block's 32V at samples by, by + gridDim.y, ... and positions p = w, w+8, ...
 *   tokens, token and none: grid = (ceil(C / (32*V)), min(ceil(B*P / 32), cap)): rows r = b*P + p spread over
 *     the grid, 32 per block step, as aiec_fwd_x, (b, p) carried from step to step.
 *   hw: grid = min(ceil(B*C / 8), cap), block 256: one warp per row r = b*C + c (r = bx*8 + w, then
 *     + 8*gridDim.x), 4 chunks of 32V positions per step.
 * Access width W and the lanes' sub-vectors as aiec_fwd_x (W from the row length and the dy / dx alignment, and for
 * token and none the dv alignment, read min(W, 4) floats per load): each sub-vector's W keep bits come from one word. 4
 * rows (chunks) per step in a rotating buffer, each reloaded with the next step's row (dy and its keep words) as soon
 * as it is processed (about 4 loads per lane in flight); __launch_bounds__(256, 3), no spills on sm_75/80/90.
 */
#include "common.cuh"
#include "aiec_params.cuh"

namespace aiec_bx {
using aiec::Pack16;
using aiec::u32;
using aiec::u64;
using aiec_k::min64;
constexpr int WARPS = 8, UNROLL = 4;

template <int W> __device__ __forceinline__ u64 sub_off(int j, int lane) { return (u64)j * 32 * W + (u64)lane * W; }

// Loads the lane's chunk of dy at row offset base (sub-vectors past the row read as 0) and its keep bits (bits
// j*W + e: sub-vector j's W bits, from the row's words krow).
template <int W, class T>
__device__ __forceinline__ void load(const T* dyrow, const u32* __restrict__ krow, u64 base, u64 len, int lane,
                                     Pack16<T>& p, u32& bits) {
  constexpr int V = Pack16<T>::N, NJ = V / W;
  bits = 0;
  if constexpr (W == V) {
    const u64 o = base + sub_off<W>(0, lane);
    if (o < len) {
      p.u = aiec::ld16(dyrow + o);
      bits = (krow[o >> 5] >> (o & 31)) & ((1u << V) - 1u);
    } else {
      p.u = uint4{0u, 0u, 0u, 0u};
    }
  } else {
    AIEC_UNROLL
    for (int j = 0; j < NJ; ++j) {
      const u64 o = base + sub_off<W>(j, lane);
      if (o < len) {
        aiec_k::ldvec<W>(dyrow + o, p.v + j * W);
        bits |= ((krow[o >> 5] >> (o & 31)) & ((1u << W) - 1u)) << (j * W);
      } else {
        AIEC_UNROLL
        for (int e = 0; e < W; ++e) p.v[j * W + e] = T{};
      }
    }
  }
}

// Adds u[slot] to every element of the chunk (dy + u, rounded to T): the rows unpool(dv) reaches. The caller branches
// on whether the row is one (warp-uniform).
template <class T> __device__ __forceinline__ void add(Pack16<T>& p, const float* u) {
  AIEC_UNROLL
  for (int i = 0; i < Pack16<T>::N; ++i) p.v[i] = aiec::from_float<T>(aiec::to_float(p.v[i]) + u[i]);
}

// Stores the chunk as dx with its dropped elements +0 and its kept ones as they are (dy's bits, or dy + u after
// add). The keep bits differ from lane to lane, so they select by masks (aiec_k::keep_only), not by branches.
template <int W, class T>
__device__ __forceinline__ void store_kept(Pack16<T>& p, u32 bits, T* dxrow, u64 base, u64 len, int lane) {
  constexpr int V = Pack16<T>::N, NJ = V / W;
  aiec_k::keep_only(p, bits);
  if constexpr (W == V) {
    const u64 o = base + sub_off<W>(0, lane);
    if (o < len) aiec::st16(dxrow + o, p.u);
  } else {
    AIEC_UNROLL
    for (int j = 0; j < NJ; ++j) {
      const u64 o = base + sub_off<W>(j, lane);
      if (o < len) aiec_k::stvec<W>(dxrow + o, p.v + j * W);
    }
  }
}

// The tokens layout (see the file comment), with access width W.
template <int W, class T>
__device__ __noinline__ void tokens_rows(const T* dy, const u32* __restrict__ keep, const float* __restrict__ dv,
                                         T* dx, AiecShape s) {
  constexpr int V = Pack16<T>::N, NJ = V / W, F = aiec_k::v_floats(W);
  constexpr int U = W * 8 <= V ? 1 : W * 4 <= V ? 2 : UNROLL;  // narrower accesses, fewer rows per step
  const u64 B = s.batch, P = s.positions, C = s.channels, wpr = aiec_k::keep_words_per_row(C);
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const u64 base = (u64)blockIdx.x * 32 * V;
  if (base + sub_off<W>(0, lane) >= C) return;  // no channel for this lane (no barriers, no warp ops below)
  const bool token = s.pool == AIEC_POOL_TOKEN;
  Pack16<T> cur[U];  // a rotating buffer (aiec_fwd_x.cu): row u of this step, then of the next
  u32 cb[U];
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) {
    cur[u].u = uint4{0u, 0u, 0u, 0u};
    cb[u] = 0;
  }
  // token / none: rows r = b*P + p spread over the grid (as aiec_fwd_x); dv is added at p == 0 only.
  const u64 R = B * P, step = (u64)gridDim.y * WARPS * U, sp = step % P;
  u64 r0 = (u64)blockIdx.y * WARPS * U, rp[U];
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) {
    const u64 r = r0 + (u64)u * WARPS + warp;
    rp[u] = r % P;
    if (r < R) load<W>(dy + r * C, keep + r * wpr, base, C, lane, cur[u], cb[u]);
  }
  for (; r0 < R; r0 += step) {
    AIEC_UNROLL
    for (int u = 0; u < U; ++u) {
      const u64 r = r0 + (u64)u * WARPS + warp;
      if (r < R) {
        if (dv && (!token || rp[u] == 0)) {  // a row dv reaches (warp-uniform)
          const u64 b = P == 1 ? r : r / P;  // one division per sample, none per row
          float uu[V];
          AIEC_UNROLL
          for (int j = 0; j < NJ; ++j) {
            const u64 o = base + sub_off<W>(j, lane);
            if (o < C) {  // v_floats(W) floats per load (dv is aligned to them: aiec_k::v_bits)
              AIEC_UNROLL
              for (int q = 0; q < W; q += F) aiec_k::ldvec<F>(dv + b * C + o + q, uu + j * W + q);
            } else {
              AIEC_UNROLL
              for (int e = 0; e < W; ++e) uu[j * W + e] = 0.0f;
            }
          }
          add(cur[u], uu);
        }
        store_kept<W>(cur[u], cb[u], dx + r * C, base, C, lane);
      }
      const u64 rn = r + step;  // the next step's row u, in flight while the later rows are processed
      if (rn < R) load<W>(dy + rn * C, keep + rn * wpr, base, C, lane, cur[u], cb[u]);
      rp[u] += sp;
      if (rp[u] >= P) rp[u] -= P;
    }
  }
}

template <int W, class T>
__device__ __noinline__ void tokens_avg(const T* dy, const u32* __restrict__ keep, const float* __restrict__ dv,
                                         T* dx, AiecShape s) {
  constexpr int V = Pack16<T>::N, NJ = V / W;
  constexpr int U = W * 8 <= V ? 1 : W * 4 <= V ? 2 : UNROLL;  // narrower accesses, fewer rows per step
  const u64 B = s.batch, P = s.positions, C = s.channels, wpr = aiec_k::keep_words_per_row(C);
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const u64 base = (u64)blockIdx.x * 32 * V;
  if (base + sub_off<W>(0, lane) >= C) return;  // no channel for this lane (no barriers, no warp ops below)
  Pack16<T> cur[U];  // a rotating buffer (aiec_fwd_x.cu): row u of this step, then of the next
  u32 cb[U];
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) {
    cur[u].u = uint4{0u, 0u, 0u, 0u};
    cb[u] = 0;
  }
  const u64 bstep = gridDim.y;
  u64 b = blockIdx.y, p0 = (u64)warp;
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) {
    const u64 p = p0 + (u64)u * WARPS;
    if (b < B && p < P) load<W>(dy + (b * P + p) * C, keep + (b * P + p) * wpr, base, C, lane, cur[u], cb[u]);
  }
  for (; b < B; b += bstep, p0 = (u64)warp) {
    float uu[V];
    AIEC_UNROLL
    for (int j = 0; j < NJ; ++j) {
      const u64 o = base + sub_off<W>(j, lane);
      AIEC_UNROLL
      for (int e = 0; e < W; ++e) uu[j * W + e] = (o < C && dv ? dv[b * C + o + e] : 0.0f) / (float)P;
    }
    for (; p0 < P;) {  // warp-uniform
      u64 b1 = b, np = p0 + WARPS * U;
      if (np >= P) {
        b1 = b + bstep;
        np = (u64)warp;
      }
      AIEC_UNROLL
      for (int u = 0; u < U; ++u) {
        const u64 p = p0 + (u64)u * WARPS;
        if (p < P) {
          if (dv) add(cur[u], uu);
          store_kept<W>(cur[u], cb[u], dx + (b * P + p) * C, base, C, lane);
        }
        const u64 pn = np + (u64)u * WARPS;  // the next step's row u
        if (b1 < B && pn < P)
          load<W>(dy + (b1 * P + pn) * C, keep + (b1 * P + pn) * wpr, base, C, lane, cur[u], cb[u]);
      }
      if (b1 != b) break;  // the next sample's rows are loaded
      p0 = np;
    }
  }
}

// The tokens layout with access width W: token / none, or avg_token.
template <int W, class T>
__device__ __forceinline__ void tokens_body(const T* dy, const u32* __restrict__ keep, const float* __restrict__ dv,
                                            T* dx, AiecShape s) {
  if (s.pool == AIEC_POOL_AVG_TOKEN || s.pool == AIEC_POOL_AVG_HW) tokens_avg<W>(dy, keep, dv, dx, s);
  else tokens_rows<W>(dy, keep, dv, dx, s);
}

// The hw layout (see the file comment), with access width W.
template <int W, class T>
__device__ __noinline__ void hw_body(const T* dy, const u32* __restrict__ keep, const float* __restrict__ dv, T* dx,
                                     AiecShape s) {
  constexpr int V = Pack16<T>::N, CHUNK = 32 * V;
  constexpr int U = W * 8 <= V ? 1 : W * 4 <= V ? 2 : UNROLL;  // narrower accesses, fewer rows per step
  const u64 P = s.positions, rows = s.batch * s.channels, wpr = aiec_k::keep_words_per_row(P);
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const u64 rstep = (u64)gridDim.x * WARPS;
  Pack16<T> cur[U];  // a rotating buffer: chunk u of this step, then of the next
  u32 cb[U];
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) {
    cur[u].u = uint4{0u, 0u, 0u, 0u};
    cb[u] = 0;
  }
  u64 r = (u64)blockIdx.x * WARPS + warp, q0 = 0;
  AIEC_UNROLL
  for (int u = 0; u < U; ++u)
    if (r < rows) load<W>(dy + r * P, keep + r * wpr, (u64)u * CHUNK, P, lane, cur[u], cb[u]);
  while (r < rows) {  // warp-uniform
    u64 nr = r, nq = q0 + (u64)CHUNK * U;
    if (nq >= P) {
      nr = r + rstep;
      nq = 0;
    }
    const float g = dv ? dv[r] / (float)P : 0.0f;
    float uu[V];
    AIEC_UNROLL
    for (int i = 0; i < V; ++i) uu[i] = g;
    AIEC_UNROLL
    for (int u = 0; u < U; ++u) {
      const u64 q = q0 + (u64)u * CHUNK;
      if (q < P) {
        if (dv) add(cur[u], uu);
        store_kept<W>(cur[u], cb[u], dx + r * P, q, P, lane);
      }
      if (nr < rows) load<W>(dy + nr * P, keep + nr * wpr, nq + (u64)u * CHUNK, P, lane, cur[u], cb[u]);
    }
    r = nr;
    q0 = nq;
  }
}
}  // namespace aiec_bx

template <class T>
__device__ __forceinline__ void aiec_bwd_x_tokens(const T* dy,                         // [B, P, C], may alias dx
                                                  const aiec::u32* __restrict__ keep,  // KeepLayout words
                                                  const float* __restrict__ dv,        // [B, C] or null
                                                  T* dx,                               // [B, P, C]
                                                  AiecShape s) {
  const bool rows_dv = dv && (s.pool == AIEC_POOL_TOKEN || s.pool == AIEC_POOL_NONE);
  const aiec::u64 bits = aiec::addr(dy) | aiec::addr(dx) | aiec_k::v_bits<T>(rows_dv, aiec::addr(dv));
  switch (aiec::vec_width<T>(s.channels, bits)) {
    case 8: aiec_bx::tokens_body<aiec::Pack16<T>::N>(dy, keep, dv, dx, s); break;  // 16-bit types only
    case 4: aiec_bx::tokens_body<4>(dy, keep, dv, dx, s); break;
    case 2: aiec_bx::tokens_body<2>(dy, keep, dv, dx, s); break;
    default: aiec_bx::tokens_body<1>(dy, keep, dv, dx, s); break;
  }
}

template <class T>
__device__ __forceinline__ void aiec_bwd_x_hw(const T* dy,                         // [B, C, P], may alias dx
                                              const aiec::u32* __restrict__ keep,  // KeepLayout words
                                              const float* __restrict__ dv,        // [B, C] or null
                                              T* dx,                               // [B, C, P]
                                              AiecShape s) {
  switch (aiec::vec_width<T>(s.positions, aiec::addr(dy) | aiec::addr(dx))) {
    case 8: aiec_bx::hw_body<aiec::Pack16<T>::N>(dy, keep, dv, dx, s); break;  // 16-bit types only
    case 4: aiec_bx::hw_body<4>(dy, keep, dv, dx, s); break;
    case 2: aiec_bx::hw_body<2>(dy, keep, dv, dx, s); break;
    default: aiec_bx::hw_body<1>(dy, keep, dv, dx, s); break;
  }
}

AIEC_EXPORT_LB(aiec_bwd_x_tokens, AIEC_LB_X,
               (const T* dy, const aiec::u32* __restrict__ keep, const float* __restrict__ dv, T* dx, AiecShape s),
               (dy, keep, dv, dx, s))
AIEC_EXPORT_LB(aiec_bwd_x_hw, AIEC_LB_X,
               (const T* dy, const aiec::u32* __restrict__ keep, const float* __restrict__ dv, T* dx, AiecShape s),
               (dy, keep, dv, dx, s))
