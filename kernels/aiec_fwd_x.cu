/* aiec_fwd_x.cu - the activation pass of an AIEC training forward (docs/SPEC.md "Forward" 1 and 3): ONE read of x
 * gives the threshold output y, the keep bits the backward needs and the pooled vector v.
 *
 *   aiec_fwd_x_tokens_<dtype>(x, y, keep, v, targets, status, device_error, s)
 *        x, y: [B, P, C] channels last; pool token (0), avg_token (1), none (3, P = 1)
 *   aiec_fwd_x_hw_<dtype>(x, y, keep, v, targets, status, device_error, s)
 *        x, y: [B, C, P] positions last; pool avg_hw (2)
 *
 * dtype: f32, f16, bf16. y = x where NOT x <= tau (bits copied, NaN kept), else +0. keep: ceil(n/32) u32 words,
 * n = B*P*C, bit i%32 of word i/32 = NOT x[i] <= tau, LSB first; every word is written whole, bits past n are 0.
 * v: f32 [B, C]: token/none v[b,c] = float(y[b,0,c]); avg modes (sum over p of float(y)) / (float)P.
 * v may be null (a forward without targets: y and keep only). targets (i64 [B]) may be null; when given, block
 * (0, 0) first checks them against K = s.classes (aiec_k::check_targets: writes *status, and the first error since
 * the host last looked into *device_error, which may be null), so that aiec_fwd_logits can refuse to count a
 * step with a bad target; the rest of the pass does not read targets.
 * Never writes x; y must not alias x. No atomics; the order of every sum is fixed by the geometry (deterministic).
 * Geometry (block MUST be 256 threads = 8 warps; V = 16 / sizeof(T): 4 for f32, 8 for f16/bf16):
 *   tokens, avg_token: grid = (ceil(C / (32*V)), min(B, 65535)), block 256, no dynamic shared memory. Block
 *     (bx, by) owns the channels [bx*32V, bx*32V + 32V) of samples b = by, by + gridDim.y, ...; lane l of warp w
 *     owns the V channels from (bx*32 + l)*V at the positions p = w, w+8, ... (4 rows in flight per warp); the
 *     partial sums of the 8 warps are added in warp order in static shared memory (8 KiB).
 *   tokens, token and none: grid = (ceil(C / (32*V)), min(ceil(B*P / 32), 65535)): the B*P rows (r = b*P + p) are
 *     spread over the grid, 32 per block step (warp w: rows r0 + w + 8u, u < 4), so that P = 1 keeps all warps busy;
 *     v is written by the warp that holds row p = 0 of a sample. (Any gridDim.y is correct in every mode.)
 *   hw: grid = min(ceil(B*C / 8), 2^31 - 1), block 256: warp w of block bx owns the rows r = bx*8 + w,
 *     r + 8*gridDim.x, ... (r = b*C + c); lane l owns V consecutive positions of each 32V-position chunk of the row;
 *     v by a per-lane sum and an xor-butterfly warp sum.
 * Vector path (16-byte loads/stores) when x and y are 16-byte aligned and C % V == 0 (tokens) / P % V == 0 (hw);
 * else the same geometry one element at a time, one row per step. __launch_bounds__(256, 3) (<= 80 registers, no
 * spills on sm_75/80/90): 24 warps per SM, each lane with 4 16-byte loads in flight on the vector path. The four
 * (vector?, shuffle keep?) variants are separate __noinline__ functions so that each gets its own registers; they
 * take the shape by value (by reference it went through a 48-byte stack frame in local memory). Keep words: when C % 32 == 0 (tokens) / P % 32 == 0 (hw) the 32/V
 * lanes that own one word OR their bits by shuffles and the first stores it; otherwise the thread owning element
 * i with i % 32 == 0 builds that word alone by re-reading x[i .. min(i+32, n)) (one writer per word).
 */
#include "common.cuh"
#include "aiec_params.cuh"

