// kernels/sim/cuda_sim.h - runs aiec's CUDA kernel source on the CPU with a host C++17 compiler (tests only).
// Trimmed from the cudasim prototype. kernels/common.cuh includes it when the compiler is not nvcc/NVRTC,
// so a kernel file compiles as is: g++ -std=c++17 -x c++ -c kernels/threshold.cu (see sim_abi.cpp).
//
// What it simulates:
// * every CUDA thread is a cooperative fiber with its own stack (mmap, guard page below it); the fibers of a
//   block run on one OS thread and switch only at __syncthreads*, warp ops (__shfl*_sync, __ballot_sync,
//   __any_sync, __all_sync, __syncwarp, warp_collective), atomicCAS/atomicExch and __threadfence*;
// * __syncthreads* are real barriers. Reported as errors: deadlock (a thread exited or waits elsewhere),
//   divergent barriers (threads released together from different source lines), warp ops whose lanes disagree
//   on mask or op, shuffles from non-participating lanes, warp collectives not executed by all 32 lanes of a
//   full warp from one call site, exceptions thrown by kernel code;
// * warp collectives (cuda_sim::warp_collective): a warp-wide instruction with a larger payload, such as
//   mma.sync (kernels/mma.cuh): every lane deposits up to 16 words, the last lane to arrive computes all lanes'
//   results at once, every lane takes its own; one switch per lane, however large the computation;
// * static __shared__ = thread_local (one copy per OS thread, i.e. per running block); dynamic shared memory
//   via ::cuda_sim::dyn_shared() (AIEC_DYN_SHARED), 256-byte aligned, filled with 0xFF per block; a write of
//   up to 256 bytes past its end is reported, and the ASan build poisons everything past its end;
// * schedules: seed 0 runs threads and blocks in index order; any other seed picks the next ready thread and
//   the block order at random (set_seed / CUDA_SIM_SEED); workers > 1 runs blocks in parallel on that many
//   OS threads (set_workers / CUDA_SIM_WORKERS), so races between blocks are real races;
// * ASan: fiber switches are announced to ASan (x86_64 asm switch; ucontext elsewhere);
// * a watchdog aborts the process after CUDA_SIM_WATCHDOG_S seconds (default 60, 0 = off) without any thread
//   switch: a spin-wait on plain memory never yields and would hang forever;
// * cp.async (cuda_sim::cp_async): a copy lands in shared memory only when its thread waits for its group, so
//   a read that a missing wait or barrier would race on the GPU reads stale bytes here too;
// * kernels register by name (register_kernel) so that sim_abi.cpp can launch them with void** arguments.
// What it does NOT simulate: the GPU memory model (host memory is coherent; fences only yield), lockstep warps
// or interleavings other than at the switch points above, timing, occupancy, per-SM limits, bounds of static
// __shared__ arrays and of global memory (use the ASan build for global memory), __constant__/textures,
// cooperative groups, CUDA's __half/__nv_bfloat16 (aiec has its own types), fast-math precision (__expf is
// expf), flush-to-zero. Max dynamic shared memory: 227 KiB (sm_90 opt-in) for every launch.
#pragma once
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#error "cuda_sim.h is for host compilers; nvcc/NVRTC builds must not include it"
#endif
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <mutex>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__) || defined(CUDA_SIM_UCONTEXT)
#define CUDA_SIM_USES_UCONTEXT 1
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CUDA_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_SIM_ASAN 1
#endif
#endif
#ifdef CUDA_SIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_SIM_DEFAULT_STACK_KB 256
#else
#define CUDA_SIM_DEFAULT_STACK_KB 64
#endif
#define CUDA_SIM_MAX_DYN_SHMEM 232448  // 227 KiB
#define CUDA_SIM_DYN_GUARD 256          // canary bytes after the dynamic shared memory

