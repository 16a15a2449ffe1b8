// kernels/sim/sim_abi.cpp - C ABI (sim_abi.h) through which Rust tests launch aiec kernels in the CPU simulator.
//
// Compile recipe (what build.rs does with the cc crate; kernels/sim/selftest.sh runs exactly this):
//   release: FLAGS = -std=c++17 -O2 -fPIC -pthread
//   ASan:    FLAGS = -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fPIC -pthread
//            (and link with the same -fsanitize flags)
//   c++ $FLAGS -c kernels/sim/sim_abi.cpp -o sim_abi.o
//   c++ $FLAGS -x c++ -c kernels/<op>.cu -o <op>.o        (each kernel file; no -I, no -include: the .cu's
//                                                            first line #include "common.cuh" pulls in cuda_sim.h)
//   ar rcs libaiec_sim.a sim_abi.o <op>.o ...
// Every kernel object registers its entry points from a static initializer that nothing references, so the
// archive must be linked whole: `cargo:rustc-link-lib=static:+whole-archive=aiec_sim` (cc:
// .link_lib_modifier("+whole-archive")), or -Wl,--whole-archive for a C++ link. Without it the linker drops the
// kernel objects and aiec_sim_kernel_count() is 0; tests should assert the count. Linker-proof alternative: compile
// one generated file that #includes sim_abi.cpp and then every kernels/<op>.cu (selftest.sh builds both ways).
// Link: -lstdc++ -lpthread (cc's .cpp(true) adds the C++ runtime).
#include "sim_abi.h"
#include "cuda_sim.h"

#include <exception>
#include <string>

namespace {
int fail(int code, const std::string& msg, char* err, size_t err_len) noexcept {
  if (err && err_len) {
    size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
    memcpy(err, msg.data(), n);
    err[n] = '\0';
  }
  return code;
}
}  // namespace

extern "C" int aiec_sim_launch(const char* kernel_name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                               unsigned by, unsigned bz, size_t dyn_smem, void** args, size_t nargs, char* err,
                               size_t err_len) noexcept {
  try {
    if (err && err_len) err[0] = '\0';
    if (!kernel_name) return fail(AIEC_SIM_E_INVALID_ARG, "kernel_name is NULL", err, err_len);
    const cuda_sim::KernelInfo* k = nullptr;
    for (const auto& e : cuda_sim::registry())
      if (strcmp(e.name, kernel_name) == 0) k = &e;
    if (!k) {
      std::string m = std::string("unknown kernel '") + kernel_name + "'; registered: ";
      for (const auto& e : cuda_sim::registry()) m += std::string(e.name) + " ";
      if (cuda_sim::registry().empty()) m += "none (was the kernel archive linked with +whole-archive?)";
      return fail(AIEC_SIM_E_UNKNOWN_KERNEL, m, err, err_len);
    }
    if (k->duplicate)
      return fail(AIEC_SIM_E_UNKNOWN_KERNEL, std::string("kernel '") + kernel_name + "' is defined twice", err, err_len);
    if (nargs != k->nparams)
      return fail(AIEC_SIM_E_ARG_COUNT, cuda_sim::detail::fmt("kernel '%s' takes %zu parameters, got %zu", kernel_name,
                                                               k->nparams, nargs), err, err_len);
    for (size_t i = 0; i < nargs; ++i)
      if (!args || !args[i])
        return fail(AIEC_SIM_E_INVALID_ARG, cuda_sim::detail::fmt("kernel '%s': args%s[%zu] is NULL", kernel_name,
                                                                   args ? "" : " (the array)", i), err, err_len);
    k->launch(k->fn, dim3(gx, gy, gz), dim3(bx, by, bz), dyn_smem, args);
    return AIEC_SIM_OK;
  } catch (const cuda_sim::ConfigError& e) {
    return fail(AIEC_SIM_E_LAUNCH_CONFIG, std::string(kernel_name) + ": " + e.what(), err, err_len);
  } catch (const cuda_sim::Error& e) {
    return fail(AIEC_SIM_E_KERNEL, std::string(kernel_name) + ": " + e.what(), err, err_len);
  } catch (const std::exception& e) {
    return fail(AIEC_SIM_E_INTERNAL, std::string("internal error: ") + e.what(), err, err_len);
  } catch (...) {
    return fail(AIEC_SIM_E_INTERNAL, "internal error", err, err_len);
  }
}

extern "C" void aiec_sim_set_seed(uint64_t seed) noexcept { cuda_sim::set_seed(seed); }
extern "C" void aiec_sim_set_workers(unsigned workers) noexcept { cuda_sim::set_workers(workers); }
extern "C" size_t aiec_sim_kernel_count(void) noexcept { return cuda_sim::registry().size(); }
extern "C" const char* aiec_sim_kernel_name(size_t i) noexcept {
  return i < cuda_sim::registry().size() ? cuda_sim::registry()[i].name : nullptr;
}
