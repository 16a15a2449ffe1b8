#!/usr/bin/env bash
# The GPU check, in two halves, for a GPU machine that has the NVIDIA driver,
# the CUDA toolkit and Python but no Rust:
#
#   scripts/device-check.sh build   # here (with Rust): release test binaries and
#                                   # the verify and bench examples into
#                                   # target/device-check (ignored)
#   scripts/device-check.sh run     # there, from the repository root, with
#                                   # target/device-check carried along
#   scripts/device-check.sh dry-run # `run` without requiring a GPU (here)
#   scripts/device-check.sh sanitize # there, in a second call if the lease allows:
#                                   # compute-sanitizer over the fused-kernel tests
#
# `run` finds an NVRTC library (AIEC_NVRTC_LIB, the toolkit's, or PyTorch's
# wheel), runs every test binary (CUDA and simulator backends) and prints one
# table of results, then runs verify, bench and the PyTorch baseline
# (scripts/torch_aiec.py) and prints them side by side
# (scripts/compare_bench.py). $OUT (or target/device-check/out) receives five files:
# console.log, logs.tar.gz (every log), aiec_bench.json, torch_bench.json, compare.txt.
# Exits non-zero on any failure. Budget: under 5 minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/device-check

build() {
  rm -rf "$out" && mkdir -p "$out/bin"
  # Test binaries: cargo prints their paths as JSON.
  cargo test --release --features sim,nccl --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, shutil, sys, os
for line in sys.stdin:
    m = json.loads(line)
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["profile"]["test"]:
        name = m["target"]["name"]
        kind = m["target"]["kind"][0]
        dst = os.path.join(sys.argv[1], "bin", ("lib" if kind == "lib" else name))
        shutil.copy(exe, dst)
        print("test binary:", dst)
' "$out"
  cargo build --release --examples
  mkdir -p "$out/examples"
  cp target/release/examples/verify target/release/examples/bench target/release/examples/external_memory "$out/examples/"
  strip "$out"/bin/* "$out"/examples/* 2>/dev/null || true
  # The Python package as an abi3 wheel (any CPython >= 3.9), for the machine's PyTorch.
  python3 -m pip wheel -q --no-deps -w "$out/wheel" ./python
  ls "$out"/wheel/*.whl
  du -sh "$out"
  # The GPU machine runs these as built here: say what they need of its C and C++ libraries.
  if command -v objdump >/dev/null; then
    echo "the binaries need at most: $(objdump -T "$out"/bin/* "$out"/examples/* 2>/dev/null |
      grep -oE 'GLIBC_[0-9.]+|GLIBCXX_[0-9.]+' | sort -uV | awk -F_ '{m[$1] = $0} END {print m["GLIBC"], m["GLIBCXX"]}')"
  fi
}

find_nvrtc() {
  if [ -n "${AIEC_NVRTC_LIB:-}" ]; then return; fi
  local lib
  # The toolkit's, the system's, then the wheels scripts/test.sh fetches (dry-run here).
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu \
    target/nvrtc-13/nvidia/cu13/lib target/nvrtc-12/nvidia/cuda_nvrtc/lib; do
    lib=$(ls "$d"/libnvrtc.so* 2>/dev/null | grep -vE "builtins|alt" | head -1 || true)
    if [ -n "$lib" ]; then export AIEC_NVRTC_LIB="$lib"; return; fi
  done
  lib=$(python3 - <<'PY' 2>/dev/null || true
import glob, site, sys
for base in site.getsitepackages() + [p for p in sys.path if "site-packages" in p]:
    for hit in sorted(glob.glob(f"{base}/nvidia/**/libnvrtc.so*", recursive=True)):
        if "builtins" not in hit and "alt" not in hit:
            print(hit); raise SystemExit
PY
)
  if [ -n "$lib" ]; then export AIEC_NVRTC_LIB="$lib"; fi
}

# NCCL for the `nccl` feature's test (tests/cuda.rs): cudarc loads it as libnccl.so, which
# PyTorch's nvidia-nccl wheel ships as libnccl.so.2 only: a link in $out/nccl on the loader path.
find_nccl() {
  local lib
  lib=$(ls /usr/lib/x86_64-linux-gnu/libnccl.so* /usr/local/cuda/lib64/libnccl.so* 2>/dev/null | head -1 || true)
  if [ -z "$lib" ]; then
    lib=$("${AIEC_PYTHON:-python3}" - <<'PY' 2>/dev/null || true
import glob, site, sys
for base in site.getsitepackages() + [p for p in sys.path if "site-packages" in p]:
    for hit in sorted(glob.glob(f"{base}/nvidia/nccl/lib/libnccl.so*")):
        print(hit); raise SystemExit
PY
)
  fi
  if [ -n "$lib" ]; then
    mkdir -p "$out/nccl" && ln -sf "$lib" "$out/nccl/libnccl.so"
    export LD_LIBRARY_PATH="$PWD/$out/nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" AIEC_EXPECT_NCCL=1
    echo "nccl: $lib"
  else
    echo "nccl: not found (the nccl test checks its typed error)"
  fi
}