// ---------------------------------------------------------------- qualifiers, built-in types
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local  // one OS thread runs all fibers of a block
// __restrict__ is a g++/clang++ keyword.
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
struct __align__(8) uint2 { unsigned int x, y; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
constexpr int warpSize = 32;

namespace cuda_sim {
struct Error : std::runtime_error { using std::runtime_error::runtime_error; };
struct ConfigError : Error { using Error::Error; };  // invalid grid/block/shared-memory request
// One lane's payload in a warp collective (warp_collective below).
struct LaneWords { uint32_t w[16]; };
// Computes a warp collective: the 32 lanes' inputs in[0..31] -> their outputs out[0..31]. Called once per warp.
typedef void (*WarpFn)(const LaneWords* in, LaneWords* out);

namespace detail {
struct Settings {
  std::atomic<uint64_t> seed{0};
  std::atomic<unsigned> workers{1};
  size_t stack_bytes = CUDA_SIM_DEFAULT_STACK_KB * 1024;
  unsigned watchdog_s = 60;
  Settings() {
    if (const char* s = getenv("CUDA_SIM_SEED")) seed = strtoull(s, nullptr, 0);
    if (const char* s = getenv("CUDA_SIM_WORKERS")) workers = (unsigned)strtoul(s, nullptr, 0);
    if (const char* s = getenv("CUDA_SIM_STACK_KB")) stack_bytes = (size_t)strtoul(s, nullptr, 0) * 1024;
    if (const char* s = getenv("CUDA_SIM_WATCHDOG_S")) watchdog_s = (unsigned)strtoul(s, nullptr, 0);
  }
};
inline Settings& settings() { static Settings* s = new Settings(); return *s; }  // never destroyed
inline std::string fmt(const char* f, ...) {
  char buf[1024]; va_list ap; va_start(ap, f); vsnprintf(buf, sizeof buf, f, ap); va_end(ap);
  return buf;
}

// ---------------------------------------------------------------- context switch
#ifndef CUDA_SIM_USES_UCONTEXT
struct Ctx { void* sp = nullptr; };
extern "C" void cuda_sim_switch(void** save_sp, void* new_sp);
extern "C" void cuda_sim_trampoline();
__asm__(".pushsection .text\n"
        ".weak cuda_sim_switch\n.type cuda_sim_switch,@function\ncuda_sim_switch:\n"
        " pushq %rbp\n pushq %rbx\n pushq %r12\n pushq %r13\n pushq %r14\n pushq %r15\n"
        " subq $8, %rsp\n stmxcsr (%rsp)\n fnstcw 4(%rsp)\n"
        " movq %rsp, (%rdi)\n movq %rsi, %rsp\n"
        " ldmxcsr (%rsp)\n fldcw 4(%rsp)\n addq $8, %rsp\n"
        " popq %r15\n popq %r14\n popq %r13\n popq %r12\n popq %rbx\n popq %rbp\n ret\n"
        ".size cuda_sim_switch, .-cuda_sim_switch\n"
        ".weak cuda_sim_trampoline\n.type cuda_sim_trampoline,@function\ncuda_sim_trampoline:\n"
        " .cfi_startproc\n .cfi_undefined rip\n movq %r12, %rdi\n callq *%rbx\n ud2\n .cfi_endproc\n"
        ".size cuda_sim_trampoline, .-cuda_sim_trampoline\n.popsection\n");
inline void ctx_init(Ctx& c, unsigned char* stack, size_t size, void (*fn)(void*), void* arg) {
  uintptr_t top = ((uintptr_t)(stack + size) - 64) & ~(uintptr_t)15;
  uint64_t* sp = (uint64_t*)(top - 64);
  uint32_t mxcsr; uint16_t fcw;
  __asm__ volatile("stmxcsr %0" : "=m"(mxcsr)); __asm__ volatile("fnstcw %0" : "=m"(fcw));
  sp[0] = mxcsr | ((uint64_t)fcw << 32);
  sp[1] = sp[2] = sp[3] = 0; sp[4] = (uint64_t)arg; sp[5] = (uint64_t)fn; sp[6] = 0;  // r15 r14 r13 r12 rbx rbp
  sp[7] = (uint64_t)&cuda_sim_trampoline;
  c.sp = sp;
}
inline void ctx_swap(Ctx& from, Ctx& to) { cuda_sim_switch(&from.sp, to.sp); }
#else
struct Ctx { ucontext_t uc; };
inline void (*&uc_target())(void*) { static thread_local void (*t)(void*) = nullptr; return t; }
inline void uc_entry(unsigned lo, unsigned hi) { uc_target()((void*)(((uintptr_t)hi << 32) | lo)); }
inline void ctx_init(Ctx& c, unsigned char* stack, size_t size, void (*fn)(void*), void* arg) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack; c.uc.uc_stack.ss_size = size; c.uc.uc_link = nullptr;
  uc_target() = fn;
  makecontext(&c.uc, (void (*)())uc_entry, 2, (unsigned)(uintptr_t)arg, (unsigned)((uintptr_t)arg >> 32));
}
inline void ctx_swap(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---------------------------------------------------------------- state
enum class St : uint8_t { Ready, Barrier, Warp, Done };
struct Cancel {};  // thrown into the fibers of a failed block so that they unwind
enum : uint8_t { OP_SHFL, OP_BALLOT, OP_ANY, OP_ALL, OP_SYNC, OP_COLL };
static const char* const op_names[] = {"__shfl*_sync", "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp",
                                       "a warp collective"};

// One cp.async copy in flight: `bytes` bytes to dst, the first src_bytes from src, the rest zeros; group 0 until
// committed, then the number of its commit group (1, 2, ...).
struct AsyncCopy {
  unsigned char* dst; const unsigned char* src; unsigned bytes, src_bytes, group;
};
struct Fiber {
  Ctx ctx;
  uint3 tid;
  unsigned idx, lane, warp;
  St st;
  int line; const char* file;  // where it waits
  unsigned char* stack;
  void* fake = nullptr;        // ASan fake stack
  std::vector<AsyncCopy> async;      // cp.async copies issued and not yet waited for (cp_async below)
  unsigned async_groups = 0;            // groups committed so far
};
struct WarpSlot {
  unsigned exist, arrived, mask[32]; uint8_t op[32]; int8_t src[32]; uint64_t val[32], res[32];
  WarpFn fn[32]; const char* name[32]; LaneWords cin[32], cout[32];  // OP_COLL: per-lane function, name, payload
};
struct Launch;
struct Worker;
struct Block {
  Launch* L; Worker* w;
  uint3 block_idx; dim3 block_dim, grid_dim;
  unsigned n, done, at_bar, bar_pred, bar_result, bar_participants;
  std::vector<WarpSlot> warps;
  std::vector<unsigned> ready; size_t head;
  bool random, cancel; std::mt19937_64 rng;
};
struct Launch {
  const std::function<void()>* body;
  dim3 grid, block; size_t dyn; uint64_t seed; unsigned nthreads;
  std::vector<unsigned> order;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu; std::vector<std::string> errors;
  void error(std::string s) {
    std::lock_guard<std::mutex> g(mu);
    if (errors.size() < 16) errors.push_back(std::move(s));
    failed = true;
  }
};
struct Worker {  // per OS thread: fiber stacks, the block it runs, its dynamic shared memory
  size_t stack_bytes = 0, page = (size_t)sysconf(_SC_PAGESIZE), region_bytes = 0;
  unsigned cap = 0;
  unsigned char* region = nullptr;
  std::vector<Fiber> fibers;
  Ctx sched;
  const void* sched_bottom = nullptr; size_t sched_size = 0; void* sched_fake = nullptr;
  Block blk;
  unsigned char* dyn = nullptr; size_t dyn_cap = 0;
  unsigned char* stack(unsigned i) { return region + (size_t)i * (stack_bytes + page) + page; }
  // ASan: a fiber's last frames never return (it switches out for good), so their redzones stay poisoned in the
  // shadow; munmap does not clear it, and a later mapping at the same address (another worker's stacks, a thread
  // stack) would then see stale redzones as stack-buffer-overflows. So the shadow is cleared before every munmap.
  void unmap() {
    if (!region) return;
#ifdef CUDA_SIM_ASAN
    ASAN_UNPOISON_MEMORY_REGION(region, region_bytes);
#endif
    munmap(region, region_bytes);
    region = nullptr;
  }
  void ensure(unsigned n, size_t sb, size_t dyn_bytes) {
    sb = (sb + page - 1) / page * page;
    if (n > cap || sb != stack_bytes) {
      unmap();
      stack_bytes = sb; cap = n; region_bytes = (size_t)n * (sb + page); region = nullptr;
      void* p = mmap(nullptr, region_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) { cap = 0; throw Error("cuda_sim: cannot map fiber stacks"); }
      region = (unsigned char*)p;
#ifdef CUDA_SIM_ASAN
      ASAN_UNPOISON_MEMORY_REGION(region, region_bytes);  // whatever lived here before left no redzones
#endif
      for (unsigned i = 0; i < n; ++i) mprotect(stack(i) - page, page, PROT_NONE);  // guard page
      fibers = std::vector<Fiber>(n);
      for (unsigned i = 0; i < n; ++i) fibers[i].stack = stack(i);
    }
    if (dyn_bytes + CUDA_SIM_DYN_GUARD > dyn_cap) {
      free_dyn();
      dyn_cap = (dyn_bytes + CUDA_SIM_DYN_GUARD + 255) / 256 * 256;
      dyn = static_cast<unsigned char*>(::operator new(dyn_cap, std::align_val_t(256)));
    }
  }
  void free_dyn() {
    if (!dyn) return;
#ifdef CUDA_SIM_ASAN
    ASAN_UNPOISON_MEMORY_REGION(dyn, dyn_cap);
#endif
    ::operator delete(dyn, std::align_val_t(256));
    dyn = nullptr; dyn_cap = 0;
  }
  ~Worker() { unmap(); free_dyn(); }
};
inline Worker& this_worker() { static thread_local Worker w; return w; }
inline thread_local Fiber* tls_fiber = nullptr;
inline thread_local Block* tls_block = nullptr;

// ---------------------------------------------------------------- switching
inline void switch_out(Fiber& f, bool exiting) {  // fiber -> scheduler
  Worker& w = *tls_block->w;
#ifdef CUDA_SIM_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake, w.sched_bottom, w.sched_size);
#else
  (void)exiting;
#endif
  ctx_swap(f.ctx, w.sched);
#ifdef CUDA_SIM_ASAN
  __sanitizer_finish_switch_fiber(f.fake, nullptr, nullptr);
#endif
}
inline void switch_in(Worker& w, Fiber& f) {  // scheduler -> fiber
#ifdef CUDA_SIM_ASAN
  __sanitizer_start_switch_fiber(&w.sched_fake, f.stack, w.stack_bytes);
#endif
  ctx_swap(w.sched, f.ctx);
#ifdef CUDA_SIM_ASAN
  __sanitizer_finish_switch_fiber(w.sched_fake, nullptr, nullptr);
#endif
}
inline std::string where(const Block& b, const Fiber& f) {
  return fmt("block (%u,%u,%u) thread (%u,%u,%u)", b.block_idx.x, b.block_idx.y, b.block_idx.z, f.tid.x, f.tid.y, f.tid.z);
}
inline void make_ready(Block& b, Fiber& g) { g.st = St::Ready; b.ready.push_back(g.idx); }

inline void release_barrier(Block& b) {
  const Fiber* first = nullptr;
  for (unsigned i = 0; i < b.n; ++i) {
    Fiber& g = b.w->fibers[i];
    if (g.st != St::Barrier) continue;
    if (!first) first = &g;
    else if (g.line != first->line || strcmp(g.file, first->file) != 0) {
      b.L->error(fmt("divergent __syncthreads: %s waits at %s:%d but %s at %s:%d", where(b, *first).c_str(),
                     first->file, first->line, where(b, g).c_str(), g.file, g.line));
      first = &g;
    }
    make_ready(b, g);
  }
  b.bar_result = b.bar_pred; b.bar_participants = b.at_bar; b.bar_pred = 0; b.at_bar = 0;
}
inline int barrier(int pred, int line, const char* file) {
  Fiber& f = *tls_fiber; Block& b = *tls_block;
  f.st = St::Barrier; f.line = line; f.file = file;
  b.bar_pred += pred != 0; b.at_bar++;
  if (b.at_bar == b.n) release_barrier(b);
  switch_out(f, false);
  if (b.cancel) throw Cancel{};
  return (int)b.bar_result;
}

// The last lane of warp `warp` arrived at a collective (mask: the lanes that take part): computes every lane's
// w.cout when the whole warp of 32 lanes called the same collective from one call site (the rule of .aligned
// warp instructions); otherwise reports the misuse and leaves zeros.
inline void run_collective(Block& b, WarpSlot& w, unsigned warp, unsigned mask, int line, const char* file) {
  const Fiber* fib = &b.w->fibers[warp * 32];
  bool ok = true;
  if (mask != ~0u) {
    b.L->error(fmt("%s:%d: %s in warp %u of block (%u,%u,%u), which has only %d threads: all 32 lanes must take "
                   "part (make blockDim a multiple of 32)", file, line, w.name[__builtin_ctz(mask)], warp,
                   b.block_idx.x, b.block_idx.y, b.block_idx.z, __builtin_popcount(mask)));
    ok = false;
  }
  for (unsigned l = 1; ok && l < 32; ++l) {
    if (w.op[l] != OP_COLL || w.op[0] != OP_COLL) ok = false;  // reported by warp_op (different warp ops)
    else if (w.fn[l] != w.fn[0]) {
      b.L->error(fmt("%s:%d: lanes of warp %u in block (%u,%u,%u) meet at different warp collectives (lane 0: %s, "
                     "lane %u: %s)", file, line, warp, b.block_idx.x, b.block_idx.y, b.block_idx.z, w.name[0], l,
                     w.name[l]));
      ok = false;
    } else if (fib[l].line != fib[0].line || strcmp(fib[l].file, fib[0].file) != 0) {
      b.L->error(fmt("divergent %s in warp %u of block (%u,%u,%u): lane 0 calls it at %s:%d, lane %u at %s:%d (all "
                     "32 lanes must execute the same instruction)", w.name[0], warp, b.block_idx.x, b.block_idx.y,
                     b.block_idx.z, fib[0].file, fib[0].line, l, fib[l].file, fib[l].line));
      ok = false;
    }
  }
  if (ok) w.fn[0](w.cin, w.cout);
  else for (unsigned m = mask; m; m &= m - 1) memset(&w.cout[__builtin_ctz(m)], 0, sizeof(LaneWords));
}

inline uint64_t warp_op(uint8_t op, unsigned mask, uint64_t val, int src, int line, const char* file) {
  Fiber& f = *tls_fiber; Block& b = *tls_block;
  WarpSlot& w = b.warps[f.warp];
  const unsigned me = 1u << f.lane;
  if (!(mask & me)) {
    b.L->error(fmt("%s:%d: %s calls %s with mask 0x%08x that excludes its own lane", file, line,
                   where(b, f).c_str(), op_names[op], mask));
    mask |= me;
  }
  mask &= w.exist;  // lanes beyond the end of a partial warp are dropped silently
  w.mask[f.lane] = mask; w.op[f.lane] = op; w.val[f.lane] = val; w.src[f.lane] = (int8_t)src;
  w.arrived |= me;
  f.st = St::Warp; f.line = line; f.file = file;
  bool complete = (w.arrived & mask) == mask;
  for (unsigned m = mask; complete && m; m &= m - 1) complete = w.mask[__builtin_ctz(m)] == mask;
  if (complete) {
    unsigned ballot = 0;
    for (unsigned m = mask; m; m &= m - 1) {
      int l = __builtin_ctz(m);
      ballot |= (unsigned)(w.val[l] != 0) << l;
      if (w.op[l] != op)
        b.L->error(fmt("%s:%d: lanes of warp %u in block (%u,%u,%u) meet at different warp ops (%s / %s)", file,
                       line, f.warp, b.block_idx.x, b.block_idx.y, b.block_idx.z, op_names[op], op_names[w.op[l]]));
    }
    if (op == OP_COLL) run_collective(b, w, f.warp, mask, line, file);
    for (unsigned m = mask; m; m &= m - 1) {
      int l = __builtin_ctz(m);
      uint64_t r = 0;
      switch (w.op[l]) {
        case OP_SHFL: {
          int s = w.src[l];
          if (!((mask >> s) & 1)) {
            b.L->error(fmt("%s:%d: %s: lane %d reads lane %d, which does not take part (mask 0x%08x)", file, line,
                           op_names[OP_SHFL], l, s, mask));
            r = w.val[l];
          } else r = w.val[s];
          break;
        }
        case OP_BALLOT: r = ballot; break;
        case OP_ANY: r = ballot != 0; break;
        case OP_ALL: r = ballot == mask; break;
        default: break;
      }
      w.res[l] = r;
      make_ready(b, b.w->fibers[f.warp * 32 + l]);
    }
    w.arrived &= ~mask;
  }
  switch_out(f, false);
  if (b.cancel) throw Cancel{};
  return w.res[f.lane];
}

inline void yield_point() {  // lets spin-waits on atomics make progress
  Fiber* f = tls_fiber;
  if (!f) return;
  make_ready(*tls_block, *f);
  switch_out(*f, false);
  if (tls_block->cancel) throw Cancel{};
}

inline void fiber_main(void* arg) {
  Fiber& f = *static_cast<Fiber*>(arg);
  Block& b = *tls_block;
#ifdef CUDA_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.w->sched_bottom, &b.w->sched_size);
#endif
  try {
    (*b.L->body)();
  } catch (const Cancel&) {
  } catch (const std::exception& e) {
    b.L->error(where(b, f) + ": exception: " + e.what());
  } catch (...) {
    b.L->error(where(b, f) + ": unknown exception");
  }
  f.st = St::Done; b.done++;
  switch_out(f, true);
  __builtin_trap();
}

inline std::string deadlock_report(const Block& b) {
  std::string s = fmt("deadlock in block (%u,%u,%u): no simulated thread can run.", b.block_idx.x, b.block_idx.y,
                      b.block_idx.z);
  unsigned counts[4] = {0, 0, 0, 0};
  const Fiber* ex[4] = {nullptr, nullptr, nullptr, nullptr};
  for (unsigned i = 0; i < b.n; ++i) {
    const Fiber& g = b.w->fibers[i];
    counts[(int)g.st]++;
    if (!ex[(int)g.st]) ex[(int)g.st] = &g;
  }
  if (counts[1]) s += fmt(" %u thread(s) wait at __syncthreads (%s:%d, e.g. %s);", counts[1], ex[1]->file,
                          ex[1]->line, where(b, *ex[1]).c_str());
  if (counts[2]) {
    const WarpSlot& w = b.warps[ex[2]->warp];
    s += fmt(" %u thread(s) wait at a warp op (%s:%d, e.g. %s with mask 0x%08x; lanes 0x%08x never arrived);",
             counts[2], ex[2]->file, ex[2]->line, where(b, *ex[2]).c_str(), w.mask[ex[2]->lane],
             w.mask[ex[2]->lane] & ~w.arrived);
  }
  if (counts[3]) s += fmt(" %u thread(s) have exited (e.g. %s) and can never arrive.", counts[3], where(b, *ex[3]).c_str());
  return s;
}

struct Watchdog {  // aborts when no thread switched for watchdog_s seconds while launches are running
  std::atomic<uint64_t> progress{0};
  std::atomic<int> active{0};
  static Watchdog& get() { static Watchdog* w = new Watchdog(); return *w; }  // never destroyed
  Watchdog() {
    const unsigned limit = settings().watchdog_s;
    if (!limit) return;
    std::thread([this, limit] {
      uint64_t last = ~0ull; unsigned still = 0;
      for (;;) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
        uint64_t p = progress.load();
        still = (active.load() > 0 && p == last) ? still + 1 : 0; last = p;
        if (still >= limit) {
          fprintf(stderr, "cuda_sim: no thread switch for %u s: a simulated thread probably spins on a value that "
                          "another thread must write (threads switch only at barriers, warp ops, atomicCAS/Exch and "
                          "fences)\n", still);
          abort();
        }
      }
    }).detach();
  }
};

inline void run_block(Launch& L, Worker& w, unsigned lin) {
  Block& b = w.blk;
  b.L = &L; b.w = &w;
  b.grid_dim = L.grid; b.block_dim = L.block;
  b.block_idx = uint3{lin % L.grid.x, (lin / L.grid.x) % L.grid.y, lin / (L.grid.x * L.grid.y)};
  b.n = L.nthreads; b.done = b.at_bar = b.bar_pred = b.bar_result = b.bar_participants = 0;
  b.ready.clear(); b.head = 0;
  b.random = L.seed != 0;
  if (b.random) b.rng.seed(L.seed * 0x9E3779B97F4A7C15ull + lin);
  const unsigned nwarps = (b.n + 31) / 32;
  b.warps.resize(nwarps);
  for (unsigned k = 0; k < nwarps; ++k) {
    unsigned lanes = std::min(32u, b.n - k * 32);
    b.warps[k].exist = lanes == 32 ? ~0u : ((1u << lanes) - 1);
    b.warps[k].arrived = 0;
  }
#ifdef CUDA_SIM_ASAN
  ASAN_UNPOISON_MEMORY_REGION(w.dyn, w.dyn_cap);
#endif
  memset(w.dyn, 0xFF, L.dyn);  // NaN for floats: reading unwritten shared memory shows up
  memset(w.dyn + L.dyn, 0xA5, CUDA_SIM_DYN_GUARD);
#ifdef CUDA_SIM_ASAN
  ASAN_POISON_MEMORY_REGION(w.dyn + L.dyn, w.dyn_cap - L.dyn);
#endif
  const unsigned bx = L.block.x, by = L.block.y;
  for (unsigned i = 0; i < b.n; ++i) {
    Fiber& f = w.fibers[i];
    f.idx = i; f.tid = uint3{i % bx, (i / bx) % by, i / (bx * by)};
    f.lane = i % 32; f.warp = i / 32; f.line = 0; f.file = "";
    f.async.clear(); f.async_groups = 0;
    ctx_init(f.ctx, f.stack, w.stack_bytes, fiber_main, &f);
    make_ready(b, f);
  }
  tls_block = &b;
  b.cancel = false;
  std::atomic<uint64_t>& progress = Watchdog::get().progress;
  uint64_t sw = 0;
again:
  while (b.head < b.ready.size()) {
    if (b.random) std::swap(b.ready[b.head], b.ready[b.head + b.rng() % (b.ready.size() - b.head)]);
    Fiber& f = w.fibers[b.ready[b.head++]];
    if (b.head == b.ready.size()) { b.ready.clear(); b.head = 0; }
    else if (b.head > 4096 && b.head * 2 > b.ready.size()) { b.ready.erase(b.ready.begin(), b.ready.begin() + b.head); b.head = 0; }
    tls_fiber = &f;
    switch_in(w, f);
    if ((++sw & 1023) == 0) progress.fetch_add(1, std::memory_order_relaxed);
  }
  if (b.done != b.n && !b.cancel) {  // deadlock: report, then unwind the stuck fibers
    L.error(deadlock_report(b));
    b.cancel = true;
    for (unsigned i = 0; i < b.n; ++i) if (w.fibers[i].st != St::Done) make_ready(b, w.fibers[i]);
    goto again;
  }
  progress.fetch_add(1, std::memory_order_relaxed);
  tls_fiber = nullptr; tls_block = nullptr;
#ifndef CUDA_SIM_ASAN  // (the ASan build reports such writes when they happen)
  for (size_t k = 0; k < CUDA_SIM_DYN_GUARD; ++k)
    if (w.dyn[L.dyn + k] != 0xA5) {
      L.error(fmt("block (%u,%u,%u) wrote past the end of its %zu bytes of dynamic shared memory (at byte offset %zu)",
                  b.block_idx.x, b.block_idx.y, b.block_idx.z, L.dyn, L.dyn + k));
      break;
    }
#endif
}

inline void run_blocks(Launch& L) {
  try {
    Worker& w = this_worker();
    w.ensure(L.nthreads, settings().stack_bytes, L.dyn);
    while (!L.failed.load(std::memory_order_relaxed)) {
      size_t k = L.next.fetch_add(1);
      if (k >= L.order.size()) break;
      run_block(L, w, L.order[k]);
    }
  } catch (const std::exception& e) {
    L.error(e.what());
  }
}

#ifdef CUDA_SIM_ASAN
inline void asan_where() {  // ASan report: name the simulated thread that failed
  if (tls_fiber && tls_block) fprintf(stderr, "cuda_sim: the report above is from %s\n", where(*tls_block, *tls_fiber).c_str());
}
#endif
inline void launch_impl(const std::function<void()>& body, dim3 grid, dim3 block, size_t dyn) {
#ifdef CUDA_SIM_ASAN
  __sanitizer_set_death_callback(asan_where);
#endif
  const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
  const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
  if (nt == 0 || nt > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || nb == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    throw ConfigError(fmt("invalid launch configuration: grid (%u,%u,%u) block (%u,%u,%u)", grid.x, grid.y, grid.z,
                          block.x, block.y, block.z));
  if (dyn > CUDA_SIM_MAX_DYN_SHMEM)
    throw ConfigError(fmt("%zu bytes of dynamic shared memory requested (at most %d)", dyn, CUDA_SIM_MAX_DYN_SHMEM));
  if (nb > (1ull << 26)) throw ConfigError(fmt("grid of %llu blocks is too large for the simulator", nb));
  Launch L;
  L.body = &body; L.grid = grid; L.block = block; L.dyn = dyn; L.nthreads = (unsigned)nt;
  L.seed = settings().seed.load();
  const unsigned workers = settings().workers.load();
  L.order.resize(nb);
  for (size_t i = 0; i < nb; ++i) L.order[i] = (unsigned)i;
  if (L.seed) std::shuffle(L.order.begin(), L.order.end(), std::mt19937_64(L.seed));
  Watchdog& wd = Watchdog::get();
  wd.active++;
  if (workers <= 1) {
    run_blocks(L);
  } else {
    std::vector<std::thread> ts;
    for (unsigned k = 0; k < workers && k < nb; ++k) ts.emplace_back([&L] { run_blocks(L); });
    for (auto& t : ts) t.join();
  }
  wd.active--;
  if (!L.errors.empty()) {
    std::string s = "kernel failed:";
    for (auto& e : L.errors) s += "\n  " + e;
    throw Error(s);
  }
}
template <class T> T load_arg(const void* p) { T v; memcpy(&v, p, sizeof v); return v; }
}  // namespace detail

inline void set_seed(uint64_t s) { detail::settings().seed = s; }           // 0: index order
inline void set_workers(unsigned w) { detail::settings().workers = w; }     // 0/1: serial
inline unsigned char* dyn_shared() { return detail::tls_block ? detail::tls_block->w->dyn : nullptr; }

// Launch `kernel` like kernel<<<grid, block, dyn_shmem>>>(args...) and wait for it. Throws ConfigError for an
// invalid configuration and Error for deadlocks, divergent barriers, warp-op misuse and shared-memory overflows.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_shmem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "cuda_sim::launch: argument count does not match the kernel");
  auto targs = std::tuple<std::decay_t<P>...>(std::forward<A>(args)...);  // copied, as CUDA does
  std::function<void()> body = [&] { std::apply(kernel, targs); };
  detail::launch_impl(body, grid, block, dyn_shmem);
}

// ---------------------------------------------------------------- registry of named kernels
struct KernelInfo {
  const char* name; size_t nparams;
  void (*fn)();                                                    // the kernel, type-erased
  void (*launch)(void (*fn)(), dim3, dim3, size_t, void* const*);  // unpacks cuLaunchKernel-style args
  bool duplicate;
};
inline std::vector<KernelInfo>& registry() { static std::vector<KernelInfo> r; return r; }
namespace detail {
template <class... P, size_t... I>
void erased_launch_impl(void (*fn)(), dim3 g, dim3 b, size_t dyn, void* const* args, std::index_sequence<I...>) {
  launch(reinterpret_cast<void (*)(P...)>(fn), g, b, dyn, load_arg<std::decay_t<P>>(args[I])...);
}
template <class... P> void erased_launch(void (*fn)(), dim3 g, dim3 b, size_t dyn, void* const* args) {
  erased_launch_impl<P...>(fn, g, b, dyn, args, std::index_sequence_for<P...>{});
}
}  // namespace detail
template <class... P> int register_kernel(const char* name, void (*kernel)(P...)) {
  static_assert((std::is_trivially_copyable<std::decay_t<P>>::value && ...), "kernel parameters must be trivially copyable");
  for (auto& k : registry())
    if (strcmp(k.name, name) == 0) { k.duplicate = true; return 0; }
  registry().push_back({name, sizeof...(P), reinterpret_cast<void (*)()>(kernel), &detail::erased_launch<P...>, false});
  return 0;
}
}  // namespace cuda_sim

