/* aiec_fwd_logits.cu - decision-making and activation-counting units of an AIEC training forward (docs/SPEC.md
 * "Forward" 4 and 5, and the per-row half of the auxiliary loss), two launches in a row: aiec_fwd_logits computes
 * logits = v W^T as a register-tiled GEMM (kernels/aiec_gemm.cuh) and per row each class tile's partial softmax
 * statistics; aiec_fwd_softmax then, fully parallel, the cross-entropy, the unscaled softmax gradient and the argmax
 * of every row, and on an update step the counters of correctly predicted samples.
 *
 *   aiec_fwd_logits(v, w, logits, g, part, tickets, slices, s)              f32 SIMT
 *   aiec_fwd_logits_tf32x3(v, w, logits, g, part, tickets, slices, s)       3xTF32, 64-row tiles
 *   aiec_fwd_logits_tf32(v, w, logits, g, part, tickets, slices, s)         TF32 (opt-in), 64-row tiles
 *   aiec_fwd_logits_tf32x3_m128(v, w, logits, g, part, tickets, slices, s)  3xTF32, 128-row tiles
 *   aiec_fwd_logits_tf32_m128(v, w, logits, g, part, tickets, slices, s)    TF32 (opt-in), 128-row tiles
 *   aiec_fwd_softmax(v, targets, status, step, logits, part, ce, g, act, inh, total, s)
 * The tensor-core entry points exist where AIEC_MMA_TF32 is 1 (sm_80 and later, the simulator), not on sm_75.
 *
 * v: f32 [B, C]; w: f32 [K, C]; logits, g: f32 [B, K]; part: AiecRowPart [B * max(1, ceil(K / 64))] scratch
 * (aiec_fwd_logits writes the first B * ceil(K / 64), aiec_fwd_softmax reads them; no content needed before);
 * tickets: u32 [ceil(B / 64) * ceil(K / 64)], zero before the first launch (zero it once at allocation), left zero
 * (only read where the sum is split: gridDim.z >= 2, the tensor-core paths; may be null else); slices: f32
 * [gridDim.z - 2, B, K] scratch, the partial logits of slices 2 and on (no content needed; may be null where
 * gridDim.z <= 2);
 * targets: i64 [B] (an out-of-range one gets ce = NaN, no one-hot term, no count, and is never used as an index);
 * status: the AiecTargetStatus aiec_fwd_x wrote for these targets (or null): when it names a bad target
 * (index >= 0) the step counts nothing at all, so a bad batch changes no counter; step: null, or the layer's step
 * counter (i64 [1], already incremented for this forward) when the update decision is made on the device: then the
 * counters update when *step % s.update == 0 (s.update holds the update interval, >= 1), else when s.update != 0.
 * ce: f32 [B]; act, inh: i64 [K, C]; total: i64 [K].
 * ce[b] = (m + logf(se)) - z_t with m = max_k z_k and se = sum_k expf(z_k - m) (NaN if any z is NaN), as the CPU
 * reference; g[b,k] = expf(z_k - m) / se - [k == t]. pred = argmax: lowest index among equal maxima, NaN above any
 * number. If the step updates, for each sample with pred == t: act[t,c] += 1 where v > 0, inh[t,c] += 1 where
 * v == 0 (NaN: neither), total[t] += 1, as 64-bit integer atomics pre-aggregated per sample group: one atomicAdd per
 * (class present among the group's correct samples, channel) with a nonzero increment, one per class for total
 * (exact, whatever the order). Neither kernel writes v or w, aiec_fwd_softmax not logits or part. Logits, ce and g
 * are deterministic (fixed summation orders, no float atomics).
 *
 * aiec_fwd_logits. Geometry: block = 128 threads (MUST be); R = 128 rows per tile for the _m128 entry points, else
 * 64; N = 128 classes per block tile for aiec_fwd_logits_tf32_m128 (the 128 x 128 tile: two class tiles), else 64;
 * grid = (ceil(K / N), min(ceil(B / R), 65535), nz >= 1) (do not launch for B == 0; any grid is correct: a block
 * takes the block tiles of classes jw = blockIdx.x, + gridDim.x, ... of the sample groups i = blockIdx.y,
 * + gridDim.y, ...); no dynamic shared memory (static: 18 KiB SIMT, 36 KiB the 64-row tensor-core tiles, 39 KiB the
 * 128 x 64 ones, 34 KiB the 128 x 128 one). Tile (i, j) is the R x 64 GEMM tile of samples [Ri, Ri + R) and classes
 * [64j, 64j + 64) with the whole sum over C (aiec_gemm.cuh: each logit a sum in a fixed order, whatever the grid).
 * Split k, gridDim.z = nz >= 2 (the tensor-core paths' 64-column tiles; the plans split where the tiles would leave
 * SMs idle; the 128 x 128 tile never splits: its blocks all sum the whole of C): block z sums the channels [z P,
 * z P + P) with P = ceil(C / (32 nz)) * 32 (a slice may be empty), the nz partial tiles meet through logits (slice
 * 0's), g (slice 1's; g is aiec_fwd_softmax's output, free until then) and slices (the others), and the block
 * that draws the tile's ticket last adds them in the order 0, 1, ... (the same bits whichever is last:
 * deterministic) and goes on; the sums then differ from the unsplit ones in the last bits. The block that finishes
 * the tile writes
 * it to logits, and per row b of the tile to part[b * ceil(K / 64) + j] the tile's partial softmax statistics: the
 * first maximum of the tile's logits (value, index, by the argmax rule) and se_t = sum over the tile of
 * expf(z - max_t) (0 when max_t = -inf).
 *
 * aiec_fwd_softmax, launched after aiec_fwd_logits on the same stream. Geometry: block = 128 threads (MUST be);
 * grid = (any x, 1, 1) (do not launch for B == 0); no dynamic shared memory (static: 1.25 KiB). The work is
 * a list of items, which a block takes at blockIdx.x, + gridDim.x, ... (any grid is correct; the plan launches
 * one block per item up to 8 blocks per SM): first ceil(B / 64) * H counting items with H = max(1, ceil(C / 128)),
 * (sample group i, channel chunk h) = (item / H, item % H), then ceil(B / 4) row items of 4 rows each.
 *  - A row item: a warp per row b. The argmax and m from the row's partials, se = sum over tiles j of
 *    se_t * expf(max_t - m) (lane l adds the tiles l, l + 32, ... in order, then an xor butterfly: a different
 *    rounding than one sum over k, well inside the f32 tolerance), ce[b]; then g for the row, coalesced over k.
 *  - A counting item, only when the step updates and status names no bad target (else it returns at once): the
 *    group's 64 rows, their argmax recomputed from the partials (exact: the rule is a total order, so it is the row
 *    items' argmax) against their targets, and the channels [128h, 128h + 128) counted, a thread per channel; the
 *    item h == 0 adds the group's total.
 */
