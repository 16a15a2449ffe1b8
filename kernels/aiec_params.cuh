// kernels/aiec_params.cuh - parameter structs of the fused AIEC training kernels (aiec_*.cu), mirrored in Rust with
// #[repr(C)] (sizes and offsets pinned there and by the static_asserts below), and the helpers those files share.
// Included after common.cuh; NVRTC gets it in memory by this file name, like common.cuh.
//
// Keep bits (written by aiec_fwd_x, read by aiec_bwd_x; aiec_k::keep_* below in code; layout::KeepLayout in Rust): one bit
// per element of the activation (NOT x <= tau), row by row, every row starting at a 32-bit word. The rows are what
// the passes walk along: in the tokens layouts ([B, P, C]) the B*P rows of C channels, in the hw layout ([B, C, P])
// the B*C rows of P positions. Element j of row r is bit j % 32 of word r * ceil(L / 32) + j / 32 (L the row
// length), LSB first; the at most 31 padding bits of a row are 0. So the 32 bits of a word always belong to one row
// and a warp builds each word with shuffles, whatever C or P.
#pragma once
#include "common.cuh"

struct AiecShape {     // size 48, align 8
  aiec::u64 batch;     // B                                              offset 0
  aiec::u64 positions; // P: T tokens, H*W, or 1 (none)                  offset 8
  aiec::u64 channels;  // C                                              offset 16
  aiec::u64 classes;   // K                                              offset 24
  aiec::u32 pool;      // 0 token, 1 avg_token, 2 avg_hw, 3 none         offset 32
  aiec::u32 update;    // 1: this forward updates the counters           offset 36
  float tau;           //                                                offset 40
  aiec::u32 flags;     // AIEC_FLAG_* bits                               offset 44
};
// AiecShape::flags. ACCUMULATE_DW: aiec_bwd_dv_dw adds dW to what the dw buffer holds (dw += ...), as frameworks
// accumulate gradients, instead of writing it.
#define AIEC_FLAG_ACCUMULATE_DW 1u
// AiecShape::flags bits 8-11: the slices of aiec_bwd_dv_dw's sums for dv over the classes, minus 1 (0: unsplit).
// It writes slice z's partial of dv (the gate term in slice 0's) to dv + z B C; aiec_bwd_dv_sum then adds the slices
// in the order 0, 1, ... into dv[0 .. B C).
#define AIEC_FLAG_DV_SLICES_SHIFT 8
// AiecShape::flags bits 12-15: the slices of aiec_bwd_dv_dw's sums for dW over the samples, minus 1 (0: unsplit).
// It writes slice 0's partial of dW to dw (as unsplit: written, or added with ACCUMULATE_DW) and slice z's, z > 0,
// to dv + S B C + (z - 1) K C (S: dv's slices); aiec_bwd_sum_slices then adds them in the order 1, 2, ... into dw.
#define AIEC_FLAG_DW_SLICES_SHIFT 12
// The targets check of a training forward (written by aiec_fwd_x, read by aiec_fwd_softmax): index = the first
// b with targets[b] outside 0..K, or -1; value = targets[index] (0 when index == -1); classes = K.
struct AiecTargetStatus {  // size 32
  long long index;         //                                            offset 0
  long long value;         //                                            offset 8
  aiec::u64 classes;       //                                            offset 16
  aiec::u64 pad0;          //                                            offset 24
};
struct AiecGateStats {  // size 16: one layer's gate statistics
  float sum_sq;         // S = sum mask * v^2                            offset 0
  aiec::u32 pad0;       //                                               offset 4
  aiec::u64 count;      // N = sum mask                                  offset 8
};
struct AiecLosses {  // size 32: the combined losses of L layers, written by aiec_loss (N, W: see AiecLossParams)
  float aux;         // mean CE over L*B rows (0 if no rows)             offset 0
  float gate;        // W * sum S / N, 0 if N == 0                       offset 4
  float sum_sq;      // sum_l S_l (this process's)                       offset 8
  float aux_scale;   // aux_coef / (L*B), 0 if L*B == 0                  offset 12
  float gate_scale;  // 2 * gate_coef * W / N, 0 if N == 0               offset 16
  aiec::u32 pad0;    //                                                  offset 20
  aiec::u64 count;   // N                                                offset 24
};
#define AIEC_MAX_LAYERS 32
// N, the masked count the gate is normalised by, is sum_l N_l of this process when count_all == 0 (W = 1); in
// data-parallel training count_all holds it summed over the W = world ranks, as two ints (hi, lo) = (n >> 20,
// n & 0xFFFFF) of each rank's n = sum_l N_l (aiec_loss_count writes them; the ranks' all-reduce sums them), and
// N = (sum hi << 20) + sum lo: exact for world < 2048 and any n below 2^40. The gate is then W * sum S / N, so
// that the mean of the ranks' gradients (as DDP averages them) is the gradient of the whole batch's gate.
struct AiecLossParams {              // passed by value; size 552
  aiec::u64 ce[AIEC_MAX_LAYERS];     // device addresses of each layer's float ce[B]        offset 0
  aiec::u64 stats[AIEC_MAX_LAYERS];  // device addresses of each layer's AiecGateStats      offset 256
  aiec::u64 out;                     // device address of the AiecLosses to write           offset 512
  aiec::u32 layers;                  // L (1..=32; larger values are clamped to 32)         offset 520
  aiec::u32 world;                   // W, the ranks count_all sums over (read only then)   offset 524
  aiec::u64 batch;                   // B                                                   offset 528
  float aux_coef, gate_coef;         //                                              offsets 536, 540
  aiec::u64 count_all;               // device address of int[2] (hi, lo), or 0             offset 544
};

