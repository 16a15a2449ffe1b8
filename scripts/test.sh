#!/usr/bin/env bash
# Every test of the crate, on a fresh machine with the Rust toolchain, g++ and
# Python 3 with pip (README: "Run every test"). No GPU needed; on a machine
# with one, the same tests also run on CUDA.
#
#   0. No import circles between modules (scripts/check_module_cycles.py).
#   1. NVRTC: a loadable libnvrtc (system, or the pip wheel fetched into target/).
#   2. All tests with the simulator (schedule seed 0): CPU reference, golden,
#      gradient check, launch plans, kernels in the simulator, NVRTC builds of
#      every kernel for sm_75, sm_80 and sm_90; then those NVRTC builds again
#      with NVRTC 13 (its wheel fetched into target/ too), and the NVRTC search
#      (tests/nvrtc_search.rs) with each.
#   2c. The SASS report (scripts/sass_report.py, BENCHMARKS.md "SASS report"):
#      every kernel module compiled for sm_80 and sm_90 as a device compiles
#      it (examples/cubins, NVRTC 12.9 from its wheel), disassembled with
#      cuobjdump and nvdisasm (their wheels fetched into target/ too);
#      registers, shared memory, spills, stack, local memory and each hot
#      loop's instructions and shared-memory wavefronts per unit of work must
#      stay within scripts/sass_budgets.json. Its self-test plants excesses
#      (in process, and one through the command line) that must fail.
#   3. The simulator tests again under schedule seeds 1 and 2 (seed 2 with 4
#      parallel workers).
#   4. The simulator tests in an AddressSanitizer + UBSan build of the simulator.
#   5. The simulator's own self-test (it must catch deadlocks, divergent
#      barriers, half-warp shuffles, shared-memory overflows), release and ASan
#      side by side; its test kernels compiled with NVRTC too.
#   6. Benches and examples build; examples/external_memory runs (the caller's
#      memory and stream, against the CPU reference).
#   6b. A crate that depends on aiec beside one that turns on cudarc's
#      `dynamic-linking` (as candle's CUDA backend does) builds.
#   6c. candle (feature `candle`): the layer's tests on both backends (the CPU
#      reference, and the kernels on candle's memory in the simulator) and its
#      doc examples; examples/train runs with its defaults and must write the
#      PNG and a metrics.json with its keys.
#   7. The Python package (scripts/test-python.sh): torch into a virtual
#      environment under target/ when missing, `pip install ./python`, ruff,
#      and the pytest suite on the CPU reference and the simulator.
#   8. The GPU check script (scripts/device-check.sh) builds its binaries and
#      the wheel; with a crashing, a failing and a hanging binary planted among
#      them and a 40 s deadline, its dry run names all three, lists what it
#      skipped and ends in time with a non-zero status
#      (scripts/test-device-check.sh); then the dry run proper runs every phase
#      here without a GPU, so that it has not rotted when a session is lent one.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== 0. module dependencies point one way (no import circles) =="
python3 scripts/check_module_cycles.py

echo "== 1. NVRTC =="
. scripts/ensure-nvrtc.sh
export AIEC_REQUIRE_NVRTC=1

SIM_TESTS=(--test threshold --test convert --test device --test aiec --test views)

echo "== 2. all tests (release, simulator seed 0) =="
CUDA_SIM_SEED=0 CUDA_SIM_WORKERS=1 cargo test --release --features sim

echo "== 2a. the nccl feature builds, and without NCCL asking for it is a typed error =="
cargo test --release --features sim,nccl --test dp --test cuda

echo "== 2b. every kernel compiles with NVRTC 13 too (CUDA 13 machines' compiler) =="
nvrtc13="$(aiec_nvrtc_wheel 13)"
AIEC_NVRTC_LIB="$nvrtc13" cargo test --release --features sim --test nvrtc
# NVRTC 13 has no run path: found through a search directory, its builtins must load beside it.
AIEC_NVRTC_LIB="$nvrtc13" cargo test --release --features sim --test nvrtc_search