#include "common.cuh"
#include "aiec_params.cuh"
#include "aiec_gemm.cuh"

// One row's softmax statistics over one 64-class tile (the scratch part[b * ceil(K / 64) + j]).
struct AiecRowPart {  // size 16
  float max;          // the tile's first maximum (NaN above any number)        offset 0
  float se;           // sum over the tile of expf(z - max); 0 if max = -inf    offset 4
  aiec::u64 index;    // its class                                              offset 8
};
static_assert(sizeof(AiecRowPart) == 16, "AiecRowPart layout");

namespace aiec_lg {
using aiec::u32;
using aiec::u64;
using aiec_k::min64;
constexpr int ROWS = aiec_gemm::BM, COLS = aiec_gemm::BN, ZT = COLS + 1, WARPS = aiec_gemm::THREADS / 32;
constexpr u64 NONE = ~(u64)0;

// Whether (a, ia) ranks above (b, ib) for the argmax: NaN above numbers, then larger, then lower index.
__device__ __forceinline__ bool beats(float a, u64 ia, float b, u64 ib) {
  if (ib == NONE) return ia != NONE;
  if (ia == NONE) return false;
  const bool an = aiec_k::is_nan(a), bn = aiec_k::is_nan(b);
  if (an != bn) return an;
  if (!an && a != b) return a > b;
  return ia < ib;
}

// The argmax of the warp's (a, ia): an xor butterfly; every lane gets the winner.
__device__ __forceinline__ void warp_argmax(float& a, u64& ia) {
  AIEC_UNROLL
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, a, o);
    const u64 oi = __shfl_xor_sync(0xffffffffu, ia, o);
    if (beats(ov, oi, a, ia)) {
      a = ov;
      ia = oi;
    }
  }
}