namespace aiec_fx {
using aiec::Pack16;
using aiec::u32;
using aiec::u64;
using aiec_k::min64;
constexpr int WARPS = 8, UNROLL = 4;

// Loads the lane's chunk x[i0 .. i0 + cnt) (cnt <= V; elements past cnt read as 0).
template <bool VEC, class T>
__device__ __forceinline__ void load(const T* __restrict__ x, u64 i0, int cnt, Pack16<T>& p) {
  if (VEC && cnt == Pack16<T>::N) {
    p.u = aiec::ld16(x + i0);
  } else {
    AIEC_UNROLL
    for (int j = 0; j < Pack16<T>::N; ++j) p.v[j] = j < cnt ? x[i0 + j] : T{};
  }
}

// Thresholds the chunk in place, stores it as y, adds float(y) to acc[j]; returns its keep bits (bit j: i0 + j).
template <bool VEC, class T>
__device__ __forceinline__ u32 apply(Pack16<T>& p, T* __restrict__ y, u64 i0, int cnt, float tau, float* acc) {
  u32 bits = 0;
  AIEC_UNROLL
  for (int j = 0; j < Pack16<T>::N; ++j) {
    const bool k = j < cnt && aiec_k::keeps(p.v[j], tau);
    bits |= (u32)k << j;
    if (!k) p.v[j] = T{};
    acc[j] += aiec::to_float(p.v[j]);
  }
  if (VEC && cnt == Pack16<T>::N) {
    aiec::st16(y + i0, p.u);
  } else {
    AIEC_UNROLL
    for (int j = 0; j < Pack16<T>::N; ++j)
      if (j < cnt) y[i0 + j] = p.v[j];
  }
  return bits;
}

// Stores the keep bits of the chunk [i0, i0 + cnt). fast: groups of 32/V consecutive lanes own whole aligned words
// (all 32 lanes must call, idle lanes with cnt = 0); else the owner of a word start builds the word from x.
template <bool FAST, class T>
__device__ __forceinline__ void store_keep(u32* __restrict__ keep, const T* __restrict__ x, u32 bits, u64 i0,
                                           int cnt, u64 n, float tau) {
  constexpr int V = Pack16<T>::N, G = 32 / V;
  if (FAST) {
    u32 w = cnt ? bits << (i0 & 31) : 0u;
    AIEC_UNROLL
    for (int o = 1; o < G; o <<= 1) w |= __shfl_xor_sync(0xffffffffu, w, o);
    if (cnt && (threadIdx.x & (G - 1)) == 0) keep[i0 >> 5] = w;
  } else if (cnt) {
    const u64 ws = (i0 + 31) & ~(u64)31;
    if (ws < i0 + (u64)cnt) keep[ws >> 5] = aiec_k::keep_word(x, ws, n, tau);
  }
}

// One block's part of the tokens layout (see the file comment); VEC / FAST: the 16-byte path / the shuffle keep path.
template <bool VEC, bool FAST, class T>
__device__ __noinline__ void tokens_body(const T* __restrict__ x, T* __restrict__ y, u32* __restrict__ keep,
                                            float* __restrict__ v, AiecShape s, float* red) {
  constexpr int V = Pack16<T>::N, U = VEC ? UNROLL : 1;  // the scalar path: one row at a time (registers)
  const u64 B = s.batch, P = s.positions, C = s.channels, n = B * P * C;
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const u64 c0 = ((u64)blockIdx.x * 32 + lane) * V;
  const int cnt = c0 < C ? (int)min64(V, C - c0) : 0;
  const bool avg = s.pool == AIEC_POOL_AVG_TOKEN || s.pool == AIEC_POOL_AVG_HW;
  if (!avg) {
    // token / none: no sum across rows, so the B*P rows are spread over the warps of the grid (8*U rows per
    // block step, warp w taking rows r0 + w, r0 + w + 8, ...): all 8 warps stay busy even when P = 1.
    const u64 R = B * P;
    float unused[V];
    for (u64 r0 = (u64)blockIdx.y * WARPS * U; r0 < R; r0 += (u64)gridDim.y * WARPS * U) {  // block-uniform
      Pack16<T> px[U];
      AIEC_UNROLL
      for (int u = 0; u < U; ++u) {
        const u64 r = r0 + (u64)u * WARPS + warp;
        if (r < R) load<VEC>(x, r * C + c0, cnt, px[u]);
      }
      AIEC_UNROLL
      for (int u = 0; u < U; ++u) {
        const u64 r = r0 + (u64)u * WARPS + warp;
        if (r >= R) continue;  // warp-uniform
        const u32 bits = apply<VEC>(px[u], y, r * C + c0, cnt, s.tau, unused);
        if (v && r % P == 0) {  // the class token (or the only position): v = y there
          const u64 b = r / P;
          AIEC_UNROLL
          for (int j = 0; j < V; ++j)
            if (j < cnt) v[b * C + c0 + j] = aiec::to_float(px[u].v[j]);
        }
        store_keep<FAST>(keep, x, bits, r * C + c0, cnt, n, s.tau);
      }
    }
    return;
  }
  for (u64 b = blockIdx.y; b < B; b += gridDim.y) {  // block-uniform
    float acc[V];
    AIEC_UNROLL
    for (int j = 0; j < V; ++j) acc[j] = 0.0f;
    for (u64 p0 = (u64)warp; p0 < P; p0 += WARPS * U) {  // warp-uniform
      Pack16<T> px[U];
      AIEC_UNROLL
      for (int u = 0; u < U; ++u) {
        const u64 p = p0 + (u64)u * WARPS;
        if (p < P) load<VEC>(x, (b * P + p) * C + c0, cnt, px[u]);
      }
      AIEC_UNROLL
      for (int u = 0; u < U; ++u) {
        const u64 p = p0 + (u64)u * WARPS;
        if (p >= P) continue;  // warp-uniform (and so are the later u)
        const u64 i0 = (b * P + p) * C + c0;
        const u32 bits = apply<VEC>(px[u], y, i0, cnt, s.tau, acc);
        store_keep<FAST>(keep, x, bits, i0, cnt, n, s.tau);
      }
    }
    {  // avg_token: add the 8 warps' partial sums in warp order
      AIEC_UNROLL
      for (int j = 0; j < V; ++j) red[warp * 32 * V + lane * V + j] = acc[j];
      __syncthreads();
      if (threadIdx.x < 32u * V) {
        const u64 c = (u64)blockIdx.x * 32 * V + threadIdx.x;
        float sum = red[threadIdx.x];
        AIEC_UNROLL
        for (int w = 1; w < WARPS; ++w) sum += red[w * 32 * V + threadIdx.x];
        if (c < C && v) v[b * C + c] = sum / (float)P;
      }
      __syncthreads();  // red is reused by the next sample
    }
  }
}

// One warp's rows of the hw layout (see the file comment).
template <bool VEC, bool FAST, class T>
__device__ __noinline__ void hw_body(const T* __restrict__ x, T* __restrict__ y, u32* __restrict__ keep,
                                        float* __restrict__ v, AiecShape s) {
  constexpr int V = Pack16<T>::N, CHUNK = 32 * V, U = VEC ? UNROLL : 1;
  const u64 P = s.positions, rows = s.batch * s.channels, n = rows * P;
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  for (u64 r = (u64)blockIdx.x * WARPS + warp; r < rows; r += (u64)gridDim.x * WARPS) {  // warp-uniform
    float acc[V];
    AIEC_UNROLL
    for (int j = 0; j < V; ++j) acc[j] = 0.0f;
    for (u64 q0 = 0; q0 < P; q0 += (u64)CHUNK * U) {
      Pack16<T> px[U];
      AIEC_UNROLL
      for (int u = 0; u < U; ++u) {
        const u64 q = q0 + (u64)u * CHUNK + (u64)lane * V;
        load<VEC>(x, r * P + q, q < P ? (int)min64(V, P - q) : 0, px[u]);
      }
      AIEC_UNROLL
      for (int u = 0; u < U; ++u) {
        if (q0 + (u64)u * CHUNK >= P) continue;  // warp-uniform
        const u64 q = q0 + (u64)u * CHUNK + (u64)lane * V;
        const int cnt = q < P ? (int)min64(V, P - q) : 0;
        const u32 bits = apply<VEC>(px[u], y, r * P + q, cnt, s.tau, acc);
        store_keep<FAST>(keep, x, bits, r * P + q, cnt, n, s.tau);
      }
    }
    float sum = acc[0];
    AIEC_UNROLL
    for (int j = 1; j < V; ++j) sum += acc[j];
    sum = aiec_k::warp_sum(sum);
    if (lane == 0 && v) v[r] = sum / (float)P;
  }
}
}  // namespace aiec_fx

