#!/usr/bin/env bash
# kernels/sim/selftest.sh - builds the simulator library the way build.rs will and runs kernels/sim/selftest.cpp.
#   kernels/sim/selftest.sh            release + ASan/UBSan builds, all checks (selftest.cpp, aiec_selftest.cpp)
#   AIEC_NVRTC_LIB=/path/libnvrtc.so.12 kernels/sim/selftest.sh   also compiles every .cu with the real NVRTC
# Build dir: $AIEC_SIM_BUILD (default /tmp/aiec_sim_build). Recipe per variant (see sim_abi.cpp):
#   c++ $FLAGS -c kernels/sim/sim_abi.cpp; c++ $FLAGS -x c++ -c kernels/<op>.cu (each); ar rcs libaiec_sim.a *.o
#   link the test with -Wl,--whole-archive libaiec_sim.a -Wl,--no-whole-archive
# The two variants build and run side by side, each compiling up to $AIEC_SIM_JOBS (default: the CPU count)
# files at once; each variant's output goes to $OUT/<variant>.log and is printed whole, release first.
set -euo pipefail
cd "$(dirname "$0")/../.."   # repository root
CXX=${CXX:-g++}
OUT=${AIEC_SIM_BUILD:-/tmp/aiec_sim_build}
JOBS=${AIEC_SIM_JOBS:-$(nproc)}
KERNELS=(kernels/*.cu)
TESTK=kernels/sim/selftest_kernels.cu
BASE=(-std=c++17 -fPIC -pthread -Wall -Wextra)

# variant release|asan: builds the library and the tests with that variant's flags and runs every check; its status
# is non-zero when a compile or a check failed.
variant() {
  local v=$1 d status=0 pids=() k
  local -a FLAGS
  case $v in
    release) FLAGS=(-O2) ;;
    asan)    FLAGS=(-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all) ;;
  esac
  d=$OUT/$v; rm -rf "$d"; mkdir -p "$d"
  echo "== $v: ${FLAGS[*]}"
  # the objects, at most $JOBS compiles at a time (a failed compile fails the variant)
  compile_bg() {
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
    echo "+ $CXX ${BASE[*]} ${FLAGS[*]} $*"
    $CXX "${BASE[@]}" "${FLAGS[@]}" "$@" &
    pids+=($!)
  }
  compile_bg -c kernels/sim/sim_abi.cpp -o "$d/sim_abi.o"
  for k in "${KERNELS[@]}"; do compile_bg -x c++ -c "$k" -o "$d/$(basename "$k" .cu).o"; done
  compile_bg -x c++ -c $TESTK -o "$d/selftest_kernels.o"
  for k in "${pids[@]}"; do wait "$k"; done
  local OBJS=(); for k in "${KERNELS[@]}"; do OBJS+=("$d/$(basename "$k" .cu).o"); done
  set -x
  ar rcs "$d/libaiec_sim.a" "$d/sim_abi.o" "${OBJS[@]}"
  ar rcs "$d/libaiec_sim_selftest.a" "$d/selftest_kernels.o"
  $CXX "${BASE[@]}" "${FLAGS[@]}" kernels/sim/selftest.cpp -o "$d/selftest" \
    -Wl,--whole-archive "$d/libaiec_sim.a" "$d/libaiec_sim_selftest.a" -Wl,--no-whole-archive
  { set +x; } 2>/dev/null
  "$d/selftest" || status=1
  set -x
  # the fused AIEC training kernels (kernels/aiec_*.cu) against a plain C++ reference, 6 schedules each
  $CXX "${BASE[@]}" "${FLAGS[@]}" kernels/sim/aiec_selftest.cpp -o "$d/aiec_selftest" \
    -Wl,--whole-archive "$d/libaiec_sim.a" -Wl,--no-whole-archive
  { set +x; } 2>/dev/null
  "$d/aiec_selftest" || status=1
  if [ "$v" = release ]; then
    # without --whole-archive the linker drops the kernel objects (their registrars are unreferenced)
    $CXX "${BASE[@]}" "${FLAGS[@]}" kernels/sim/selftest.cpp -o "$d/selftest_nowa" "$d/libaiec_sim.a"
    echo "linked WITHOUT --whole-archive: $("$d/selftest_nowa" count)"
    # linker-proof alternative: one translation unit that #includes sim_abi.cpp and every kernel file
    { echo '#include "kernels/sim/sim_abi.cpp"'
      for k in "${KERNELS[@]}" $TESTK; do echo "#include \"$k\""; done; } > "$d/unity.cpp"
    set -x
    $CXX "${BASE[@]}" "${FLAGS[@]}" -I. -c "$d/unity.cpp" -o "$d/unity.o"
    $CXX "${BASE[@]}" "${FLAGS[@]}" kernels/sim/selftest.cpp "$d/unity.o" -o "$d/selftest_unity"
    { set +x; } 2>/dev/null
    echo "unity build: $("$d/selftest_unity" count)"
    "$d/selftest_unity" > "$d/unity.log" || status=1
    echo "unity build: $(tail -1 "$d/unity.log")"
  else
    # ASan must stop a write past the dynamic shared memory, naming the simulated thread
    if "$d/selftest" dynoob > "$d/dynoob.log" 2>&1; then
      echo "FAIL asan dynoob: the overflow went unnoticed"; status=1
    elif grep -q "AddressSanitizer" "$d/dynoob.log" && grep -q "cuda_sim: the report above is from block" "$d/dynoob.log"; then
      echo "PASS asan dynoob: $(grep -m1 -o 'AddressSanitizer: [a-z-]*' "$d/dynoob.log"); $(grep -m1 'cuda_sim: the report above' "$d/dynoob.log")"
    else
      echo "FAIL asan dynoob: unexpected output"; tail -20 "$d/dynoob.log"; status=1
    fi
  fi
  return $status
}

mkdir -p "$OUT"
status=0
variant release > "$OUT/release.log" 2>&1 & rel=$!
variant asan > "$OUT/asan.log" 2>&1 & asan=$!
wait "$rel" || { status=1; echo "FAIL release (see above)" >> "$OUT/release.log"; }
cat "$OUT/release.log"
wait "$asan" || { status=1; echo "FAIL asan (see above)" >> "$OUT/asan.log"; }
cat "$OUT/asan.log"
if [ -n "${AIEC_NVRTC_LIB:-}" ]; then
  python3 kernels/sim/nvrtc_check.py || status=1
fi
exit $status