// The softmax term of a tile's partial for the row maximum m.
__device__ __forceinline__ float term(float max_t, float se_t, float m) {
  return se_t == 0.0f ? 0.0f : se_t * expf(max_t - m);
}

// aiec_fwd_softmax: 128 threads; counting items of 64 rows x 128 channels (a thread per channel), row items of 4
// rows (a warp per row).
constexpr int SM_THREADS = 128, SM_WARPS = SM_THREADS / 32, SM_CHANNELS = SM_THREADS, SM_ROWS = SM_WARPS;
constexpr int BATCH = 8;  // loads in flight per thread: partials of a counting row, logits of a row's g
}  // namespace aiec_lg

namespace aiec_lg {
// Split k (gridDim.z = nz >= 2): the nz slices of tile (gi, j) meet. This block's partial tile (zt, rows < ns,
// columns < nk; RT rows) goes to global memory, to its slice's slot (slot: slice 0's in logits, slice 1's in g,
// which is free until aiec_fwd_softmax writes it, slice z >= 2's in slices + (z - 2) B K); the block that draws the
// tile's ticket last adds the slots up in the order 0, 1, ..., nz - 1 (its own read back: the bits it wrote), the
// same rounded sums whichever slice arrives last (for nz = 2, a + b: commutative), resets the ticket and goes on
// with the tile (true); the others return false. All 128 threads call it (barriers). A function of its own
// (__noinline__): inlined, the sum's loads in flight made the 3xTF32 kernels spill.
__device__ __forceinline__ float* slot(u32 z, float* logits, float* g, float* slices, u64 bk) {
  return z == 0 ? logits : z == 1 ? g : slices + (u64)(z - 2) * bk;
}
// The last slice's sum (meet), W columns at a time: W = 4 (16-byte loads, where K % 4 == 0 and the slots are
// 16-byte aligned: nk is then a multiple of 4) or 1. Thread t takes columns W (t % (64 / W)) + 0..W-1 of rows
// t / (64 / W) + 2 W i; it reads 32 of its values from each of two slots at once, so that the sum waits for L2
// about once per two slots (RT = 128: twice), not once per value.
template <int RT, int W>
__device__ __forceinline__ void sum_slots(float* zt, int ns, int nk, u64 b0, u64 k0, u64 B, u64 K, u32 nz,
                                          float* logits, float* g, float* slices) {
  constexpr int LANES = COLS / W, STEP = aiec_gemm::THREADS / LANES, PASSES = RT / STEP;
  constexpr int BATCH = PASSES < 32 / W ? PASSES : 32 / W, PAIR = 2;  // values a slot, slots a round
  const int tid = (int)threadIdx.x, n = W * (tid % LANES), m0 = tid / LANES;
  for (int i0 = 0; i0 < PASSES; i0 += BATCH)
    for (u32 y0 = 0; y0 < nz; y0 += PAIR) {
      float p[PAIR][BATCH][W];
      AIEC_UNROLL
      for (int h = 0; h < PAIR; ++h) {
        const u32 y = y0 + (u32)h;
        const float* o = slot(y < nz ? y : y0, logits, g, slices, B * K) + b0 * K + k0 + (u64)n;
        AIEC_UNROLL
        for (int i = 0; i < BATCH; ++i) {
          const int m = m0 + STEP * (i0 + i);
          const bool in = y < nz && m < ns && n < nk;
          const float* src = o + (u64)(in ? m : 0) * K;
          if constexpr (W == 4) {
#ifdef AIEC_CUDA
            const float4 q = in ? __ldcg(reinterpret_cast<const float4*>(src)) : float4{0.0f, 0.0f, 0.0f, 0.0f};
#else
            if (aiec::addr(src) & 15) throw ::cuda_sim::Error("misaligned float4 load (the GPU faults)");
            float4 q{0.0f, 0.0f, 0.0f, 0.0f};
            if (in) memcpy(&q, src, 16);
#endif
            p[h][i][0] = q.x;
            p[h][i][W > 1 ? 1 : 0] = q.y;
            p[h][i][W > 2 ? 2 : 0] = q.z;
            p[h][i][W > 3 ? 3 : 0] = q.w;
          } else {
#ifdef AIEC_CUDA
            p[h][i][0] = in ? __ldcg(src) : 0.0f;  // from L2: this SM's L1 may hold an older line
#else
            p[h][i][0] = in ? *src : 0.0f;
#endif
          }
        }
      }
      AIEC_UNROLL
      for (int h = 0; h < PAIR; ++h) {
        const u32 y = y0 + (u32)h;
        if (y >= nz) break;  // uniform
        AIEC_UNROLL
        for (int i = 0; i < BATCH; ++i)
          AIEC_UNROLL
          for (int j = 0; j < W; ++j) {
            float& x = zt[(m0 + STEP * (i0 + i)) * ZT + n + j];
            x = y == 0 ? p[h][i][j] : x + p[h][i][j];
          }
      }
    }
}
template <int RT>
__device__ __noinline__ bool meet(float* zt, int ns, int nk, u64 b0, u64 k0, u64 B, u64 K, u32 z, u32 nz,
                                  float* logits, float* g, float* slices, aiec::u32* ticket) {
  __shared__ int last;
  const int tid = (int)threadIdx.x;
  float* mine = slot(z, logits, g, slices, B * K) + b0 * K + k0;
  for (int q = tid; q < ns * COLS; q += aiec_gemm::THREADS) {  // a warp writes half a row
    const int m = q / COLS, n = q % COLS;
    if (n < nk) mine[(u64)m * K + (u64)n] = zt[m * ZT + n];
  }
  __threadfence();  // the partial is visible device-wide before the ticket is drawn
  __syncthreads();
  if (tid == 0) last = atomicAdd(ticket, 1u) == nz - 1;
  __syncthreads();
  if (!last) return false;
  __threadfence();
  const bool a16 = ((aiec::addr(logits) | aiec::addr(g) | (nz > 2 ? aiec::addr(slices) : 0)) & 15) == 0;
  if (K % 4 == 0 && a16)
    sum_slots<RT, 4>(zt, ns, nk, b0, k0, B, K, nz, logits, g, slices);
  else
    sum_slots<RT, 1>(zt, ns, nk, b0, k0, B, K, nz, logits, g, slices);
  if (tid == 0) *ticket = 0;  // ready for the next launch (kernel boundaries order it)
  __syncthreads();
  return true;
}
}  // namespace aiec_lg