static_assert(sizeof(AiecShape) == 48 && alignof(AiecShape) == 8, "AiecShape layout");
static_assert(sizeof(AiecGateStats) == 16 && sizeof(AiecLosses) == 32 && sizeof(AiecLossParams) == 552, "sizes");
static_assert(sizeof(AiecTargetStatus) == 32, "AiecTargetStatus layout");
#ifndef AIEC_CUDA  // NVRTC has no offsetof / __builtin_offsetof; the host compiler checks the same (LP64) layout
static_assert(__builtin_offsetof(AiecShape, classes) == 24 && __builtin_offsetof(AiecShape, pool) == 32 &&
                  __builtin_offsetof(AiecShape, update) == 36 && __builtin_offsetof(AiecShape, tau) == 40 &&
                  __builtin_offsetof(AiecShape, flags) == 44,
              "AiecShape offsets");
static_assert(sizeof(AiecGateStats) == 16 && __builtin_offsetof(AiecGateStats, count) == 8, "AiecGateStats layout");
static_assert(sizeof(AiecLosses) == 32 && __builtin_offsetof(AiecLosses, aux_scale) == 12 &&
                  __builtin_offsetof(AiecLosses, gate_scale) == 16 && __builtin_offsetof(AiecLosses, count) == 24,
              "AiecLosses layout");
static_assert(sizeof(AiecLossParams) == 552 && __builtin_offsetof(AiecLossParams, stats) == 256 &&
                  __builtin_offsetof(AiecLossParams, out) == 512 && __builtin_offsetof(AiecLossParams, layers) == 520 &&
                  __builtin_offsetof(AiecLossParams, world) == 524 && __builtin_offsetof(AiecLossParams, batch) == 528 &&
                  __builtin_offsetof(AiecLossParams, aux_coef) == 536 &&
                  __builtin_offsetof(AiecLossParams, gate_coef) == 540 &&
                  __builtin_offsetof(AiecLossParams, count_all) == 544,
              "AiecLossParams layout");
#endif

// Full unrolling of the short fixed-count loops (keeps per-lane arrays in registers); nothing on the host.
// AIEC_UNROLL_BY(n): unroll by n, where the default choice is worse (see aiec_bwd_dv_dw).
#ifdef AIEC_CUDA
#define AIEC_UNROLL _Pragma("unroll")
#define AIEC_UNROLL_BY(n) _Pragma(AIEC_STR_(unroll n))
#define AIEC_STR_(x) #x
#else
#define AIEC_UNROLL
#define AIEC_UNROLL_BY(n)
#endif

// __launch_bounds__ of the activation passes (aiec_fwd_x, aiec_bwd_x): 256 threads, at least 3 blocks per SM
// (at most 80 registers), so that 24 warps per SM keep enough 16-byte loads in flight.
#define AIEC_LB_X 256, 3

enum { AIEC_POOL_TOKEN = 0, AIEC_POOL_AVG_TOKEN = 1, AIEC_POOL_AVG_HW = 2, AIEC_POOL_NONE = 3 };

// One entry point named exactly NAME (no dtype suffix; the f32-only AIEC kernels), calling ::BODY ARGS.
// ATTR: nothing or __launch_bounds__(n). Registers NAME with the simulator like AIEC_EXPORT does.
#define AIEC_EXPORT_NAMED(NAME, ATTR, BODY, PARAMS, ARGS)         \
  namespace aiec_entry_##NAME {                                   \
  extern "C" __global__ void ATTR NAME PARAMS { ::BODY ARGS; }    \
  AIEC_SIM_REGISTER_(NAME)                                        \
  }