// ---------------------------------------------------------------- built-in variables, synchronisation
#define threadIdx (::cuda_sim::detail::tls_fiber->tid)
#define blockIdx (::cuda_sim::detail::tls_block->block_idx)
#define blockDim (::cuda_sim::detail::tls_block->block_dim)
#define gridDim (::cuda_sim::detail::tls_block->grid_dim)
inline void __syncthreads(int line = __builtin_LINE(), const char* file = __builtin_FILE()) {
  cuda_sim::detail::barrier(0, line, file);
}
inline int __syncthreads_count(int p, int line = __builtin_LINE(), const char* file = __builtin_FILE()) {
  return cuda_sim::detail::barrier(p, line, file);
}
inline int __syncthreads_or(int p, int line = __builtin_LINE(), const char* file = __builtin_FILE()) {
  return cuda_sim::detail::barrier(p, line, file) != 0;
}
inline int __syncthreads_and(int p, int line = __builtin_LINE(), const char* file = __builtin_FILE()) {
  return cuda_sim::detail::barrier(p, line, file) == (int)cuda_sim::detail::tls_block->bar_participants;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, int line = __builtin_LINE(), const char* file = __builtin_FILE()) {
  cuda_sim::detail::warp_op(cuda_sim::detail::OP_SYNC, mask, 0, 0, line, file);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); cuda_sim::detail::yield_point(); }