// __launch_bounds__ of aiec_fwd_softmax: 128 threads, at least 8 blocks (32 warps) per SM, so at most 64 registers.
#define AIEC_LB_SOFTMAX 128, 8

// WM: the tensor-core paths' tile (aiec_gemm::tc::Geo): 64 (WM = 1) or 128 (WM = 2) rows; SIMT: 64, WM = 1.
template <int PATH, int WM = 1>
__device__ __forceinline__ void aiec_fwd_logits_body(const float* __restrict__ v,     // [B, C]
                                                     const float* __restrict__ w,     // [K, C]
                                                     float* logits,                   // [B, K]
                                                     float* g,                        // [B, K], split k only
                                                     AiecRowPart* __restrict__ part,  // [B, ceil(K / 64)]
                                                     aiec::u32* tickets,              // split k only
                                                     float* slices,                   // [gridDim.z - 2, B, K]
                                                     AiecShape s) {
  using namespace aiec_lg;
  using namespace aiec_gemm;
  static_assert(PATH != SIMT || WM == 1, "the SIMT tile has 64 rows");
  constexpr int RT = ROWS * WM;        // rows (samples) per tile
  constexpr int WN = wn_of(PATH, WM);  // class tiles (of 64) per block tile: 2 for the 128 x 128 tile
  // Split k (the tensor-core paths' 64-column tiles, gridDim.z = nz >= 2): slice z of nz. SIMT or the 128 x 128
  // tile (whose registers leave no room for meet: it spilled at sm_80): every block sums the whole of C (a tile
  // computed gridDim.z times is written as often, with the same bits).
  const u32 nz = PATH == SIMT || WN == 2 ? 1 : gridDim.z, z = nz == 1 ? 0 : blockIdx.z;
  constexpr int SMEM = Smem<PATH, WM>::FLOATS > RT * ZT ? Smem<PATH, WM>::FLOATS : RT * ZT;
  __shared__ __align__(16) float smem[SMEM];  // the GEMM's stages, then the tile's logits [RT][65]
  const u64 B = s.batch, C = s.channels, K = s.classes;
  const u64 tiles = (K + COLS - 1) / COLS, groups = (B + RT - 1) / RT, wide = (tiles + WN - 1) / WN;
  const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31;
  // Slice z of the channels, [kb, ke): a multiple of 32 channels apart from the last, so that each slice's
  // operands are 16-byte aligned where the whole ones are.
  const u64 per = (C + 32 * nz - 1) / (32 * nz) * 32, kb = min64(C, z * per), ke = min64(C, kb + per);
  const Operand A = operand(v + kb, C, B, ke - kb, false);  // (b, c): MK
  const Operand Wt = operand(w + kb, C, K, ke - kb, false);  // (class, c): MK
  float* zt = smem;

  for (u64 gi = blockIdx.y; gi < groups; gi += gridDim.y) {  // block-uniform
    const u64 b0 = gi * RT;
    const int ns = (int)min64(RT, B - b0);
    // 2. per row, class tile j's partial statistics from its logits in zt (warp w: rows w, w + 4, ...)
    auto partials = [&](u64 j, u64 k0, int nk) {
      for (int r = warp; r < ns; r += WARPS) {  // warp-uniform
        float bv = 0.0f;
        u64 bi = NONE;
        AIEC_UNROLL
        for (int h = 0; h < 2; ++h) {
          const int n = lane + 32 * h;
          const float z = zt[r * ZT + n];
          if (n < nk && beats(z, k0 + (u64)n, bv, bi)) {
            bv = z;
            bi = k0 + (u64)n;
          }
        }
        warp_argmax(bv, bi);
        float se = 0.0f;
        if (bv != -__int_as_float(0x7f800000)) {
          AIEC_UNROLL
          for (int h = 0; h < 2; ++h) {
            const int n = lane + 32 * h;
            if (n < nk) se += expf(zt[r * ZT + n] - bv);
          }
        }
        se = aiec_k::warp_sum(se);
        if (lane == 0) {
          AiecRowPart* p = part + (b0 + (u64)r) * tiles + j;
          p->max = bv;
          p->se = se;
          p->index = bi;
        }
      }
    };
    for (u64 jw = blockIdx.x; jw < wide; jw += gridDim.x) {  // block-uniform: class tiles WN jw (, WN jw + 1)
      // 1. the logits of each class tile of the block tile, to global memory and to zt; then 2.
      __syncthreads();  // zt and the stages are free again
      const bool pair = K % 2 == 0 && (aiec::addr(logits) & 7) == 0;
      if constexpr (PATH == SIMT) {
        const u64 k0 = jw * COLS;
        const int nk = (int)min64(COLS, K - k0);
        Acc acc;
        tile_simt(A, Wt, b0, k0, smem, acc);
        for_each<PATH>(acc, [&](int m, int n, float a0, float a1) {
          zt[m * ZT + n] = a0;
          zt[m * ZT + n + 1] = a1;
          if (m >= ns || n >= nk) return;
          aiec_gemm::put2(logits + (b0 + (u64)m) * K + k0, (u64)n, (u64)nk, pair, a0, a1);
        });
        __syncthreads();
        partials(jw, k0, nk);
      } else {
#if AIEC_MMA_TF32
        // Class tile j (< tiles) in zt: the slices meet, the NaN fix-up over the whole of C (a slice's operands
        // live no longer than its loop), the logits out, then 2.
        auto finish = [&](u64 j, u64 k0, int nk) {
          if (nz > 1 &&
              !aiec_lg::meet<RT>(zt, ns, nk, b0, k0, B, K, z, nz, logits, g, slices, tickets + gi * tiles + j))
            return;  // block-uniform: another slice finishes the tile
          if constexpr (PATH == TF32X3)
            tc::fix_nan<ZT>(operand(v, C, B, C, false), operand(w, C, K, C, false), b0, k0, ns, nk, zt);
          for (int q = tid; q < RT * COLS / 2; q += THREADS) {  // a warp writes a row's 64 logits
            const int m = q / (COLS / 2), n = 2 * (q % (COLS / 2));
            if (m < ns && n < nk)
              aiec_gemm::put2(logits + (b0 + (u64)m) * K + k0, (u64)n, (u64)nk, pair, zt[m * ZT + n],
                              zt[m * ZT + n + 1]);
          }
          partials(j, k0, nk);
        };
        // tc::tile hands class tile 2 jw to finish where WN = 2, and leaves the last, WN jw + WN - 1, in zt. (The
        // columns and counts are computed before the tile: so ptxas keeps the 3xTF32 kernels from spilling.)
        const u64 k0 = jw * (WN * COLS), kl = k0 + (WN - 1) * COLS;
        const int n0 = (int)min64(COLS, K - k0), nl = kl < K ? (int)min64(COLS, K - kl) : 0;
        tc::tile<PATH, false, false, false, ZT, WM, false>(A, Wt, b0, k0, smem, zt,
                                                          [&](int) { finish(2 * jw, k0, n0); });
        if (nl > 0) finish(WN * jw + (WN - 1), kl, nl);  // block-uniform (WN = 2: the classes may end at 2 jw)
#endif
      }
    }
  }
}