run() {
  [ -d "$out/bin" ] || { echo "no $out/bin: run 'scripts/device-check.sh build' first and carry $out"; exit 2; }
  # What comes back from a GPU machine is $OUT, at most 8 files: the whole console
  # (console.log, written as it goes, so a run cut short still returns it), the
  # JSON and side-by-side table, and every log in one archive (logs.tar.gz).
  local res="${OUT:-$out/out}" logs="$out/logs"
  rm -rf "$logs" && mkdir -p "$res" "$logs"
  exec > >(tee "$res/console.log") 2>&1
  pack() { tar czf "$res/logs.tar.gz" -C "$logs" . 2>/dev/null || true; }
  find_nvrtc
  find_nccl
  export AIEC_PROJECT_DIR="$PWD" AIEC_REQUIRE_NVRTC=1 CUDA_SIM_WORKERS=8
  echo "nvrtc: ${AIEC_NVRTC_LIB:-loader path}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  echo "C library here: $(ldd --version 2>/dev/null | head -1)"
  local status=0 rows=()
  for t in "$out"/bin/*; do
    local name log start secs
    name=$(basename "$t")
    # tests/nvrtc.rs only compiles (40 s of CPU); CI runs it with NVRTC 12.9 and 13.0, and
    # the CUDA tests here compile every module they launch with this machine's NVRTC.
    [ "$name" = nvrtc ] && continue
    log="$logs/$name.log"
    start=$(date +%s.%N)
    # A hung kernel must not eat the machine's whole lease: each binary gets 150 s.
    if timeout 150 "$t" --nocapture >"$log" 2>&1; then :; else status=1; fi
    secs=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
    local result cuda
    result=$(grep -E '^test result:' "$log" | tail -1 | sed -E 's/test result: ([a-zA-Z]+)\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2 \3/')
    cuda=$(grep -cE '^(golden |threshold: |convert: )?.*cuda:[0-9]' "$log" || true)
    rows+=("$(printf '%-12s %-8s %6s %6s %10s %8s' "$name" ${result:-crashed - -} "$cuda" "$secs")")
  done
  echo
  printf '%-12s %-8s %6s %6s %10s %8s\n' binary result passed failed cuda_lines seconds
  printf '%s\n' "${rows[@]}"
  echo
  echo "--- CUDA lines from the logs ---"
  grep -hE 'cuda:|golden .*cuda|skipped' "$logs"/*.log | sort | uniq | head -80 || true
  pack

  echo; echo "=== verify ==="
  timeout 120 "$out/examples/verify" >"$logs/verify.log" 2>&1 || status=1
  grep -vE '^\s*$' "$logs/verify.log" | tail -60
  echo; echo "=== external_memory: the caller's stream and cudarc memory ==="
  timeout 60 "$out/examples/external_memory" 2>&1 | tee "$logs/external_memory.log" || status=1
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  pack
  echo; echo "=== bench ==="
  timeout 180 "$out/examples/bench" --json "$res/aiec_bench.json" 2>&1 | tee "$logs/bench.log" || status=1
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  # The projection kernels (3xTF32 and f32) against cuBLAS SGEMM and cuBLASLt TF32 of the same shapes
  # (ViT-B and mlp among the presets), and the cost model beside the measured times, from the bench's log.
  echo; echo "=== the projection against cuBLAS (bench) ==="
  sed -n '/^cuBLAS beside the projection kernels/,/^$/p' "$logs/bench.log"
  grep -E '^cublas' "$logs/bench.log" || true
  pack
  # The Python package: install the wheel beside the machine's PyTorch, run its tests
  # (on CUDA: AIEC_EXPECT_CUDA makes them required), then the side-by-side bench.
  local py="${AIEC_PYTHON:-python3}"
  if "$py" -c 'import torch' 2>/dev/null; then
    rm -rf "$out/py" && "$py" -m pip install -q --no-deps --target "$out/py" "$out"/wheel/*.whl
    echo; echo "=== aiec.torch tests ==="
    # A TorchInductor cache of this run's own (the ops' namespace already keeps graphs of
    # another build apart: python/tests/test_pt_compile_cache.py). That test compiles on
    # CPU tensors in three fresh processes (about 30 s) and says nothing about the GPU:
    # CI runs it, the device's time goes to the rest.
    local tic="$PWD/$out/torchinductor-cache"
    rm -rf "$tic"
    (cd "$out" && TORCHINDUCTOR_CACHE_DIR="$tic" PYTHONPATH="$PWD/py" PYTHONUNBUFFERED=1 \
      timeout 240 "$py" -m pytest "$AIEC_PROJECT_DIR/python/tests" -q \
      --ignore "$AIEC_PROJECT_DIR/python/tests/test_pt_compile_cache.py" \
      -p no:cacheprovider -x 2>&1 | tail -25) | tee "$logs/pytest.log"
    grep -qE '[0-9]+ passed' "$logs/pytest.log" && ! grep -qE '[0-9]+ (failed|error)' "$logs/pytest.log" || status=1
    echo; echo "=== aiec.torch side by side (eager, torch.compile, drop-in, fused) ==="
    local bench_args=()
    "$py" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null || bench_args=(--device cpu --tiny --no-compile --iters 3)
    TORCHINDUCTOR_CACHE_DIR="$tic" PYTHONPATH="$out/py" PYTHONUNBUFFERED=1 timeout 240 "$py" scripts/bench_torch.py "${bench_args[@]}" \
      --json "$res/torch_side_by_side.json" 2>&1 | grep -v "^W[0-9]" | tee "$logs/bench_torch.log" || status=1
    pack
  else
    echo "PyTorch not available: the Python package was not tested here"
  fi
  if [ "${AIEC_SKIP_TORCH:-0}" != 1 ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    echo; echo "=== PyTorch baseline: same semantics as the golden cases ==="
    timeout 60 python3 scripts/torch_aiec.py check >"$logs/torch_check.log" 2>&1 || status=1
    tail -3 "$logs/torch_check.log"
    echo; echo "=== PyTorch eager and torch.compile ==="
    PYTHONUNBUFFERED=1 timeout 200 python3 scripts/torch_aiec.py bench --json "$res/torch_bench.json" 2>&1 |
      tee "$logs/torch.log" || status=1
    pack
    echo; echo "=== side by side ==="
    python3 scripts/compare_bench.py "$res/aiec_bench.json" "$res/torch_bench.json" | tee "$res/compare.txt" || status=1
  else
    echo "PyTorch with CUDA not available: no side-by-side table"
  fi
  echo; echo "device-check: ${SECONDS} s in all, status $status"
  exit $status
}

# compute-sanitizer over the CUDA half of the fused-kernel tests (small shapes):
# memcheck (out-of-bounds and misaligned accesses), initcheck (reads of device memory
# that nothing wrote: what Device::alloc_unwritten relies on), racecheck and synccheck
# (shared-memory hazards, barrier misuse). A second device call, after `run`, when its
# lease has the minutes: slow tools on the slowest tests are left out.
sanitize() {
  [ -d "$out/bin" ] || { echo "no $out/bin: run 'scripts/device-check.sh build' first and carry $out"; exit 2; }
  local res="${OUT:-$out/out}" logs="$out/logs-sanitize"
  rm -rf "$logs" && mkdir -p "$res" "$logs"
  exec > >(tee "$res/sanitize.log") 2>&1
  local cs
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1 || true)
  [ -n "$cs" ] || { echo "compute-sanitizer: not found"; exit 2; }
  find_nvrtc
  export AIEC_PROJECT_DIR="$PWD" AIEC_REQUIRE_NVRTC=1 AIEC_EXPECT_CUDA=1
  local status=0 tool tests
  for tool in memcheck initcheck racecheck synccheck; do
    case $tool in
      memcheck | initcheck) tests=(golden_cases random_shapes activation_passes empty_batch gpu_layer) ;;
      *) tests=(golden_cases empty_batch) ;;
    esac
    local start=$SECONDS rc=0
    timeout 150 "$cs" --tool "$tool" --error-exitcode 9 "$out/bin/aiec" "${tests[@]}" --test-threads 4 \
      >"$logs/$tool.log" 2>&1 || rc=$?
    [ "$rc" = 0 ] || status=1
    echo "$tool: exit $rc, $((SECONDS - start)) s; $(grep -m1 -E 'ERROR SUMMARY|test result' "$logs/$tool.log" || echo 'no summary')"
    grep -E '^=+ (ERROR SUMMARY|Invalid|Uninitialized|Race|Barrier)' "$logs/$tool.log" | sort | uniq -c | head -10 || true
  done
  tar czf "$res/sanitize-logs.tar.gz" -C "$logs" . 2>/dev/null || true
  echo "sanitize: ${SECONDS} s in all, status $status"
  exit $status
}

case "${1:-}" in
  build) build ;;
  run) export AIEC_EXPECT_CUDA=1; run ;;
  dry-run) run ;;
  sanitize) sanitize ;;
  *) echo "usage: $0 build|run|dry-run|sanitize"; exit 2 ;;
esac
