#!/usr/bin/env bash
# The GPU check: built here, run on a lent GPU machine (one H200, CUDA 13 driver, Python
# 3.12 with torch and CUDA 13 wheels, no Rust, no network; 15 minutes in all, start-up
# included, and one command at most 10 minutes: BENCHMARKS.md, "Device time").
#
#   scripts/device-check.sh build     here (with Rust): the CUDA test binaries and the
#                                     verify, bench and external_memory examples, built
#                                     without the simulator, and the Python wheel, into
#                                     target/device-check; the last line says what to carry:
#                                     `carry: PATHS (N MiB)`
#   scripts/device-check.sh run       there, from the repository root, with PATHS carried
#   scripts/device-check.sh dry-run   `run` without requiring a GPU (here: CI's step 8)
#   scripts/device-check.sh sanitize  there, a second call: compute-sanitizer over the CUDA
#                                     tests, sized to what is left of the lease
#
# `run` and `sanitize` keep a deadline, AIEC_CHECK_DEADLINE seconds (default 480 for run,
# 150 for sanitize). Every step runs under `timeout`, clipped to its budget, to what is
# left of its phase and to what is left before the deadline; a crashed, failed or hung
# step is recorded and the run goes on; a step that no longer fits is recorded as skipped.
# Phases of `run`, in order of value: the CUDA tests, verify, bench at the presets, the
# projection against cuBLAS (from bench's log), the side by side with PyTorch (vit_b and
# mlp, bf16), the Python tests on CUDA, then the side by side in f32 if it fits.
#
# Written to $OUT (else target/device-check-run/out) as the run goes: console.log,
# steps.txt (one line per step), logs.tar.gz (every step's log), aiec_bench.json,
# torch_bf16.json, torch_f32.json. The last line is always
# `device-check: N s, status S`: S is 0 when every step passed, 1 when one failed,
# crashed or timed out, 2 when none did but some were skipped; the exit status is S.
#
# For scripts/test-device-check.sh: AIEC_CHECK_DIR runs the binaries of another folder
# laid out as target/device-check (default), AIEC_CHECK_WORK puts the run's own files
# elsewhere (default target/device-check-run).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${AIEC_CHECK_DIR:-target/device-check}  # what travels: bin/, examples/, wheel/
work=${AIEC_CHECK_WORK:-target/device-check-run}  # what a run makes: logs, py/, links, caches

# The binaries the machine runs: the integration tests that reach a device, and three
# examples. Without the simulator (no `sim` feature) each test body runs on the CPU
# reference and CUDA alone: the simulator halves are CI's work, not the lease's.
TESTS=(aiec convert cuda device threshold views)
EXAMPLES=(verify bench external_memory)
CARRY_LIMIT_MIB=60

# ---------------------------------------------------------------------------- build

