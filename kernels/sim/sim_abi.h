/* kernels/sim/sim_abi.h - C ABI of the CPU simulator of aiec's CUDA kernels (tests only; see sim_abi.cpp). */
#ifndef AIEC_SIM_ABI_H
#define AIEC_SIM_ABI_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
#define AIEC_SIM_NOEXCEPT noexcept
extern "C" {
#else
#define AIEC_SIM_NOEXCEPT
#endif

/* Return codes of aiec_sim_launch. */
#define AIEC_SIM_OK 0
#define AIEC_SIM_E_UNKNOWN_KERNEL 1 /* no kernel registered under that name (or registered twice) */
#define AIEC_SIM_E_ARG_COUNT 2      /* nargs differs from the kernel's parameter count */
#define AIEC_SIM_E_INVALID_ARG 3    /* NULL kernel_name, NULL args / args[i] */
#define AIEC_SIM_E_LAUNCH_CONFIG 4  /* grid/block dimensions or dynamic shared memory out of range */
#define AIEC_SIM_E_KERNEL 5         /* the kernel failed: deadlock, divergent barrier, warp-op misuse,
                                       dynamic shared memory overflow, exception */
#define AIEC_SIM_E_INTERNAL 6       /* anything else (out of memory, ...) */

/* Runs kernel_name<<<(gx,gy,gz), (bx,by,bz), dyn_smem>>> on the CPU and waits for it. args[i] points at the
 * value of the i-th parameter (cuLaunchKernel convention; pointers are host addresses). Returns 0, or one of
 * the codes above with a NUL-terminated message in err (truncated to err_len; err may be NULL).
 * Thread-safe: concurrent launches from different threads run independently. No C++ exception ever
 * leaves these functions (noexcept: one that escaped would terminate). */
int aiec_sim_launch(const char* kernel_name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                    unsigned bz, size_t dyn_smem, void** args, size_t nargs, char* err,
                    size_t err_len) AIEC_SIM_NOEXCEPT;

/* Schedule of later launches (process-wide; defaults from CUDA_SIM_SEED / CUDA_SIM_WORKERS, else 0 and 1).
 * seed 0: threads and blocks in index order; other seeds: seeded random order. workers 0/1: serial. */
void aiec_sim_set_seed(uint64_t seed) AIEC_SIM_NOEXCEPT;
void aiec_sim_set_workers(unsigned workers) AIEC_SIM_NOEXCEPT;

/* The registered kernels: names are valid for the life of the process; NULL for i >= count. */
size_t aiec_sim_kernel_count(void) AIEC_SIM_NOEXCEPT;
const char* aiec_sim_kernel_name(size_t i) AIEC_SIM_NOEXCEPT;

#ifdef __cplusplus
}
#endif
#endif