echo "== 2c. SASS report: every kernel within its budgets (scripts/sass_budgets.json) =="
AIEC_NVRTC_LIB="$(aiec_nvrtc_wheel 12)" python3 scripts/sass_report.py --check --self-test
# The command itself must fail on an exceeded budget, naming kernel, metric, value and budget: the first
# kernel budgeted per unit of its hot loop at sm_90, held to 0.01 instructions per unit.
low="$(python3 - <<'EOF'
import json
b = json.load(open("scripts/sass_budgets.json"))
name = next(k for k, v in b["kernels"].items() if "instructions_per_unit" in v.get("sm_90", {}))
b["kernels"][name]["sm_90"]["instructions_per_unit"] = 0.01
json.dump(b, open("target/sass/budgets-too-low.json", "w"))
print(name)
EOF
)"
if python3 scripts/sass_report.py --cubins target/sass/cubins --budgets target/sass/budgets-too-low.json --check \
  2>target/sass/too-low.log; then
  echo "sass_report.py --check passed a budget below the real value ($low)" >&2
  exit 1
fi
grep -E "^sass budget: $low sm_90: instructions_per_unit [0-9.]+ exceeds its budget 0.01\$" target/sass/too-low.log

echo "== 3. simulator tests under more schedules =="
CUDA_SIM_SEED=1 CUDA_SIM_WORKERS=1 cargo test --release --features sim "${SIM_TESTS[@]}"
CUDA_SIM_SEED=2 CUDA_SIM_WORKERS=4 cargo test --release --features sim "${SIM_TESTS[@]}"

echo "== 4. simulator tests with AddressSanitizer + UBSan =="
AIEC_SIM_SANITIZE=address CARGO_TARGET_DIR=target/asan CUDA_SIM_SEED=1 \
  cargo test --features sim "${SIM_TESTS[@]}"

echo "== 5. simulator self-test =="
# Without its NVRTC pass over every kernel file: tests/nvrtc.rs compiled them in 2 and 2b, with both
# NVRTCs, and fails on a warning as that pass does. The simulator's own test kernels get that pass here.
AIEC_NVRTC_LIB= AIEC_SIM_BUILD=target/sim-selftest bash kernels/sim/selftest.sh
python3 kernels/sim/nvrtc_check.py kernels/sim/selftest_kernels.cu

echo "== 6. benches and examples build; external_memory runs =="
cargo build --release --features sim --benches --examples
cargo run --release --features sim --example external_memory

echo "== 6b. aiec builds beside a crate that links cudarc (dynamic-linking) =="
bash scripts/check-dynamic-linking.sh

echo "== 6c. candle: the layer's tests and doc examples; examples/train runs =="
cargo test --release --features sim,candle --test candle
cargo test --release --features sim,candle --doc candle
rm -rf target/train
cargo run --release --features candle --example train -- --out target/train
test -s target/train/train.png
python3 - target/train/metrics.json <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for run in ("aiec", "relu"):
    for key in ("test_accuracy", "sparsity", "masked_fraction"):
        v = m[run][key]
        assert isinstance(v, list) and v and all(isinstance(x, float) for x in v), (run, key)
print("metrics.json: aiec and relu hold per-epoch test_accuracy, sparsity and masked_fraction;",
      "final test accuracy %.3f (AIEC), %.3f (ReLU)" % (m["aiec"]["test_accuracy"][-1], m["relu"]["test_accuracy"][-1]))
EOF

echo "== 7. the Python package: pip install ./python, ruff, pytest =="
bash scripts/test-python.sh

echo "== 8. the GPU check script: build, planted faults, dry run (no GPU: the CPU reference) =="
bash scripts/device-check.sh build
AIEC_PYTHON="$PWD/target/torch-venv/bin/python" bash scripts/test-device-check.sh
AIEC_PYTHON="$PWD/target/torch-venv/bin/python" bash scripts/device-check.sh dry-run