build() {
  set -e
  rm -rf "$out" && mkdir -p "$out/bin" "$out/examples" "$out/wheel"
  local features=(--release --no-default-features --features nccl)
  # Test binaries: cargo prints their paths as JSON.
  cargo test "${features[@]}" --no-run --message-format=json "${TESTS[@]/#/--test=}" 2>/dev/null |
    python3 -c '
import json, shutil, sys, os
for line in sys.stdin:
    m = json.loads(line)
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["profile"]["test"]:
        dst = os.path.join(sys.argv[1], "bin", m["target"]["name"])
        shutil.copy(exe, dst)
        print("test binary:", dst)
' "$out"
  cargo build "${features[@]}" "${EXAMPLES[@]/#/--example=}"
  for e in "${EXAMPLES[@]}"; do cp "target/release/examples/$e" "$out/examples/"; done
  strip "$out"/bin/* "$out"/examples/* 2>/dev/null || true
  # The Python package as an abi3 wheel (any CPython >= 3.9), for the machine's PyTorch.
  python3 -m pip wheel -q --no-deps -w "$out/wheel" ./python
  ls "$out"/wheel/*.whl
  # The GPU machine runs these as built here: say what they need of its C and C++ libraries.
  if command -v objdump >/dev/null; then
    echo "the binaries need at most: $(objdump -T "$out"/bin/* "$out"/examples/* 2>/dev/null |
      grep -oE 'GLIBC_[0-9.]+|GLIBCXX_[0-9.]+' | sort -uV | awk -F_ '{m[$1] = $0} END {print m["GLIBC"], m["GLIBCXX"]}')"
  fi
  carry_line
}

# Megabytes (MiB, rounded up) of the files named on stdin, NUL-separated.
mib() { du -cb --files0-from=- 2>/dev/null | tail -1 | awk '{print int(($1 + 1048575) / 1048576)}'; }

# What the machine needs beside the checkout, and whether it fits: the carried paths at
# most CARRY_LIMIT_MIB, and with the working tree that travels too, at most 64 MiB.
carry_line() {
  local paths=("$out/bin" "$out/examples" "$out/wheel") carry tree
  carry=$(find "${paths[@]}" -type f -print0 | mib)
  tree=$(git ls-files -z --cached --others --exclude-standard | mib)
  echo "working tree that travels: $tree MiB; carried with it: $carry MiB (the limit is 64 MiB in all)"
  echo "carry: ${paths[*]} ($carry MiB)"
  if [ "$carry" -gt "$CARRY_LIMIT_MIB" ] || [ $((carry + tree)) -gt 64 ]; then
    echo "device-check build: too big to travel ($carry MiB carried, limit $CARRY_LIMIT_MIB; $((carry + tree)) MiB in all, limit 64)"
    exit 1
  fi
}

# ---------------------------------------------------------------------------- steps

# Seconds of the deadline kept back for the last table and the logs' archive; a step
# killed at its limit gets KILL_AFTER more seconds to die after SIGTERM.
RESERVE=5
KILL_AFTER=3
status=0 phase_until=0

# record NAME OUTCOME SECONDS NOTE: one line of steps.txt and of the console.
record() {
  local line
  line=$(printf '%-22s %-10s %5s s  %s' "$1" "$2" "$3" "$4")
  echo "$line" >>"$res/steps.txt"
  echo "step: $line"
  case $2 in
    passed | n/a) ;;
    skipped) [ "$status" = 1 ] || status=2 ;;
    *) status=1 ;;
  esac
}

# phase NAME BUDGET: the next steps share at most BUDGET seconds (less when the deadline is nearer).
phase() {
  phase_until=$((SECONDS + $2))
  echo
  echo "=== $1 (budget $2 s, $((deadline - SECONDS)) s left) ==="
}

# step NAME BUDGET MIN LOG CMD...: runs CMD with its output in LOG, under the least of
# BUDGET, the phase's time left and the deadline's; skips it when less than MIN is left.
# Records passed, failed (exit N), crashed (SIG...) or timed out; sets ran (yes or no) and
# step_rc (CMD's exit status).
# In a dry run, a failure whose log matches $na_if (then reset) is n/a: no GPU here.
step() {
  local name=$1 budget=$2 min=$3 log=$4 limit left t0 rc
  shift 4
  ran=no step_rc=""
  left=$((deadline - RESERVE - KILL_AFTER - SECONDS))
  limit=$((phase_until - SECONDS))
  [ "$limit" -lt "$left" ] || limit=$left
  [ "$budget" -gt "$limit" ] || limit=$budget
  if [ "$limit" -lt "$min" ]; then
    record "$name" skipped 0 "needs ${min}-${budget} s, $((left > 0 ? left : 0)) s left (phase $((phase_until - SECONDS > 0 ? phase_until - SECONDS : 0)) s)"
    return
  fi
  ran=yes t0=$SECONDS
  timeout -k "$KILL_AFTER" "$limit" "$@" >"$log" 2>&1
  rc=$?
  step_rc=$rc
  local secs=$((SECONDS - t0)) note
  note="limit $limit s; log $(basename "$log")"
  if [ "$rc" = 0 ]; then
    record "$name" passed "$secs" "$note"
  elif [ "$mode" != run ] && [ -n "${na_if:-}" ] && grep -q "$na_if" "$log"; then
    record "$name" n/a "$secs" "exit $rc: $(grep -m1 -o "$na_if.*" "$log" | cut -c1-80)"
  elif [ "$rc" = 124 ] || { [ "$rc" = 137 ] && [ "$secs" -ge "$limit" ]; }; then
    record "$name" "timed-out" "$secs" "killed at the limit ($note)"
  elif [ "$rc" -gt 128 ]; then
    record "$name" crashed "$secs" "$(kill -l $((rc - 128)) 2>/dev/null | sed 's/^/SIG/'), exit $rc ($note)"
  else
    record "$name" failed "$secs" "exit $rc ($note)"
  fi
  na_if=""
  pack
}

# A step that cannot run on this machine: n/a in a dry run, a failure in a real one.
unavailable() {
  if [ "$mode" = run ]; then record "$1" failed 0 "$2"; else record "$1" n/a 0 "$2"; fi
}

pack() { tar czf "$res/logs.tar.gz" -C "$work" logs 2>/dev/null || true; }

# The last word, however the run ends.
finish() {
  trap - EXIT
  pack
  echo
  echo "--- steps ---"
  cat "$res/steps.txt" 2>/dev/null
  echo "device-check: $SECONDS s, status $status"
  # Let the console's tee write its last line before the command returns.
  exec >&- 2>&-
  wait "$tee_pid" 2>/dev/null
  exit "$status"
}

# Starts the console (tee'd into $res/console.log) and the deadline's clock.
start() {
  deadline=${AIEC_CHECK_DEADLINE:-$1}
  res="${OUT:-$work/out}"
  rm -rf "$work/logs" && mkdir -p "$res" "$work/logs" && : >"$res/steps.txt"
  exec > >(tee "$res/console.log") 2>&1
  tee_pid=$!
  trap finish EXIT
  trap 'record interrupted killed 0 "SIGINT or SIGTERM"; exit' INT TERM
  SECONDS=0
  [ -d "$out/bin" ] || {
    record setup failed 0 "no $out/bin: run 'scripts/device-check.sh build' first and carry what it names"
    exit
  }
  # Carried files may lose their run bit.
  chmod u+x "$out"/bin/* "$out"/examples/* 2>/dev/null
  echo "device-check $cmd: deadline $deadline s; binaries from $out; results in $res"
}

# ---------------------------------------------------------------------------- libraries

find_nvrtc() {
  if [ -n "${AIEC_NVRTC_LIB:-}" ]; then return; fi
  local lib
  # The toolkit's, the system's, then the wheels scripts/test.sh fetches (dry-run here).
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu \
    target/nvrtc-13/nvidia/cu13/lib target/nvrtc-12/nvidia/cuda_nvrtc/lib; do
    lib=$(find "$d" -maxdepth 1 -name 'libnvrtc.so*' 2>/dev/null | grep -vE "builtins|alt" | sort -V | tail -1)
    if [ -n "$lib" ]; then export AIEC_NVRTC_LIB="$lib"; return; fi
  done
  lib=$(wheel_lib nvrtc)
  if [ -n "$lib" ]; then export AIEC_NVRTC_LIB="$lib"; fi
}

# lib$1.so.<major> (the name other libraries ask the loader for), the newest, in the
# Python's wheels: CUDA 12's layout (nvidia/cublas/lib, nvidia/nccl/lib), CUDA 13's
# (nvidia/cu13/lib) and torch/lib.
wheel_lib() {
  "$py" - "$1" <<'PY' 2>/dev/null
import glob, re, site, sys
name = sys.argv[1]
bases = site.getsitepackages() + [p for p in sys.path if p.endswith("-packages")]
hits = []
for base in dict.fromkeys(bases):
    for folder in (f"{base}/nvidia/**", f"{base}/torch/lib"):
        hits += [h for h in glob.glob(f"{folder}/lib{name}.so.*", recursive=True)
                 if re.fullmatch(rf"lib{re.escape(name)}\.so\.\d+", h.rsplit("/", 1)[1])]
if hits:
    print(max(hits, key=lambda h: int(h.rsplit(".", 1)[1])))
PY
}

# lib$1.so.<major>, the newest, from the loader's cache, the toolkit, then the wheels; empty if none.
find_lib() {
  local name=$1 lib d
  lib=$(ldconfig -p 2>/dev/null | awk '{print $NF}' | grep -E "/lib$name\.so\.[0-9]+$" | sort -V | tail -1)
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -n "$lib" ] || lib=$(find "$d" -maxdepth 1 -regex ".*/lib$name\.so\.[0-9]+" 2>/dev/null | sort -V | tail -1)
  done
  [ -n "$lib" ] || lib=$(wheel_lib "$name")
  echo "$lib"
}