// The targets check, by block (0, 0) only (block-uniform: its barriers are safe), before the pass.
__device__ __forceinline__ void aiec_fwd_x_check(const long long* __restrict__ targets, AiecTargetStatus* status,
                                                 AiecTargetStatus* device_error, const AiecShape& s) {
  __shared__ aiec::u64 scan[256];
  if (targets && blockIdx.x == 0 && blockIdx.y == 0)
    aiec_k::check_targets(targets, s.batch, s.classes, status, device_error, scan);
}

template <class T>
__device__ __forceinline__ void aiec_fwd_x_tokens(const T* __restrict__ x,                  // [B, P, C]
                                                  T* __restrict__ y,                        // [B, P, C]
                                                  aiec::u32* __restrict__ keep,             // [ceil(B*P*C / 32)]
                                                  float* __restrict__ v,                    // [B, C] or null
                                                  const long long* __restrict__ targets,    // [B] or null
                                                  AiecTargetStatus* status,                 // [1] (with targets)
                                                  AiecTargetStatus* device_error,           // [1] or null
                                                  AiecShape s) {
  __shared__ float red[aiec_fx::WARPS * 32 * 8];  // [warp][32V] partial sums of avg_token (sized for V = 8)
  aiec_fwd_x_check(targets, status, device_error, s);
  const aiec::u64 C = s.channels, V = aiec::Pack16<T>::N;
  const bool vec = C % V == 0 && ((aiec::addr(x) | aiec::addr(y)) & 15) == 0, fast = C % 32 == 0;
  if (vec && fast) aiec_fx::tokens_body<true, true>(x, y, keep, v, s, red);
  else if (vec) aiec_fx::tokens_body<true, false>(x, y, keep, v, s, red);
  else if (fast) aiec_fx::tokens_body<false, true>(x, y, keep, v, s, red);
  else aiec_fx::tokens_body<false, false>(x, y, keep, v, s, red);
}