inline void __threadfence_block() { __threadfence(); }

// ---------------------------------------------------------------- cp.async (sm_80 asynchronous copies)
// PTX cp.async.{ca,cg}.shared.global [dst], [src], bytes, src_bytes: copies src_bytes from global memory and fills
// the rest of the bytes with zeros, *later*: the simulator performs a copy only when its thread waits for it
// (cp_async_wait), so shared memory read before the wait and the barrier that follows it still holds the old
// bytes, as a racing read may on the GPU. commit closes the thread's open copies into a group; wait(n) completes
// every committed group but the newest n (PTX cp.async.wait_group n). Copies never waited for are dropped.
namespace cuda_sim {
inline void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) throw Error(detail::fmt("cp.async of %u bytes (4, 8 or 16)", bytes));
  if (src_bytes > bytes) throw Error(detail::fmt("cp.async: src-size %u above cp-size %u", src_bytes, bytes));
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % bytes)
    throw Error(detail::fmt("misaligned %u-byte cp.async (the GPU faults)", bytes));
  detail::tls_fiber->async.push_back({static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), bytes,
                                      src_bytes, 0});
}
inline void cp_async_commit() {
  detail::Fiber& f = *detail::tls_fiber;
  ++f.async_groups;
  for (auto& c : f.async)
    if (c.group == 0) c.group = f.async_groups;
}
inline void cp_async_wait(unsigned n) {
  detail::Fiber& f = *detail::tls_fiber;
  std::vector<detail::AsyncCopy> left;
  for (auto& c : f.async) {
    if (c.group != 0 && c.group + n <= f.async_groups) {
      if (c.src_bytes) memcpy(c.dst, c.src, c.src_bytes);
      memset(c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
    } else {
      left.push_back(c);
    }
  }
  f.async.swap(left);
}
}  // namespace cuda_sim