# cudarc opens lib<name>.so, then .so.12 and older: CUDA 13's cuBLAS is libcublas.so.13 and
# the NCCL wheel's is libnccl.so.2 alone. So each library found gets two links in $work/lib:
# its plain name, for cudarc, and its own name, for the libraries that need it (libcublas.so.13
# needs libcublasLt.so.13, and a link's $ORIGIN is $work/lib). Only the Rust binaries get
# $work/lib on their loader path (rust_env): PyTorch loads its own.
link_libs() {
  local name lib
  rm -rf "${work:?}/lib" && mkdir -p "$work/lib"
  for name in cublas cublasLt nccl; do
    lib=$(find_lib "$name")
    if [ -n "$lib" ]; then
      ln -sf "$(realpath "$lib")" "$work/lib/lib$name.so"
      ln -sf "$(realpath "$lib")" "$work/lib/$(basename "$lib")"
      echo "$name: $lib"
    else
      echo "$name: not found"
    fi
  done
  rust_env=(env "LD_LIBRARY_PATH=$PWD/$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
  if [ -e "$work/lib/libnccl.so" ]; then rust_env+=(AIEC_EXPECT_NCCL=1); fi
}

# ---------------------------------------------------------------------------- run

# One line per test binary from its log: libtest's summary and the lines that name CUDA.
test_summary() {
  local log=$1 result cuda
  result=$(grep -E '^test result:' "$log" | tail -1)
  cuda=$(grep -cE 'cuda' "$log")
  echo "  ${result:-no libtest summary (crashed or killed)}; $cuda lines name cuda"
  grep -E '^(failures:|---- |thread .* panicked)' "$log" | head -6 | sed 's/^/  /'
}

cuda_tests() {
  phase "the CUDA tests (the CPU reference and CUDA; no simulator)" 130
  local t name
  for t in "$out"/bin/*; do
    name=$(basename "$t")
    step "test $name" 60 10 "$work/logs/test-$name.log" "${rust_env[@]}" "$t" --nocapture
    [ "$ran" = no ] || test_summary "$work/logs/test-$name.log"
  done
  na_if="CUDA is not available" step "external_memory" 20 5 "$work/logs/external_memory.log" "${rust_env[@]}" "$out/examples/external_memory"
  [ "$ran" = no ] || tail -4 "$work/logs/external_memory.log"
}

verify() {
  phase "verify: gradient check and golden parity on every backend" 40
  step verify 40 10 "$work/logs/verify.log" "${rust_env[@]}" "$out/examples/verify"
  [ "$ran" = no ] || grep -vE '^\s*$' "$work/logs/verify.log" | tail -40
}

bench() {
  phase "bench at the presets (and cuBLAS beside the projection kernels)" 150
  local log="$work/logs/bench.log"
  step bench 150 20 "$log" "${rust_env[@]}" "$out/examples/bench" --json "$res/aiec_bench.json"
  [ "$ran" = no ] || cat "$log"
  local cublas
  cublas=$(grep -E '^cublas' "$log" 2>/dev/null)
  [ -z "$cublas" ] || echo "$cublas"
  if [ "$ran" = no ]; then
    record "projection vs cuBLAS" skipped 0 "bench did not run"
  elif [ -n "$cublas" ]; then
    unavailable "projection vs cuBLAS" "${cublas//$'\n'/; }"
  elif grep -q '^cuBLAS beside the projection kernels' "$log"; then
    record "projection vs cuBLAS" passed 0 "from bench's log"
  else
    record "projection vs cuBLAS" failed 0 "bench ended before its cuBLAS section"
  fi
}

# Which PyTorch the Python has, and whether it sees a GPU; once, before the phases.
probe_python() {
  local info
  info=$("$py" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())' 2>/dev/null)
  echo "python: $py (${info:-no torch})"
  torch_missing="" torch_cuda=no
  [ -n "$info" ] || torch_missing="PyTorch not importable by $py"
  [ "${info##* }" != True ] || torch_cuda=yes
}

# The Python package: the wheel beside the machine's PyTorch (no index: nothing to fetch).
install_wheel() {
  phase "the Python package" 30
  if [ -n "$torch_missing" ]; then unavailable "install the wheel" "$torch_missing"; return; fi
  rm -rf "$work/py"
  step "install the wheel" 30 5 "$work/logs/pip.log" \
    "$py" -m pip install -q --no-index --no-deps --no-cache-dir --target "$work/py" "$out"/wheel/*.whl
  [ "$ran" = no ] || [ "$step_rc" = 0 ] || torch_missing="the wheel did not install (see the step above)"
}

# side_by_side DTYPE BUDGET MIN: scripts/bench_torch.py at vit_b and mlp (eager,
# torch.compile, drop-in, fused), with a TorchInductor cache of this run's own.
side_by_side() {
  local dt=$1 args=(--presets "vit_b,mlp" --dtypes "$1")
  phase "aiec.torch side by side with PyTorch, $dt" "$2"
  if [ -n "$torch_missing" ]; then unavailable "side by side $dt" "$torch_missing"; return; fi
  # Here (no GPU): tiny shapes on the CPU, no torch.compile, to see that the script runs.
  [ "$torch_cuda" = yes ] || args+=(--device cpu --tiny --no-compile --iters 3)
  local log="$work/logs/bench_torch_$dt.log"
  step "side by side $dt" "$2" "$3" "$log" env TORCHINDUCTOR_CACHE_DIR="$PWD/$work/inductor" \
    PYTHONPATH="$PWD/$work/py" PYTHONUNBUFFERED=1 "$py" scripts/bench_torch.py "${args[@]}" --json "$res/torch_$dt.json"
  [ "$ran" = no ] || grep -v '^W[0-9]' "$log" | tail -20
}

# The Python tests that run on CUDA (their ids say cuda), with AIEC_NVRTC_LIB unset: the
# package must find the machine's NVRTC itself. From $work: python/aiec (the source, without
# the extension) must not shadow the installed package.
python_tests() {
  phase "the Python tests on CUDA" 60
  if [ -n "$torch_missing" ]; then unavailable "python tests (cuda)" "$torch_missing"; return; fi
  # The report a user would paste: which NVRTC a pip user gets, the driver and the GPU.
  local report="$work/logs/python-m-aiec.log"
  step "python -m aiec" 15 3 "$report" env -u AIEC_NVRTC_LIB -C "$work" PYTHONPATH="$PWD/$work/py" \
    "$py" -m aiec
  [ "$ran" = no ] || cat "$report"
  local log="$work/logs/pytest.log"
  step "python tests (cuda)" 60 15 "$log" env -u AIEC_NVRTC_LIB -C "$work" PYTHONPATH="$PWD/$work/py" \
    PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="$PWD/$work/inductor" "$py" -m pytest "$PWD/python/tests" \
    -q -k cuda -p no:cacheprovider -rs
  [ "$ran" = no ] || tail -8 "$log"
}

run() {
  start 480
  py="${AIEC_PYTHON:-python3}"
  export AIEC_PROJECT_DIR="$PWD" AIEC_REQUIRE_NVRTC=1 AIEC_CACHE_DIR="$PWD/$work/nvrtc-cache"
  find_nvrtc
  echo "nvrtc: ${AIEC_NVRTC_LIB:-the loader path}"
  link_libs
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  echo "C library here: $(ldd --version 2>/dev/null | head -1)"
  probe_python

  cuda_tests
  verify
  bench
  install_wheel
  side_by_side bf16 110 30
  python_tests
  side_by_side f32 60 60
}

# ---------------------------------------------------------------------------- sanitize

# compute-sanitizer over the CUDA halves of the fused-kernel tests (small shapes):
# memcheck (out-of-bounds and misaligned accesses), racecheck and synccheck (shared-memory
# hazards, barrier misuse), initcheck (reads of device memory that nothing wrote: what
# Device::alloc_unwritten relies on). A second call after `run`, with the deadline set to
# what is left of the lease; the tools in order of value, each clipped like `run`'s steps.
sanitize() {
  start 150
  local cs tool tests
  for cs in "$(command -v compute-sanitizer)" /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer ""; do
    [ -z "$cs" ] || [ ! -x "$cs" ] || break
  done
  if [ -z "$cs" ]; then unavailable sanitize "compute-sanitizer: not found"; return; fi
  py="${AIEC_PYTHON:-python3}"
  export AIEC_PROJECT_DIR="$PWD" AIEC_REQUIRE_NVRTC=1 AIEC_CACHE_DIR="$PWD/$work/nvrtc-cache"
  find_nvrtc
  local budget
  for tool in memcheck racecheck initcheck synccheck; do
    case $tool in
      memcheck) budget=60 tests=(golden_cases random_shapes activation_passes empty_batch gpu_layer) ;;
      initcheck) budget=45 tests=(golden_cases random_shapes activation_passes empty_batch gpu_layer) ;;
      racecheck) budget=45 tests=(golden_cases empty_batch) ;;
      synccheck) budget=30 tests=(golden_cases empty_batch) ;;
    esac
    phase "compute-sanitizer --tool $tool" "$budget"
    step "sanitize $tool" "$budget" 15 "$work/logs/$tool.log" \
      "$cs" --tool "$tool" --error-exitcode 9 "$out/bin/aiec" "${tests[@]}" --test-threads 4
    [ "$ran" = yes ] || continue
    grep -m1 -E 'ERROR SUMMARY|test result' "$work/logs/$tool.log"
    grep -E '^=+ (Invalid|Uninitialized|Race|Barrier)' "$work/logs/$tool.log" | sort | uniq -c | head -10
  done
}

cmd=${1:-}
case "$cmd" in
  build) build ;;
  run) mode=run; export AIEC_EXPECT_CUDA=1; run ;;
  dry-run) mode=dry-run; run ;;
  sanitize) mode=run; export AIEC_EXPECT_CUDA=1; sanitize ;;
  *) echo "usage: $0 build|run|dry-run|sanitize"; exit 2 ;;
esac
