/* aiec_fwd_x.cu - the activation pass of an AIEC training forward (docs/SPEC.md "Forward" 1 and 3): ONE read of x
 * gives the threshold output y, the keep bits the backward needs and the pooled vector v.
 *
 *   aiec_fwd_x_tokens_<dtype>(x, y, keep, v, targets, status, device_error, s)
 *        x, y: [B, P, C] channels last; pool token (0), avg_token (1), none (3, P = 1)
 *   aiec_fwd_x_hw_<dtype>(x, y, keep, v, targets, status, device_error, s)
 *        x, y: [B, C, P] positions last; pool avg_hw (2)
 *
 * dtype: f32, f16, bf16. y = x where NOT x <= tau (bits copied, NaN kept), else +0.
 * keep: one bit per element (NOT x <= tau), row by row, every row starting at a word (aiec_params.cuh, "Keep
 * bits"; launch::KeepLayout): tokens rows are the B*P rows of C channels, hw rows the B*C rows of P positions; a row
 * of L elements has ceil(L / 32) words, element j of row r is bit j % 32 of word r * ceil(L / 32) + j / 32, LSB
 * first; every word is written whole, padding bits are 0.
 * v: f32 [B, C]: token/none v[b,c] = float(y[b,0,c]); avg modes (sum over p of float(y)) / (float)P.
 * v may be null (a forward without targets: y and keep only). targets (i64 [B]) may be null; when given, block
 * (0, 0) first checks them against K = s.classes (aiec_k::check_targets: writes *status, and the first error since
 * the host last looked into *device_error, which may be null), so that aiec_fwd_softmax can refuse to count a
 * step with a bad target; the rest of the pass does not read targets.
 * Never writes x; y must not alias x. No atomics; the order of every sum is fixed by the geometry and the access
 * width W below (deterministic).
 * Geometry (block MUST be 256 threads = 8 warps; V = 16 / sizeof(T): 4 for f32, 8 for f16/bf16). Any grid is
 * correct in every mode; the plans cap it at cap = one wave (launch::ACTIVATION_BLOCKS_PER_SM = 3 blocks per SM),
 * so that every block streams many steps and the rotating buffer below keeps the next step's rows in flight:
 *   tokens, avg_token: grid = (ceil(C / (32*V)), min(B, cap)), block 256, no dynamic shared memory. Block
 *     (bx, by) owns the channels [bx*32V, bx*32V + 32V) of samples b = by, by + gridDim.y, ...; lane l of warp w
 *     owns V of those channels at the positions p = w, w+8, ... (4 rows per step); the partial sums of the 8 warps
 *     are added in warp order in static shared memory (8 KiB).
 *   tokens, token and none: grid = (ceil(C / (32*V)), min(ceil(B*P / 32), cap)): the B*P rows (r = b*P + p) are
 *     spread over the grid, 32 per block step (warp w: rows r0 + w + 8u, u < 4), then r0 += 32*gridDim.y, so that
 *     P = 1 keeps all warps busy; v is written by the warp that holds row p = 0 of a sample; (b, p) is carried from
 *     step to step (no division per row).
 *   hw: grid = min(ceil(B*C / 8), cap), block 256: warp w of block bx owns the rows r = bx*8 + w,
 *     r + 8*gridDim.x, ... (r = b*C + c), 4 chunks of 32V positions per step; v by a per-lane sum and an
 *     xor-butterfly warp sum.
 * Access width: W = the widest of V, V/2, ..., 1 elements (16, 8, 4, 2 bytes) that divides the row length (C or P) and
 * to which x and y are aligned (token and none with v: and v to vectors of min(W, 4) floats, aiec_k::v_bits, so that a
 * lane writes its floats of v in vectors of up to 16 bytes, as y). A lane's V elements of a 32V chunk are its V/W
 * sub-vectors j: the W elements at chunk offset j*32W + l*W (W = V: the V elements from l*V), so that each load and
 * store instruction of the warp covers 32W consecutive elements. The keep word of 32 elements is the bits of 32/W
 * consecutive lanes, ORed by shuffles (a ballot for W = 1) and stored by the first: the same shuffle path for every C
 * and P. The 4 rows (chunks) of a step sit in a rotating buffer: as soon as row u is processed, row u of the next step
 * (across rows and samples) is loaded in its place, so about 4 loads per lane are always in flight with the registers
 * of 4.
 * __launch_bounds__(256, 3) (<= 80 registers, no spills on sm_75/80/90): 24 warps per SM. The access widths are
 * separate __noinline__ functions so that each gets its own registers; they take the shape by value (by reference
 * it went through a 48-byte stack frame in local memory).
 * Sums: avg_token adds rows in the same order for every W (per channel, in the warp's position order, then the 8
 * warps in order); avg_hw adds each lane's slots, then the butterfly, so its v depends on W (the shape and the
 * alignment) in the last bits.
 */
