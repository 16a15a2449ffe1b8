#!/usr/bin/env bash
# Makes sure a libnvrtc is loadable, without touching the system: uses
# $AIEC_NVRTC_LIB if set, else the system's libnvrtc.so.12, else fetches the
# nvidia-cuda-nvrtc-cu12 wheel (the library alone, no headers) into target/ and
# points AIEC_NVRTC_LIB at it. Source it: `. scripts/ensure-nvrtc.sh`.
# A failure here is a failure of the test command, never a skip.
#
# It also defines `aiec_nvrtc_wheel MAJOR`, which fetches that CUDA major's
# NVRTC wheel (12 or 13) into target/nvrtc-MAJOR once and prints the library's
# path; scripts/test.sh uses it to compile every kernel with NVRTC 13 as well,
# the compiler of CUDA 13 machines.

aiec_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

aiec_nvrtc_wheel() {
  local package version sub
  case "$1" in
    12) package=nvidia-cuda-nvrtc-cu12 version=12.9.86 sub=nvidia/cuda_nvrtc/lib/libnvrtc.so.12 ;;
    13) package=nvidia-cuda-nvrtc version=13.0.88 sub=nvidia/cu13/lib/libnvrtc.so.13 ;;
    *) echo "aiec_nvrtc_wheel: CUDA major 12 or 13, not '$1'" >&2; return 2 ;;
  esac
  local dir="$aiec_root/target/nvrtc-$1"
  if [ ! -f "$dir/$sub" ]; then
    echo "nvrtc: fetching $package==$version into ${dir#"$aiec_root"/}" >&2
    mkdir -p "$dir/wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$package==$version" -d "$dir/wheel" >&2 ||
      return 1
    # Only the libraries: the wheel's headers and other files are not needed.
    python3 - "$dir" "$(dirname "$sub")/" <<'PY' || return 1
import glob, sys, zipfile
out, lib = sys.argv[1], sys.argv[2]
whl = glob.glob(f"{out}/wheel/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(lib):
            z.extract(name, out)
PY
  fi
  echo "$dir/$sub"
}

if [ -n "${AIEC_NVRTC_LIB:-}" ] && [ -f "$AIEC_NVRTC_LIB" ]; then
  echo "nvrtc: AIEC_NVRTC_LIB=$AIEC_NVRTC_LIB"
elif ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.12 '; then
  echo "nvrtc: the system's $(ldconfig -p | grep -m1 'libnvrtc\.so\.12 ' | awk '{print $NF}')"
else
  AIEC_NVRTC_LIB="$(aiec_nvrtc_wheel 12)"
  export AIEC_NVRTC_LIB
  echo "nvrtc: AIEC_NVRTC_LIB=$AIEC_NVRTC_LIB"
fi