// ---------------------------------------------------------------- warp ops
namespace cuda_sim { namespace detail {
template <class T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type larger than 8 bytes");
  uint64_t b = 0; memcpy(&b, &v, sizeof(T)); return b;
}
template <class T> inline T from_bits(uint64_t b) { T v; memcpy(&v, &b, sizeof(T)); return v; }
// PTX shfl.sync semantics: segments of `width` lanes; out-of-segment sources return the caller's own value
inline int shfl_src(int mode, int b, int width) {
  int lane = (int)tls_fiber->lane, segmask = (32 - width) & 31;
  int maxl = (lane & segmask) | (mode == 0 ? 0 : (31 & ~segmask)), minl = lane & segmask, j;
  bool ok;
  switch (mode) {
    case 0: j = lane - b; ok = j >= maxl; break;                     // up
    case 1: j = lane + b; ok = j <= maxl; break;                     // down
    case 2: j = lane ^ b; ok = j <= maxl; break;                     // xor
    default: j = minl | (b & ~segmask & 31); ok = j <= maxl; break;  // idx
  }
  return ok ? j : lane;
}
}}  // namespace cuda_sim::detail
#define CUDA_SIM_SHFL(NAME, MODE, ARGT)                                                                     \
  template <class T>                                                                                        \
  inline T NAME(unsigned mask, T var, ARGT arg, int width = warpSize, int line = __builtin_LINE(),          \
                const char* file = __builtin_FILE()) {                                                      \
    using namespace cuda_sim::detail;                                                                       \
    return from_bits<T>(warp_op(OP_SHFL, mask, to_bits(var), shfl_src(MODE, (int)arg, width), line, file)); \
  }