#include "common.cuh"
#include "aiec_params.cuh"

namespace aiec_fx {
using aiec::Pack16;
using aiec::u32;
using aiec::u64;
using aiec_k::min64;
constexpr int WARPS = 8, UNROLL = 4;

// Chunk offset of the lane's sub-vector j (see the file comment).
template <int W> __device__ __forceinline__ u64 sub_off(int j, int lane) { return (u64)j * 32 * W + (u64)lane * W; }

// Loads the lane's V elements of the chunk at row offset base (row: the row's first element, len: its length)
// into p (sub-vector j into slots j*W .. j*W + W - 1); sub-vectors past the row read as 0.
template <int W, class T>
__device__ __forceinline__ void load(const T* __restrict__ row, u64 base, u64 len, int lane, Pack16<T>& p) {
  constexpr int V = Pack16<T>::N, NJ = V / W;
  if constexpr (W == V) {
    const u64 o = base + sub_off<W>(0, lane);
    if (o < len) p.u = aiec::ld16(row + o);
    else p.u = uint4{0u, 0u, 0u, 0u};
  } else {
    AIEC_UNROLL
    for (int j = 0; j < NJ; ++j) {
      const u64 o = base + sub_off<W>(j, lane);
      if (o < len) {
        aiec_k::ldvec<W>(row + o, p.v + j * W);
      } else {
        AIEC_UNROLL
        for (int e = 0; e < W; ++e) p.v[j * W + e] = T{};
      }
    }
  }
}

// Keep word of sub-vector j: its W bits sit at (l*W) % 32 in the word of 32 elements that 32/W consecutive lanes
// cover; they OR it together (a ballot for W = 1) and the first stores it into the row's words krow. All 32 lanes
// call it (bits 0 past the row).
template <int W>
__device__ __forceinline__ void store_keep(u32* __restrict__ krow, u64 o, u64 len, int lane, u32 bits) {
  constexpr int G = 32 / W;
  u32 w;
  if constexpr (W == 1) {
    w = __ballot_sync(0xffffffffu, bits != 0);
  } else {
    w = bits << ((lane * W) & 31);
    AIEC_UNROLL
    for (int s = 1; s < G; s <<= 1) w |= __shfl_xor_sync(0xffffffffu, w, s);
  }
  if (o < len && (lane & (G - 1)) == 0) krow[o >> 5] = w;
}

// Thresholds the chunk at row offset base in place, stores it as y (row yrow) and its keep words (row krow), adds
// float(y) to acc[slot]. All 32 lanes call it (warp shuffles).
template <int W, class T>
__device__ __forceinline__ void apply(Pack16<T>& p, T* __restrict__ yrow, u32* __restrict__ krow, u64 base, u64 len,
                                      int lane, float tau, float* acc) {
  constexpr int V = Pack16<T>::N, NJ = V / W;
  AIEC_UNROLL
  for (int j = 0; j < NJ; ++j) {
    const u64 o = base + sub_off<W>(j, lane);
    const bool ok = o < len;
    u32 b = 0;
    AIEC_UNROLL
    for (int e = 0; e < W; ++e) {
      T& t = p.v[j * W + e];
      const bool k = ok && aiec_k::keeps(t, tau);
      b |= (u32)k << e;
      if (!k) t = T{};
      acc[j * W + e] += aiec::to_float(t);
    }
    if constexpr (W < V) {
      if (ok) aiec_k::stvec<W>(yrow + o, p.v + j * W);
    }
    store_keep<W>(krow, o, len, lane, b);
  }
  if constexpr (W == V) {
    const u64 o = base + sub_off<W>(0, lane);
    if (o < len) aiec::st16(yrow + o, p.u);
  }
}

// v's row vrow at the lane's channels of the chunk at base: float(y) of each sub-vector, v_floats(W) floats per
// store (vrow is aligned to them: aiec_k::v_bits).
template <int W, class T>
__device__ __forceinline__ void store_v(float* __restrict__ vrow, const Pack16<T>& p, u64 base, u64 len, int lane) {
  constexpr int V = Pack16<T>::N, NJ = V / W, F = aiec_k::v_floats(W);
  AIEC_UNROLL
  for (int j = 0; j < NJ; ++j) {
    const u64 o = base + sub_off<W>(j, lane);
    if (o < len) {
      AIEC_UNROLL
      for (int q = 0; q < W; q += F) {
        float f[F];
        AIEC_UNROLL
        for (int e = 0; e < F; ++e) f[e] = aiec::to_float(p.v[j * W + q + e]);
        aiec_k::stvec<F>(vrow + o + q, f);
      }
    }
  }
}

// One block's part of the tokens layout, token and none (see the file comment), with access width W.
template <int W, class T>
__device__ __noinline__ void tokens_rows(const T* __restrict__ x, T* __restrict__ y, u32* __restrict__ keep,
                                         float* __restrict__ v, AiecShape s) {
  constexpr int V = Pack16<T>::N;
  constexpr int U = W * 8 <= V ? 1 : W * 4 <= V ? 2 : UNROLL;  // narrower accesses, fewer rows per step
  const u64 B = s.batch, P = s.positions, C = s.channels, wpr = aiec_k::keep_words_per_row(C);
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const u64 base = (u64)blockIdx.x * 32 * V;  // the block's first channel
  Pack16<T> cur[U];  // a rotating buffer: row u of this step, then (loaded in its place) of the next
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) cur[u].u = uint4{0u, 0u, 0u, 0u};
  // token / none: no sum across rows, so the B*P rows are spread over the warps of the grid (8*U rows per
  // block step, warp w taking rows r0 + w, r0 + w + 8, ...): all 8 warps stay busy even when P = 1.
  const u64 R = B * P, step = (u64)gridDim.y * WARPS * U, sp = step % P;
  u64 r0 = (u64)blockIdx.y * WARPS * U, rp[U];  // p of row r0 + 8u + w
  float unused[V];
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) {
    const u64 r = r0 + (u64)u * WARPS + warp;
    rp[u] = r % P;
    if (r < R) load<W>(x + r * C, base, C, lane, cur[u]);
  }
  for (; r0 < R; r0 += step) {  // block-uniform
    AIEC_UNROLL
    for (int u = 0; u < U; ++u) {
      const u64 r = r0 + (u64)u * WARPS + warp;
      if (r < R) {  // warp-uniform
        apply<W>(cur[u], y + r * C, keep + r * wpr, base, C, lane, s.tau, unused);
        if (v && rp[u] == 0) {  // the class token (or the only position): v = y there
          const u64 b = P == 1 ? r : r / P;  // one division per sample, none per row
          store_v<W>(v + b * C, cur[u], base, C, lane);
        }
      }
      if (r + step < R) load<W>(x + (r + step) * C, base, C, lane, cur[u]);  // the next step's row u, in flight
      rp[u] += sp;
      if (rp[u] >= P) rp[u] -= P;
    }
  }
}

