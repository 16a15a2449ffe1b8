// kernels/common.cuh - included first by every aiec kernel file (`#include "common.cuh"`).
//
// One source, two compilers:
// * NVRTC (Rust, at run time) or nvcc: no header of the CUDA toolkit is included, anywhere; NVRTC gets this file
//   as an in-memory header named "common.cuh" and no -I option;
// * a host C++17 compiler (tests): kernels/sim/cuda_sim.h is included from here and simulates the GPU on the CPU
//   (g++ -std=c++17 -x c++ -c kernels/<op>.cu; see kernels/sim/sim_abi.cpp).
//
// Provides: aiec::u8/u16/u32/i32/u64/i64; the storage types aiec_f16 and aiec_bf16 (one `unsigned short bits`,
// 2-byte aligned, mirrored by half::f16/half::bf16 in Rust); aiec::to_float / aiec::from_float<T>;
// aiec::Pack16<T> with aiec::ld16/st16 (16-byte vector memory access), aiec::vec_width; AIEC_DYN_SHARED; AIEC_EXPORT.
//
// Conversions. For every non-NaN input, f16/bf16 <-> f32 are bit-exact and identical on the GPU, in the simulator
// and in the Rust `half` crate: f32 -> f16/bf16 rounds to nearest, ties to even, with subnormals, overflow to
// +-inf (f16: |x| >= 65520), signed zeros and infinities kept; f16/bf16 -> f32 is exact.
// NaN inputs always give a NaN. Payload bits: the simulator and the sm_75 bf16 fallback reproduce the `half`
// crate exactly: f32 -> f16: sign | 0x7C00 | 0x0200 | (mantissa >> 13); f32 -> bf16: (bits >> 16) | 0x0040;
// f16 -> f32: sign | 0x7FC00000 | (mantissa << 13); bf16 -> f32 in the simulator: (bits | 0x0040) << 16.
// On the GPU, f16 <-> f32 and sm_80+ f32 -> bf16 use the hardware cvt instructions, which may return another NaN
// (e.g. a canonical NaN), and bf16 -> f32 is a plain shift (bits << 16, a signalling NaN stays signalling).
// So tests compare NaN results by "is NaN" only. Kernels that pass a value through (threshold) copy its bits.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define AIEC_CUDA 1
#else
#include "sim/cuda_sim.h"
#endif

namespace aiec {
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;  // == CUDA's atomicAdd(unsigned long long*) type, on both compilers
typedef long long i64;
static_assert(sizeof(u16) == 2 && sizeof(u32) == 4 && sizeof(u64) == 8 && sizeof(void*) == 8, "LP64 expected");
}  // namespace aiec

struct alignas(2) aiec_f16 { unsigned short bits; };   // IEEE binary16
struct alignas(2) aiec_bf16 { unsigned short bits; };  // bfloat16

namespace aiec {
// ---------------------------------------------------------------- software conversions (half crate algorithms)
__device__ __forceinline__ u16 f32_to_f16_bits_sw(float f) {
  const u32 x = __float_as_uint(f), sign = (x >> 16) & 0x8000u, exp = x & 0x7F800000u, man = x & 0x007FFFFFu;
  if (exp == 0x7F800000u) return (u16)(sign | 0x7C00u | (man ? 0x0200u : 0u) | (man >> 13));  // inf / NaN
  const int hexp = (int)(exp >> 23) - 127 + 15;
  if (hexp >= 0x1F) return (u16)(sign | 0x7C00u);  // overflow
  if (hexp <= 0) {                                 // subnormal or zero
    if (14 - hexp > 24) return (u16)sign;
    const u32 m = man | 0x00800000u, round = 1u << (13 - hexp);
    u32 hm = m >> (14 - hexp);
    if ((m & round) && (m & (3u * round - 1u))) hm++;
    return (u16)(sign | hm);
  }
  const u32 h = sign | ((u32)hexp << 10) | (man >> 13);
  return (u16)(((x & 0x1000u) && (x & 0x2FFFu)) ? h + 1u : h);  // ties to even; a carry may give inf
}
__device__ __forceinline__ float f16_bits_to_f32_sw(u16 h) {
  const u32 sign = (u32)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1F) return __uint_as_float(sign | (man ? 0x7FC00000u | (man << 13) : 0x7F800000u));
  if (exp == 0) {  // zero or subnormal: normalise
    if (man == 0) return __uint_as_float(sign);
    int e = 0;
    u32 m = man;
    while (!(m & 0x400u)) { m <<= 1; ++e; }
    return __uint_as_float(sign | ((u32)(113 - e) << 23) | ((m & 0x3FFu) << 13));
  }
  return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}