__device__ __forceinline__ void aiec_fwd_softmax_body(const float* __restrict__ v,              // [B, C]
                                                      const long long* __restrict__ targets,    // [B]
                                                      const AiecTargetStatus* status,           // [1] or null
                                                      const long long* step,                    // [1] or null
                                                      const float* __restrict__ logits,         // [B, K]
                                                      const AiecRowPart* __restrict__ part,     // [B, ceil(K / 64)]
                                                      float* __restrict__ ce,                   // [B]
                                                      float* __restrict__ g,                    // [B, K]
                                                      long long* act,                           // [K, C]
                                                      long long* inh,                           // [K, C]
                                                      long long* total,                         // [K]
                                                      AiecShape s) {
  using namespace aiec_lg;
  __shared__ long long row_t[ROWS];
  __shared__ int row_ok[ROWS];
  __shared__ u64 mates[ROWS];
  const u64 B = s.batch, C = s.channels, K = s.classes;
  const u64 tiles = (K + COLS - 1) / COLS, groups = (B + ROWS - 1) / ROWS;
  const u64 chunks = C > SM_CHANNELS ? (C + SM_CHANNELS - 1) / SM_CHANNELS : 1;  // >= 1: chunk 0 adds total
  const u64 counting = groups * chunks;
  const u64 items = counting + (B + SM_ROWS - 1) / SM_ROWS;
  const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31;

  for (u64 it = blockIdx.x; it < items; it += gridDim.x) {  // block-uniform
    if (it >= counting) {
      // A row item: warp w takes row b. The row statistics exactly as the partials were always reduced (lane
      // striding, butterflies), so that ce and g have fixed bits whatever the grid.
      const u64 b = (it - counting) * SM_ROWS + (u64)warp;
      if (b >= B) continue;  // warp-uniform: no barrier in a row item, and only row items follow
      const AiecRowPart* p = part + b * tiles;
      float bv = 0.0f;
      u64 bi = NONE;
      for (u64 jj = (u64)lane; jj < tiles; jj += 32) {
        const float pm = p[jj].max;
        const u64 pi = p[jj].index;
        if (beats(pm, pi, bv, bi)) {
          bv = pm;
          bi = pi;
        }
      }
      warp_argmax(bv, bi);
      const float m = bv;
      float se = 0.0f;
      for (u64 jj = (u64)lane; jj < tiles; jj += 32) se += term(p[jj].max, p[jj].se, m);
      se = aiec_k::warp_sum(se);
      const long long t = targets[b];
      const bool tok = t >= 0 && (u64)t < K;
      if (lane == 0) ce[b] = tok ? (m + logf(se)) - logits[b * K + (u64)t] : __int_as_float(0x7fc00000);
      // g for the row: BATCH loads of 32 consecutive logits in flight, then their BATCH stores.
      const float* z = logits + b * K;
      float* gr = g + b * K;
      for (u64 k0 = 0; k0 < K; k0 += 32 * BATCH) {
        float zz[BATCH];
        AIEC_UNROLL
        for (int u = 0; u < BATCH; ++u) {
          const u64 k = k0 + (u64)(lane + 32 * u);
          zz[u] = k < K ? z[k] : 0.0f;
        }
        AIEC_UNROLL
        for (int u = 0; u < BATCH; ++u) {
          const u64 k = k0 + (u64)(lane + 32 * u);
          const bool onehot = tok && k == (u64)t;
          if (k < K) gr[k] = expf(zz[u] - m) / se - (onehot ? 1.0f : 0.0f);
        }
      }
      continue;
    }

    // A counting item: sample group gi, channels [c0, c1).
    const bool update = step ? s.update != 0 && *step % (long long)s.update == 0 : s.update != 0;
    if (!update || (status && status->index >= 0)) continue;  // uniform: no update, or a bad target in the batch
    const u64 gi = it / chunks, h = it % chunks, b0 = gi * ROWS;
    const u64 c0 = h * SM_CHANNELS, c1 = min64(C, c0 + SM_CHANNELS);
    const int ns = (int)min64(ROWS, B - b0);
    __syncthreads();  // the shared arrays are free again (an earlier item of this block)

    // Per row (a thread each): its target, and whether it is correctly predicted, by the argmax over its partials
    // in tile order, BATCH loads in flight (the rule is a total order: the same argmax as the row items').
    if (tid < ROWS) {
      long long t = -1;
      int ok = 0;
      if (tid < ns) {
        const u64 b = b0 + (u64)tid;
        t = targets[b];
        if (t >= 0 && (u64)t < K) {
          const AiecRowPart* p = part + b * tiles;
          float bv = 0.0f;
          u64 bi = NONE;
          for (u64 j0 = 0; j0 < tiles; j0 += BATCH) {
            float pm[BATCH];
            u64 pi[BATCH];
            AIEC_UNROLL
            for (int u = 0; u < BATCH; ++u) {
              const bool in = j0 + (u64)u < tiles;
              pm[u] = in ? p[j0 + (u64)u].max : 0.0f;
              pi[u] = in ? p[j0 + (u64)u].index : NONE;
            }
            AIEC_UNROLL
            for (int u = 0; u < BATCH; ++u)
              if (beats(pm[u], pi[u], bv, bi)) {
                bv = pm[u];
                bi = pi[u];
              }
          }
          ok = bi == (u64)t;
        }
      }
      row_t[tid] = t;
      row_ok[tid] = ok;
    }
    __syncthreads();

    // mates[r]: for the first correct row r of its class (its leader), the group's correct rows of that class as
    // bits; 0 for every other row. A thread reads its channel of every correct row at once (independent loads, all
    // in flight, instead of one dependent load per row), keeps which are > 0 and == 0 as bits, and adds per leader
    // the popcounts over its mates: one atomic per (class present among the group's correct samples, channel) with
    // a nonzero increment, and one per class for total (by the group's item h == 0).
    if (tid < ROWS) {
      u64 m = 0;
      if (row_ok[tid]) {
        for (int q = 0; q < ROWS; ++q)
          if (row_ok[q] && row_t[q] == row_t[tid]) m |= (u64)1 << q;
        if (m & (((u64)1 << tid) - 1)) m = 0;  // an earlier correct row has this class: it leads
      }
      mates[tid] = m;
    }
    __syncthreads();
    u64 ok = 0, leaders = 0;  // block-uniform
    for (int r = 0; r < ROWS; ++r) {
      ok |= (u64)(row_ok[r] != 0) << r;
      leaders |= (u64)(mates[r] != 0) << r;
    }
    for (u64 c = c0 + (u64)tid; c < c1; c += SM_THREADS) {
      const float* vc = v + b0 * C + c;
      u64 pos = 0, zero = 0;
      AIEC_UNROLL_BY(8)
      for (int r = 0; r < ROWS; ++r) {  // no branch: the loads of 8 rows are in flight together
        const bool in = (ok >> r) & 1;
        const float val = vc[in ? (u64)r * C : 0];  // a row that is not counted reads row 0 (in the batch)
        pos |= (u64)(in && val > 0.0f) << r;
        zero |= (u64)(in && val == 0.0f) << r;
      }
      for (u64 l = leaders; l; l &= l - 1) {
        const int r = __ffsll((long long)l) - 1;
        const unsigned long long a = (unsigned long long)__popcll(pos & mates[r]);
        const unsigned long long i = (unsigned long long)__popcll(zero & mates[r]);
        const u64 kc = (u64)row_t[r] * C + c;
        if (a) atomicAdd(reinterpret_cast<unsigned long long*>(act) + kc, a);
        if (i) atomicAdd(reinterpret_cast<unsigned long long*>(inh) + kc, i);
      }
    }
    if (h == 0 && tid == 0) {
      for (u64 l = leaders; l; l &= l - 1) {
        const int r = __ffsll((long long)l) - 1;
        atomicAdd(reinterpret_cast<unsigned long long*>(total) + row_t[r], (unsigned long long)__popcll(mates[r]));
      }
    }
  }
}