template <int W, class T>
__device__ __noinline__ void tokens_avg(const T* __restrict__ x, T* __restrict__ y, u32* __restrict__ keep,
                                         float* __restrict__ v, AiecShape s, float* red) {
  constexpr int V = Pack16<T>::N, NJ = V / W;
  constexpr int U = W * 4 <= V ? 1 : UNROLL;  // narrower accesses, fewer rows per step
  const u64 B = s.batch, P = s.positions, C = s.channels, wpr = aiec_k::keep_words_per_row(C);
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const u64 base = (u64)blockIdx.x * 32 * V;  // the block's first channel
  Pack16<T> cur[U];  // a rotating buffer: row u of this step, then (loaded in its place) of the next
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) cur[u].u = uint4{0u, 0u, 0u, 0u};
  // avg_token: sample b's positions p = w + 8 (U i + u) by warp w, then the 8 warps' sums in warp order. The
  // steps (b, p0) run on across samples, so the next sample's first rows are in flight at a sample's end.
  const u64 bstep = gridDim.y;
  u64 b = blockIdx.y, p0 = (u64)warp;
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) {
    const u64 p = p0 + (u64)u * WARPS;
    if (b < B && p < P) load<W>(x + (b * P + p) * C, base, C, lane, cur[u]);
  }
  while (b < B) {  // block-uniform
    float acc[V];
    AIEC_UNROLL
    for (int i = 0; i < V; ++i) acc[i] = 0.0f;
    for (; p0 < P; ) {  // warp-uniform
      u64 nb = b, np = p0 + WARPS * U;  // the next step
      if (np >= P) {
        nb = b + bstep;
        np = (u64)warp;
      }
      AIEC_UNROLL
      for (int u = 0; u < U; ++u) {
        const u64 p = p0 + (u64)u * WARPS;
        if (p < P) {  // warp-uniform (and so are the later u)
          const u64 r = b * P + p;
          apply<W>(cur[u], y + r * C, keep + r * wpr, base, C, lane, s.tau, acc);
        }
        const u64 pn = np + (u64)u * WARPS;  // the next step's row u, in flight while the later rows are processed
        if (nb < B && pn < P) load<W>(x + (nb * P + pn) * C, base, C, lane, cur[u]);
      }
      if (nb != b) break;  // this warp's last step of sample b; the next sample's rows are loaded
      p0 = np;
    }
    {  // add the 8 warps' partial sums in warp order: slot j*W + e of lane l is channel base + j*32W + l*W + e
      AIEC_UNROLL
      for (int j = 0; j < NJ; ++j)
        AIEC_UNROLL
        for (int e = 0; e < W; ++e) red[warp * 32 * V + sub_off<W>(j, lane) + e] = acc[j * W + e];
      __syncthreads();
      if (threadIdx.x < 32u * V) {
        const u64 c = base + threadIdx.x;
        float sum = red[threadIdx.x];
        AIEC_UNROLL
        for (int w = 1; w < WARPS; ++w) sum += red[w * 32 * V + threadIdx.x];
        if (c < C && v) v[b * C + c] = sum / (float)P;
      }
      __syncthreads();  // red is reused by the next sample
    }
    b += bstep;
    p0 = (u64)warp;
  }
}