CUDA_SIM_SHFL(__shfl_up_sync, 0, unsigned)
CUDA_SIM_SHFL(__shfl_down_sync, 1, unsigned)
CUDA_SIM_SHFL(__shfl_xor_sync, 2, int)
CUDA_SIM_SHFL(__shfl_sync, 3, int)
inline unsigned __ballot_sync(unsigned mask, int p, int line = __builtin_LINE(), const char* file = __builtin_FILE()) {
  return (unsigned)cuda_sim::detail::warp_op(cuda_sim::detail::OP_BALLOT, mask, p != 0, 0, line, file);
}
inline int __any_sync(unsigned mask, int p, int line = __builtin_LINE(), const char* file = __builtin_FILE()) {
  return (int)cuda_sim::detail::warp_op(cuda_sim::detail::OP_ANY, mask, p != 0, 0, line, file);
}
inline int __all_sync(unsigned mask, int p, int line = __builtin_LINE(), const char* file = __builtin_FILE()) {
  return (int)cuda_sim::detail::warp_op(cuda_sim::detail::OP_ALL, mask, p != 0, 0, line, file);
}

// ---------------------------------------------------------------- warp collectives
// A warp-wide instruction of the whole warp (like PTX's .sync.aligned ones, e.g. mma.sync in kernels/mma.cuh),
// with a payload larger than a shuffle's: the calling lane deposits in[0..nin) (nin <= 16 words; the rest of its
// LaneWords is zero) and waits; the last of the 32 lanes to arrive calls fn(inputs of lanes 0..31, outputs) once,
// on its own stack; then every lane copies its out[0..nout) (nout <= 16) and goes on. fn must depend only on its
// arguments (it runs on whichever lane comes last, which depends on the schedule). name appears in messages.
// Reported as errors (the launch fails; out is then zero): a warp of fewer than 32 threads (blockDim not a multiple
// of 32); lanes that meet at another warp op or another collective (different fn); lanes calling it from different
// source lines (line, file: the caller's); a lane that exits or waits elsewhere instead (deadlock report: "lanes
// ... never arrived"). Costs one fiber switch per lane, whatever fn computes.
namespace cuda_sim {
inline void warp_collective(const char* name, WarpFn fn, const uint32_t* in, unsigned nin, uint32_t* out,
                            unsigned nout, int line, const char* file) {
  using namespace detail;
  if (nin > 16 || nout > 16) throw Error(fmt("%s: warp_collective moves at most 16 words per lane", name));
  Fiber& f = *tls_fiber;
  WarpSlot& w = tls_block->warps[f.warp];
  LaneWords& mine = w.cin[f.lane];
  memset(&mine, 0, sizeof mine);
  memcpy(mine.w, in, nin * sizeof(uint32_t));
  w.fn[f.lane] = fn; w.name[f.lane] = name;
  warp_op(OP_COLL, 0xffffffffu, 0, 0, line, file);
  memcpy(out, w.cout[f.lane].w, nout * sizeof(uint32_t));
}
}  // namespace cuda_sim