__device__ __forceinline__ u16 f32_to_bf16_bits_sw(float f) {
  const u32 x = __float_as_uint(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (u16)((x >> 16) | 0x0040u);  // NaN: keep it quiet
  return (u16)(((x & 0x8000u) && (x & 0x17FFFu)) ? (x >> 16) + 1u : (x >> 16));
}

// ---------------------------------------------------------------- to_float / from_float<T>
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(aiec_f16 h) {
#ifdef AIEC_CUDA
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
  return f;
#else
  return f16_bits_to_f32_sw(h.bits);
#endif
}
__device__ __forceinline__ float to_float(aiec_bf16 b) {
#ifdef AIEC_CUDA
  return __uint_as_float((u32)b.bits << 16);
#else
  const u32 bits = (b.bits & 0x7FFFu) > 0x7F80u ? (b.bits | 0x0040u) : b.bits;  // half crate quiets NaNs
  return __uint_as_float(bits << 16);
#endif
}
template <class T> __device__ __forceinline__ T from_float(float f);
template <> __device__ __forceinline__ float from_float<float>(float f) { return f; }
template <> __device__ __forceinline__ aiec_f16 from_float<aiec_f16>(float f) {
  aiec_f16 h;
#ifdef AIEC_CUDA
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
#else
  h.bits = f32_to_f16_bits_sw(f);
#endif
  return h;
}
template <> __device__ __forceinline__ aiec_bf16 from_float<aiec_bf16>(float f) {
  aiec_bf16 b;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b.bits) : "f"(f));
#else
  b.bits = f32_to_bf16_bits_sw(f);  // simulator, and sm_75 (no bf16 cvt)
#endif
  return b;
}

// ---------------------------------------------------------------- 16-byte vector access
// p must be 16-byte aligned. On the GPU a single ld/st.global.v4.u32; in the simulator memcpy (no aliasing UB)
// after an alignment check: a misaligned p fails the launch, as it faults on the GPU.
__device__ __forceinline__ uint4 ld16(const void* p) {
#ifdef AIEC_CUDA
  return *reinterpret_cast<const uint4*>(p);
#else
  if (reinterpret_cast<u64>(p) & 15) throw ::cuda_sim::Error("misaligned 16-byte load (the GPU faults)");
  uint4 v; memcpy(&v, p, 16); return v;
#endif
}
__device__ __forceinline__ void st16(void* p, uint4 v) {
#ifdef AIEC_CUDA
  // Inline PTX: NVVM splits a plain 16-byte store of a value built from scalars (a Pack16 whose elements were set
  // one by one) into four 4-byte stores.
  asm("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
#else
  if (reinterpret_cast<u64>(p) & 15) throw ::cuda_sim::Error("misaligned 16-byte store (the GPU faults)");
  memcpy(p, &v, 16);
#endif
}
template <class T> union Pack16 {  // 16 bytes seen as N elements of T
  static constexpr int N = 16 / (int)sizeof(T);
  uint4 u;
  T v[16 / sizeof(T)];
};
__device__ __forceinline__ u64 addr(const void* p) { return reinterpret_cast<u64>(p); }
// The widest access width W (Pack16<T>::N, N/2, ..., 1 elements) for rows of len elements at addresses whose
// low bits are addr_bits (the OR of every base address): len % W == 0 and every base W * sizeof(T) aligned.
template <class T> __device__ __forceinline__ int vec_width(u64 len, u64 addr_bits) {
  int w = Pack16<T>::N;
  while (w > 1 && !(len % w == 0 && addr_bits % (w * sizeof(T)) == 0)) w >>= 1;
  return w;
}
}  // namespace aiec

// ---------------------------------------------------------------- dynamic shared memory
// AIEC_DYN_SHARED(float, smem); declares `float* smem` = the launch's dynamic shared memory (16-byte aligned on
// the GPU, 256 in the simulator). CUDA: one `extern __shared__` byte array reinterpreted, because
// `extern __shared__ T smem[]` with different T in instantiations of one template does not compile.
#ifdef AIEC_CUDA
#define AIEC_DYN_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char aiec_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(aiec_dyn_smem_)
#else
#define AIEC_DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::cuda_sim::dyn_shared())
#endif

