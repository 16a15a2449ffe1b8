#!/usr/bin/env bash
# The Python package's tests (README: part of "Run every test"):
#   1. a virtual environment under target/torch-venv, created when missing, with
#      torch (from the package registry: about 60 s and 5.4 GB, CPU is enough),
#      pytest, numpy, safetensors, ruff, and onnx, onnxscript and onnxruntime
#      for the export tests;
#   2. `pip install ./python`: maturin builds the extension (abi3) from the
#      workspace and installs the package `aiec`;
#   3. ruff over the package, its tests (with the oracle, python/tests/reference.py),
#      python/benchmarks and the scripts;
#   4. `python -m aiec` (the diagnostics report, without AIEC_NVRTC_LIB), then
#      pytest (python/tests): the drop-in and the fused path on the CPU
#      reference (float64, float32), through the simulator (the kernels), and
#      on CUDA when torch sees a GPU; `python -m aiec` and `prepare` in fresh
#      processes finding the venv's NVRTC wheel (test_pt_diagnostics.py);
#   5. the extension's boundary again (test_pt_boundary, test_pt_ops,
#      test_pt_state) with the simulator built with AddressSanitizer and UBSan
#      (a second build of the extension under target/asan-py, imported from
#      target/asan-pkg with the sanitizers' runtimes preloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/torch-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c 'import torch, pytest, numpy, safetensors, ruff, onnx, onnxscript, onnxruntime' 2>/dev/null; then
  "$py" -m pip install -q --upgrade pip
  # onnx, onnxscript and onnxruntime: the ONNX export round trip (test_pt_export.py).
  "$py" -m pip install -q torch pytest numpy safetensors ruff onnx onnxscript onnxruntime
fi
"$py" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'
"$py" -m pip install -q --force-reinstall --no-deps ./python
# The report a user pastes into a bug report, as a user without AIEC_NVRTC_LIB gets it
# (test_pt_diagnostics.py checks it and `prepare`): NVRTC from the venv's nvidia wheels.
(cd target && env -u AIEC_NVRTC_LIB -u LD_LIBRARY_PATH "../$py" -m aiec)
"$py" -m ruff check --config python/pyproject.toml python
"$py" -m ruff format --check --config python/pyproject.toml python
"$py" -m ruff check --config python/pyproject.toml --select E,F,W,B scripts kernels/sim/nvrtc_check.py
# A fresh TorchInductor cache for every run, so that no run depends on what an
# earlier one compiled. (Graphs of another build of the package are kept apart
# by the ops' namespace, a digest of the fakes' file: test_pt_compile_cache.py.)
export TORCHINDUCTOR_CACHE_DIR="$PWD/target/torchinductor-cache"
rm -rf "$TORCHINDUCTOR_CACHE_DIR"
# From target/: the source folder python/aiec (without the built extension) must
# not shadow the installed package.
(cd target && "../$py" -m pytest ../python/tests -q -p no:cacheprovider "$@")

echo "test-python: the boundary tests with the simulator under AddressSanitizer + UBSan"
AIEC_SIM_SANITIZE=address CARGO_TARGET_DIR="$PWD/target/asan-py" \
  "$py" -m pip install -q --no-deps --force-reinstall --target target/asan-pkg ./python
asan_preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
(
  cd target
  export PYTHONPATH="$PWD/asan-pkg" LD_PRELOAD="$asan_preload" ASAN_OPTIONS=detect_leaks=0
  "../$py" -c 'import aiec, sys; sys.exit(0 if "asan-pkg" in aiec.__file__ else "the ASan build is not the one imported")'
  "../$py" -m pytest ../python/tests/test_pt_boundary.py ../python/tests/test_pt_ops.py \
    ../python/tests/test_pt_state.py -q -p no:cacheprovider
)