#define AIEC_FWD_LOGITS_PARAMS                                                                          \
  (const float* __restrict__ v, const float* __restrict__ w, float* logits, float* g,                   \
   AiecRowPart* __restrict__ part, aiec::u32* tickets, float* slices, AiecShape s)
#define AIEC_FWD_LOGITS_ARGS (v, w, logits, g, part, tickets, slices, s)
// The 128-row tile of the tensor-core paths, under a name with one template argument (a macro argument).
template <int PATH>
__device__ __forceinline__ void aiec_fwd_logits_m128 AIEC_FWD_LOGITS_PARAMS {
  aiec_fwd_logits_body<PATH, 2> AIEC_FWD_LOGITS_ARGS;
}
AIEC_EXPORT_NAMED(aiec_fwd_logits, __launch_bounds__(AIEC_LB_GEMM), aiec_fwd_logits_body<aiec_gemm::SIMT>,
                  AIEC_FWD_LOGITS_PARAMS, AIEC_FWD_LOGITS_ARGS)
#if AIEC_MMA_TF32
AIEC_EXPORT_NAMED(aiec_fwd_logits_tf32x3, __launch_bounds__(AIEC_LB_GEMM_TC), aiec_fwd_logits_body<aiec_gemm::TF32X3>,
                  AIEC_FWD_LOGITS_PARAMS, AIEC_FWD_LOGITS_ARGS)