namespace aiec_k {  // helpers shared by the aiec_*.cu files (inline: identical in every translation unit)
using aiec::u32;
using aiec::u64;
__device__ __forceinline__ u64 min64(u64 a, u64 b) { return a < b ? a : b; }
// The keep-bit layout (top of this file) in code, its one C++ definition: the words of a row of `row_len` elements,
// and where element `i` (flat, row-major in rows of row_len) lies. The activation passes and the self-test use these.
__host__ __device__ __forceinline__ u64 keep_words_per_row(u64 row_len) { return (row_len + 31) >> 5; }
__host__ __device__ __forceinline__ u64 keep_row_len(u64 channels, u64 positions, u32 pool) {
  return pool == AIEC_POOL_AVG_HW ? positions : channels;
}
__host__ __device__ __forceinline__ u64 keep_words(u64 batch, u64 positions, u64 channels, u32 pool) {
  const u64 len = keep_row_len(channels, positions, pool);
  return len == 0 ? 0 : batch * positions * channels / len * keep_words_per_row(len);
}
// (word, bit) of flat element i as word * 32 + bit.
__host__ __device__ __forceinline__ u64 keep_bit_index(u64 i, u64 row_len) {
  return i / row_len * keep_words_per_row(row_len) * 32 + i % row_len;
}
__device__ __forceinline__ bool is_nan(float f) { return f != f; }
// The slices of dv (AIEC_FLAG_DV_SLICES_SHIFT): 1 to 16.
__device__ __forceinline__ u32 dv_slices(const AiecShape& s) {
  return ((s.flags >> AIEC_FLAG_DV_SLICES_SHIFT) & 15u) + 1u;
}
// The slices of dW (AIEC_FLAG_DW_SLICES_SHIFT): 1 to 16.
__device__ __forceinline__ u32 dw_slices(const AiecShape& s) {
  return ((s.flags >> AIEC_FLAG_DW_SLICES_SHIFT) & 15u) + 1u;
}
// The threshold unit's rule: keep where NOT x <= tau (a NaN is kept).
template <class T> __device__ __forceinline__ bool keeps(T x, float tau) { return !(aiec::to_float(x) <= tau); }
// The targets check of a training forward, run by ONE whole block (every thread must call it: it has barriers):
// writes *status (see AiecTargetStatus), and when a target is bad and *device_error (may be null) holds no error
// yet (index < 0), copies the status there too: the first bad step since the host last read that record.
// Thread j scans b = j, j + blockDim.x, ... and stops at its first bad b; the minimum over the block is the first
// bad index (fixed result for any schedule). scan: blockDim.x entries of shared memory.
__device__ __forceinline__ void check_targets(const long long* __restrict__ targets, u64 B, u64 K,
                                              AiecTargetStatus* status, AiecTargetStatus* device_error,
                                              u64* scan) {
  const u32 tid = threadIdx.x;
  u64 first = ~(u64)0;
  for (u64 b = tid; b < B; b += blockDim.x) {
    const long long t = targets[b];
    if (t < 0 || (u64)t >= K) {
      first = b;
      break;
    }
  }
  scan[tid] = first;
  __syncthreads();
  if (tid == 0) {
    u64 m = scan[0];
    for (u32 j = 1; j < blockDim.x; ++j) m = scan[j] < m ? scan[j] : m;
    const bool bad = m != ~(u64)0;
    status->index = bad ? (long long)m : -1;
    status->value = bad ? targets[m] : 0;
    status->classes = K;
    status->pad0 = 0;
    if (bad && device_error && device_error->index < 0) {
      device_error->value = status->value;
      device_error->classes = K;
      device_error->pad0 = 0;
      device_error->index = status->index;
    }
  }
  __syncthreads();  // scan may be reused by the caller
}
// Sets to +0 the elements of p whose keep bit (bit i for p.v[i]) is clear and leaves the rest's bits as they are,
// without a branch: each 32-bit word of p is ANDed with a mask made from its elements' bits (a per-element branch on
// the bits diverges within the warp). Element i of a 16-bit T is half i % 2 of word i / 2, the low half first: z
// puts word k's two bits at 2k and 16 + 2k, and (z >> 2k & 0x10001) * 0xFFFF is then 0, 0xFFFF, 0xFFFF0000 or ~0.
template <class T> __device__ __forceinline__ void keep_only(aiec::Pack16<T>& p, u32 bits) {
  u32 w[4] = {p.u.x, p.u.y, p.u.z, p.u.w};
  if constexpr (sizeof(T) == 4) {
    AIEC_UNROLL
    for (int k = 0; k < 4; ++k) w[k] &= 0u - ((bits >> k) & 1u);
  } else {
    static_assert(sizeof(T) == 2, "16- or 32-bit elements");
    const u32 z = (bits & 0x55u) | ((bits & 0xAAu) << 15);
    AIEC_UNROLL
    for (int k = 0; k < 4; ++k) w[k] &= ((z >> (2 * k)) & 0x10001u) * 0xFFFFu;
  }
  p.u = uint4{w[0], w[1], w[2], w[3]};
}
// ---------------------------------------------------------------- W-element vector access (the activation passes)
// The activation passes move each lane's V = 16 / sizeof(T) elements of a row as V / W vectors of W elements
// (16, 8, 4 or 2 bytes): W = V where the rows and the pointers are 16-byte aligned, narrower where they are not
// (aiec_fwd_x.cu). p must be aligned to W * sizeof(T): one ld/st.global of that width on the GPU; in the simulator a
// memcpy after an alignment check (a misaligned p fails the launch, as it faults on the GPU).
template <int NB> struct RawBytes;
template <> struct RawBytes<16> { typedef uint4 type; };
template <> struct RawBytes<8> { typedef uint2 type; };
template <> struct RawBytes<4> { typedef unsigned int type; };
template <> struct RawBytes<2> { typedef unsigned short type; };
template <int W, class T> union VecW {
  typename RawBytes<W * (int)sizeof(T)>::type u;
  T v[W];
};
// Whether rows of `len` elements at the addresses in `addr_bits` (ORed together) allow W-element vectors.
template <int W, class T> __device__ __forceinline__ bool fits_vec(u64 len, u64 addr_bits) {
  return len % W == 0 && addr_bits % (W * sizeof(T)) == 0;
}
template <int W, class T> __device__ __forceinline__ void ldvec(const T* p, T* out) {
  VecW<W, T> t;
#ifdef AIEC_CUDA
  t.u = *reinterpret_cast<const typename RawBytes<W * (int)sizeof(T)>::type*>(p);
#else
  if (reinterpret_cast<u64>(p) % (W * sizeof(T))) throw ::cuda_sim::Error("misaligned vector load (the GPU faults)");
  memcpy(&t.u, p, sizeof t.u);
#endif
  AIEC_UNROLL
  for (int e = 0; e < W; ++e) out[e] = t.v[e];
}
template <int W, class T> __device__ __forceinline__ void stvec(T* p, const T* in) {
  VecW<W, T> t;
  AIEC_UNROLL
  for (int e = 0; e < W; ++e) t.v[e] = in[e];
#ifdef AIEC_CUDA
  if constexpr (W * sizeof(T) == 16) aiec::st16(p, t.u);  // one st.global.v4 (a plain store may be split)
  else *reinterpret_cast<typename RawBytes<W * (int)sizeof(T)>::type*>(p) = t.u;
#else
  if (reinterpret_cast<u64>(p) % (W * sizeof(T))) throw ::cuda_sim::Error("misaligned vector store (the GPU faults)");
  memcpy(p, &t.u, sizeof t.u);
#endif
}
// Floats per vector access to v or dv ([B, C] f32) beside a sub-vector of W elements: W, at most 4 (16 bytes). The
// channel offset b * C + o of every sub-vector is a multiple of it (C % W == 0, o % W == 0).
__host__ __device__ constexpr int v_floats(int w) { return w < 4 ? w : 4; }
// What a token / none pass with v or dv (at address va; used: whether it has one) adds to the address bits of
// aiec::vec_width, so that W also lets va take vectors of v_floats(W) floats (4 * W bytes, at most 16): W elements
// of T need W * sizeof(T) bytes of alignment, i.e. (va % 16) * sizeof(T) / 4. The rows' results do not depend on W.
template <class T> __device__ __forceinline__ u64 v_bits(bool used, u64 va) {
  return used ? (va & 15u) * sizeof(T) / 4 : 0;
}
// Advances (b, p), the sample and position of a row r = b * P + p, by a step of sb * P + sp rows (sp < P): the
// activation passes walk their rows so, without a division per row.
__device__ __forceinline__ void advance_row(u64& b, u64& p, u64 sb, u64 sp, u64 P) {
  b += sb;
  p += sp;
  if (p >= P) {
    p -= P;
    ++b;
  }
}
// Sum over the warp by an xor butterfly: every lane gets the same bits, for any schedule.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
}  // namespace aiec_k