// ---------------------------------------------------------------- entry points
// A kernel body is a template over the element type T at global scope, e.g.
//   template <class T> __device__ __forceinline__ void threshold_fwd(const T* __restrict__ x, ...) { ... }
// and one line at the end of the file emits the entry points:
//   AIEC_EXPORT(threshold_fwd, (const T* __restrict__ x, T* __restrict__ y, float tau, aiec::u64 n), (x, y, tau, n))
// -> extern "C" __global__ void threshold_fwd_f32(const float* ...), threshold_fwd_f16(const aiec_f16* ...),
//    threshold_fwd_bf16(const aiec_bf16* ...), each calling threshold_fwd<T>(x, y, tau, n). PARAMS may use T.
// AIEC_EXPORT_ONE(op, suffix, type, PARAMS, ARGS) emits one entry point op_suffix with T = type;
// AIEC_EXPORT_LB(op, max_threads, PARAMS, ARGS) is AIEC_EXPORT with __launch_bounds__(max_threads).
// In the simulator each entry point also registers itself under its name for aiec_sim_launch (sim_abi.h).
#ifdef AIEC_CUDA
#define AIEC_SIM_REGISTER_(NAME)
#else
#define AIEC_SIM_REGISTER_(NAME) static const int aiec_sim_registered_ = ::cuda_sim::register_kernel(#NAME, &NAME);
#endif
#define AIEC_EXPORT_IMPL_(OP, SFX, TYPE, ATTR, PARAMS, ARGS)                   \
  namespace aiec_entry_##OP##_##SFX {                                          \
  typedef TYPE T;                                                              \
  extern "C" __global__ void ATTR OP##_##SFX PARAMS { ::OP<T> ARGS; }          \
  AIEC_SIM_REGISTER_(OP##_##SFX)                                               \
  }
#define AIEC_EXPORT_ONE(OP, SFX, TYPE, PARAMS, ARGS) AIEC_EXPORT_IMPL_(OP, SFX, TYPE, , PARAMS, ARGS)
#define AIEC_EXPORT_LB(OP, MAXT, PARAMS, ARGS)                                                  \
  AIEC_IF_f32_(AIEC_EXPORT_IMPL_(OP, f32, float, __launch_bounds__(MAXT), PARAMS, ARGS))        \
  AIEC_IF_f16_(AIEC_EXPORT_IMPL_(OP, f16, aiec_f16, __launch_bounds__(MAXT), PARAMS, ARGS))     \
  AIEC_IF_bf16_(AIEC_EXPORT_IMPL_(OP, bf16, aiec_bf16, __launch_bounds__(MAXT), PARAMS, ARGS))
#define AIEC_EXPORT(OP, PARAMS, ARGS)                                      \
  AIEC_IF_f32_(AIEC_EXPORT_IMPL_(OP, f32, float, , PARAMS, ARGS))          \
  AIEC_IF_f16_(AIEC_EXPORT_IMPL_(OP, f16, aiec_f16, , PARAMS, ARGS))       \
  AIEC_IF_bf16_(AIEC_EXPORT_IMPL_(OP, bf16, aiec_bf16, , PARAMS, ARGS))

// One element type alone: NVRTC may be given one of -DAIEC_ONLY_F32, -DAIEC_ONLY_F16,
// -DAIEC_ONLY_BF16 (src/nvrtc.rs, Module::only), and AIEC_EXPORT / AIEC_EXPORT_LB then emit
// that type's entry points alone, so the other types' template instances are never compiled
// (a third of the compile time of the per-type files). Without one, all three are emitted.
#if defined(AIEC_ONLY_F32) + defined(AIEC_ONLY_F16) + defined(AIEC_ONLY_BF16) > 1
#error "at most one of AIEC_ONLY_F32, AIEC_ONLY_F16, AIEC_ONLY_BF16"
#endif
#if defined(AIEC_ONLY_F16) || defined(AIEC_ONLY_BF16)
#define AIEC_IF_f32_(X)
#else
#define AIEC_IF_f32_(X) X
#endif
#if defined(AIEC_ONLY_F32) || defined(AIEC_ONLY_BF16)
#define AIEC_IF_f16_(X)
#else
#define AIEC_IF_f16_(X) X
#endif
#if defined(AIEC_ONLY_F32) || defined(AIEC_ONLY_F16)
#define AIEC_IF_bf16_(X)
#else
#define AIEC_IF_bf16_(X) X
#endif