AIEC_EXPORT_NAMED(aiec_fwd_logits_tf32, __launch_bounds__(AIEC_LB_GEMM_TC), aiec_fwd_logits_body<aiec_gemm::TF32>,
                  AIEC_FWD_LOGITS_PARAMS, AIEC_FWD_LOGITS_ARGS)
AIEC_EXPORT_NAMED(aiec_fwd_logits_tf32x3_m128, __launch_bounds__(AIEC_LB_GEMM_TC), aiec_fwd_logits_m128<aiec_gemm::TF32X3>,
                  AIEC_FWD_LOGITS_PARAMS, AIEC_FWD_LOGITS_ARGS)
AIEC_EXPORT_NAMED(aiec_fwd_logits_tf32_m128, __launch_bounds__(AIEC_LB_GEMM_TC), aiec_fwd_logits_m128<aiec_gemm::TF32>,
                  AIEC_FWD_LOGITS_PARAMS, AIEC_FWD_LOGITS_ARGS)
#endif
#define AIEC_FWD_SOFTMAX_PARAMS                                                                                   \
  (const float* __restrict__ v, const long long* __restrict__ targets, const AiecTargetStatus* status,            \
   const long long* step, const float* __restrict__ logits, const AiecRowPart* __restrict__ part,                  \
   float* __restrict__ ce, float* __restrict__ g, long long* act, long long* inh, long long* total, AiecShape s)
#define AIEC_FWD_SOFTMAX_ARGS (v, targets, status, step, logits, part, ce, g, act, inh, total, s)
AIEC_EXPORT_NAMED(aiec_fwd_softmax, __launch_bounds__(AIEC_LB_SOFTMAX), aiec_fwd_softmax_body,
                  AIEC_FWD_SOFTMAX_PARAMS, AIEC_FWD_SOFTMAX_ARGS)
