#!/usr/bin/env bash
# Makes sure a libnvrtc is loadable, without touching the system: uses
# $AIEC_NVRTC_LIB if set, else the system's libnvrtc.so.12, else fetches the
# nvidia-cuda-nvrtc-cu12 wheel (the library alone, no headers) into target/ and
# points AIEC_NVRTC_LIB at it. Source it: `. scripts/ensure-nvrtc.sh`.
# A failure here is a failure of the test command, never a skip.

aiec_nvrtc_version=12.9.86
aiec_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -n "${AIEC_NVRTC_LIB:-}" ] && [ -f "$AIEC_NVRTC_LIB" ]; then
  echo "nvrtc: AIEC_NVRTC_LIB=$AIEC_NVRTC_LIB"
elif ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.12 '; then
  echo "nvrtc: the system's $(ldconfig -p | grep -m1 'libnvrtc\.so\.12 ' | awk '{print $NF}')"
else
  aiec_dir="$aiec_root/target/nvrtc"
  aiec_lib="$aiec_dir/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
  if [ ! -f "$aiec_lib" ]; then
    echo "nvrtc: fetching nvidia-cuda-nvrtc-cu12==$aiec_nvrtc_version into target/nvrtc"
    mkdir -p "$aiec_dir/wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      "nvidia-cuda-nvrtc-cu12==$aiec_nvrtc_version" -d "$aiec_dir/wheel"
    python3 - "$aiec_dir" <<'PY'
import glob, sys, zipfile
out = sys.argv[1]
whl = glob.glob(f"{out}/wheel/nvidia_cuda_nvrtc_cu12-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith("nvidia/cuda_nvrtc/lib/"):
            z.extract(name, out)
PY
  fi
  export AIEC_NVRTC_LIB="$aiec_lib"
  echo "nvrtc: AIEC_NVRTC_LIB=$AIEC_NVRTC_LIB"
fi