// The tokens layout with access width W: token / none, or avg_token.
template <int W, class T>
__device__ __forceinline__ void tokens_body(const T* __restrict__ x, T* __restrict__ y, u32* __restrict__ keep,
                                            float* __restrict__ v, AiecShape s, float* red) {
  if (s.pool == AIEC_POOL_AVG_TOKEN || s.pool == AIEC_POOL_AVG_HW) tokens_avg<W>(x, y, keep, v, s, red);
  else tokens_rows<W>(x, y, keep, v, s);
}

// One warp's rows of the hw layout (see the file comment), with access width W.
template <int W, class T>
__device__ __noinline__ void hw_body(const T* __restrict__ x, T* __restrict__ y, u32* __restrict__ keep,
                                     float* __restrict__ v, AiecShape s) {
  constexpr int V = Pack16<T>::N, CHUNK = 32 * V;
  constexpr int U = W * 8 <= V ? 1 : W * 4 <= V ? 2 : UNROLL;  // narrower accesses, fewer rows per step
  const u64 P = s.positions, rows = s.batch * s.channels, wpr = aiec_k::keep_words_per_row(P);
  const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
  const u64 rstep = (u64)gridDim.x * WARPS;
  Pack16<T> cur[U];  // a rotating buffer: chunk u of this step, then (loaded in its place) of the next
  AIEC_UNROLL
  for (int u = 0; u < U; ++u) cur[u].u = uint4{0u, 0u, 0u, 0u};
  u64 r = (u64)blockIdx.x * WARPS + warp, q0 = 0;  // the step: chunks q0 + u CHUNK of row r
  AIEC_UNROLL
  for (int u = 0; u < U; ++u)
    if (r < rows) load<W>(x + r * P, (u64)u * CHUNK, P, lane, cur[u]);
  float acc[V];
  AIEC_UNROLL
  for (int i = 0; i < V; ++i) acc[i] = 0.0f;
  while (r < rows) {  // warp-uniform
    u64 nr = r, nq = q0 + (u64)CHUNK * U;
    if (nq >= P) {
      nr = r + rstep;
      nq = 0;
    }
    AIEC_UNROLL
    for (int u = 0; u < U; ++u) {
      const u64 q = q0 + (u64)u * CHUNK;
      if (q < P) {  // warp-uniform
        apply<W>(cur[u], y + r * P, keep + r * wpr, q, P, lane, s.tau, acc);
      }
      // the next step's chunk u (this row's or the next row's), in flight while the later chunks are processed
      if (nr < rows) load<W>(x + nr * P, nq + (u64)u * CHUNK, P, lane, cur[u]);
    }
    if (nq == 0) {  // row r is done
      float sum = acc[0];
      AIEC_UNROLL
      for (int i = 1; i < V; ++i) sum += acc[i];
      sum = aiec_k::warp_sum(sum);
      if (lane == 0 && v) v[r] = sum / (float)P;
      AIEC_UNROLL
      for (int i = 0; i < V; ++i) acc[i] = 0.0f;
    }
    r = nr;
    q0 = nq;
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
                                                  aiec::u32* __restrict__ keep,             // KeepLayout words
                                                  float* __restrict__ v,                    // [B, C] or null
                                                  const long long* __restrict__ targets,    // [B] or null
                                                  AiecTargetStatus* status,                 // [1] (with targets)
                                                  AiecTargetStatus* device_error,           // [1] or null
                                                  AiecShape s) {
  __shared__ float red[aiec_fx::WARPS * 32 * 8];  // [warp][32V] partial sums of avg_token (sized for V = 8)
  aiec_fwd_x_check(targets, status, device_error, s);
  const bool rows_v = v && (s.pool == AIEC_POOL_TOKEN || s.pool == AIEC_POOL_NONE);
  const aiec::u64 bits = aiec::addr(x) | aiec::addr(y) | aiec_k::v_bits<T>(rows_v, aiec::addr(v));
  switch (aiec::vec_width<T>(s.channels, bits)) {
    case 8: aiec_fx::tokens_body<aiec::Pack16<T>::N>(x, y, keep, v, s, red); break;  // 16-bit types only
    case 4: aiec_fx::tokens_body<4>(x, y, keep, v, s, red); break;
    case 2: aiec_fx::tokens_body<2>(x, y, keep, v, s, red); break;
    default: aiec_fx::tokens_body<1>(x, y, keep, v, s, red); break;
  }
}

template <class T>
__device__ __forceinline__ void aiec_fwd_x_hw(const T* __restrict__ x,                  // [B, C, P]
                                              T* __restrict__ y,                        // [B, C, P]
                                              aiec::u32* __restrict__ keep,             // KeepLayout words
                                              float* __restrict__ v,                    // [B, C] or null
                                              const long long* __restrict__ targets,    // [B] or null
                                              AiecTargetStatus* status,                 // [1] (with targets)
                                              AiecTargetStatus* device_error,           // [1] or null
                                              AiecShape s) {
  aiec_fwd_x_check(targets, status, device_error, s);
  switch (aiec::vec_width<T>(s.positions, aiec::addr(x) | aiec::addr(y))) {
    case 8: aiec_fx::hw_body<aiec::Pack16<T>::N>(x, y, keep, v, s); break;  // 16-bit types only
    case 4: aiec_fx::hw_body<4>(x, y, keep, v, s); break;
    case 2: aiec_fx::hw_body<2>(x, y, keep, v, s); break;
    default: aiec_fx::hw_body<1>(x, y, keep, v, s); break;
  }
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