template <class T>
__device__ __forceinline__ void aiec_fwd_x_hw(const T* __restrict__ x,                  // [B, C, P]
                                              T* __restrict__ y,                        // [B, C, P]
                                              aiec::u32* __restrict__ keep,             // [ceil(B*C*P / 32)]
                                              float* __restrict__ v,                    // [B, C] or null
                                              const long long* __restrict__ targets,    // [B] or null
                                              AiecTargetStatus* status,                 // [1] (with targets)
                                              AiecTargetStatus* device_error,           // [1] or null
                                              AiecShape s) {
  aiec_fwd_x_check(targets, status, device_error, s);
  const aiec::u64 P = s.positions, V = aiec::Pack16<T>::N;
  const bool vec = P % V == 0 && ((aiec::addr(x) | aiec::addr(y)) & 15) == 0, fast = P % 32 == 0;
  if (vec && fast) aiec_fx::hw_body<true, true>(x, y, keep, v, s);
  else if (vec) aiec_fx::hw_body<true, false>(x, y, keep, v, s);
  else if (fast) aiec_fx::hw_body<false, true>(x, y, keep, v, s);
  else aiec_fx::hw_body<false, false>(x, y, keep, v, s);
}

AIEC_EXPORT_LB(aiec_fwd_x_tokens, AIEC_LB_X,
               (const T* __restrict__ x, T* __restrict__ y, aiec::u32* __restrict__ keep, float* __restrict__ v,
                const long long* __restrict__ targets, AiecTargetStatus* status, AiecTargetStatus* device_error,
                AiecShape s),
               (x, y, keep, v, targets, status, device_error, s))
AIEC_EXPORT_LB(aiec_fwd_x_hw, AIEC_LB_X,
               (const T* __restrict__ x, T* __restrict__ y, aiec::u32* __restrict__ keep, float* __restrict__ v,
                const long long* __restrict__ targets, AiecTargetStatus* status, AiecTargetStatus* device_error,
                AiecShape s),
               (x, y, keep, v, targets, status, device_error, s))