// ---------------------------------------------------------------- atomics (relaxed, like CUDA's)
#define CUDA_SIM_ATOMIC_INT(T)                                                                                  \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }                         \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }                         \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }                         \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }                           \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }                         \
  inline T atomicExch(T* p, T v) {                                                                              \
    cuda_sim::detail::yield_point(); return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }                      \
  inline T atomicCAS(T* p, T cmp, T v) {                                                                        \
    cuda_sim::detail::yield_point();                                                                            \
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; }          \
  inline T atomicMax(T* p, T v) {                                                                               \
    T o = __atomic_load_n(p, __ATOMIC_RELAXED);                                                                 \
    while (o < v && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}        \
    return o; }                                                                                                 \
  inline T atomicMin(T* p, T v) {                                                                               \
    T o = __atomic_load_n(p, __ATOMIC_RELAXED);                                                                 \
    while (o > v && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}        \
    return o; }
CUDA_SIM_ATOMIC_INT(int)
CUDA_SIM_ATOMIC_INT(unsigned int)
CUDA_SIM_ATOMIC_INT(unsigned long long)
inline float atomicAdd(float* p, float v) {  // CUDA: order of additions is unspecified
  float o, n;
  __atomic_load(p, &o, __ATOMIC_RELAXED);
  do { n = o + v; } while (!__atomic_compare_exchange(p, &o, &n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return o;
}

// ---------------------------------------------------------------- device math / bit intrinsics
template <class T> inline T __ldg(const T* p) { return *p; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }
