"""``python -m aiec`` (the report) and ``python -m aiec prepare``, each in a
fresh process with a controlled environment: no ``AIEC_NVRTC_LIB``, no
``LD_LIBRARY_PATH``, no toolkit variables, a temporary ``AIEC_CACHE_DIR``. In an
environment with PyTorch's NVRTC wheel (``nvidia/cu13/lib`` or
``nvidia/cuda_nvrtc/lib`` in site-packages) the package must find it by itself.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import sysconfig

import pytest

import aiec
from aiec import _aiec

HIDDEN = ("AIEC_NVRTC_LIB", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "AIEC_TORCH_BACKEND")


def wheel_nvrtc() -> list[str]:
    """The NVRTC libraries of NVIDIA's pip packages in this interpreter's site-packages."""
    found = []
    for key in ("purelib", "platlib"):
        found += glob.glob(os.path.join(sysconfig.get_paths()[key], "nvidia", "*", "lib", "libnvrtc.so.*"))
    return sorted({os.path.realpath(p) for p in found})


WHEEL_NVRTC = wheel_nvrtc()
NEEDS_WHEEL = pytest.mark.skipif(
    not WHEEL_NVRTC and not os.environ.get("AIEC_REQUIRE_NVRTC"),
    reason="no nvidia NVRTC pip package in this environment",
)


def run(args: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    """``python args`` from ``cwd`` (so the source folder python/aiec never
    shadows the installed package), with HIDDEN removed and ``env`` added."""
    e = {k: v for k, v in os.environ.items() if k not in HIDDEN}
    e.update(env)
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=600)
    print(p.stdout, p.stderr, sep="\n")
    return p


def line(out: str, prefix: str) -> str:
    lines = [x for x in out.splitlines() if x.startswith(prefix)]
    assert len(lines) == 1, f"one {prefix!r} line expected in:\n{out}"
    return lines[0]


def test_importing_aiec_or_the_report_imports_no_torch(tmp_path):
    code = "import sys, aiec, aiec.__main__ as m; m.report(); sys.exit('torch' in sys.modules)"
    p = run(["-c", code], tmp_path, AIEC_CACHE_DIR=str(tmp_path / "cache"))
    assert p.returncode == 0, "importing aiec or printing the report imported torch"


def test_the_report_says_what_a_bug_report_needs(tmp_path):
    cache = tmp_path / "cache"
    p = run(["-m", "aiec"], tmp_path, AIEC_CACHE_DIR=str(cache))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert aiec.__version__ in line(out, "aiec: ") and _aiec.CRATE_VERSION in line(out, "aiec: ")
    assert "CPU tensors: reference" in line(out, "backend: ")
    nvrtc = line(out, "nvrtc: ")
    m = re.fullmatch(r"nvrtc: (/\S+) \((\d+)\.(\d+)\)", nvrtc)
    assert m or nvrtc.startswith("nvrtc: none: "), nvrtc
    if WHEEL_NVRTC:
        assert m, f"the environment's NVRTC wheel ({WHEEL_NVRTC}) was not found: {nvrtc}"
        assert os.path.realpath(m.group(1)) in WHEEL_NVRTC
        assert "search directory" in line(out, "nvrtc found at: ")
    driver = line(out, "driver: ")
    assert driver.startswith("driver: none: ") or re.match(r"driver: CUDA \d+\.\d+ \(\d+\), \d+ GPU", driver)
    assert line(out, "cache: ") == f"cache: {cache} (0 files)"
    torch_version = line(out, "torch: ").split(": ", 1)[1]
    import torch

    assert torch_version.split("+")[0] == torch.__version__.split("+")[0]  # metadata may drop "+cu130"


def test_the_report_says_why_a_given_nvrtc_is_missing(tmp_path):
    p = run(["-m", "aiec"], tmp_path, AIEC_NVRTC_LIB="/nonexistent/libnvrtc.so.12")
    assert p.returncode == 0, p.stderr
    nvrtc = line(p.stdout, "nvrtc: ")
    assert nvrtc.startswith("nvrtc: none: ") and "AIEC_NVRTC_LIB=/nonexistent/libnvrtc.so.12" in nvrtc
    p = run(["-m", "aiec", "prepare", "--arch", "sm_90"], tmp_path, AIEC_NVRTC_LIB="/nonexistent/libnvrtc.so.12")
    assert p.returncode == 1 and "AIEC_NVRTC_LIB=/nonexistent" in p.stderr


@NEEDS_WHEEL
def test_prepare_compiles_every_module_with_the_wheels_nvrtc(tmp_path):
    cache = tmp_path / "cache"
    args = ["-m", "aiec", "prepare", "--arch", "sm_90", "--dtype", "f32"]
    p = run(args, tmp_path, AIEC_CACHE_DIR=str(cache))
    assert p.returncode == 0, p.stderr
    n = len(_aiec.kernel_modules(["f32"]))
    steps = [x for x in p.stdout.splitlines() if x.startswith("[")]
    assert [s.split(" ", 1)[0] for s in steps] == [f"[{i}/{n}]" for i in range(1, n + 1)], p.stdout
    assert all("-> sm_90 (cubin)" in s for s in steps), "NVRTC 12 and 13 make CUBINs for sm_90"
    assert any("aiec_fwd_x.cu [f32 only]" in s for s in steps)
    assert str(cache) in p.stdout.splitlines()[-1] and f"{n} compiled" in p.stdout.splitlines()[-1]
    files = sorted(os.listdir(cache))
    assert len(files) == n and all(re.fullmatch(r".+-sm_90-[0-9a-f]{16}\.cubin", f) for f in files), files
    with open(cache / files[0], "rb") as f:
        assert f.read(4) == b"\x7fELF"
    # Again: everything from the cache.
    p = run(args, tmp_path, AIEC_CACHE_DIR=str(cache))
    assert p.returncode == 0 and f"0 compiled, {n} already cached" in p.stdout, p.stderr
    # And the report counts the files.
    p = run(["-m", "aiec"], tmp_path, AIEC_CACHE_DIR=str(cache))
    assert line(p.stdout, "cache: ") == f"cache: {cache} ({n} files)"


def test_prepare_without_a_gpu_needs_an_arch(tmp_path):
    try:
        _aiec.cuda_driver()
        pytest.skip("a GPU is present: prepare reads its arch")
    except RuntimeError:
        pass
    p = run(["-m", "aiec", "prepare"], tmp_path, AIEC_CACHE_DIR=str(tmp_path / "cache"))
    assert p.returncode == 1 and "give --arch" in p.stderr


def test_prepare_rejects_an_unknown_arch_before_anything_else(tmp_path):
    p = run(["-m", "aiec", "prepare", "--arch", "gfx90a"], tmp_path, AIEC_NVRTC_LIB="/nonexistent/libnvrtc.so")
    assert p.returncode == 2 and "gfx90a" in p.stderr and not (tmp_path / "cache").exists()


def test_the_search_dirs_include_this_environments_site_packages():
    dirs = _aiec.nvrtc_search_dirs()
    assert sysconfig.get_paths()["purelib"] in dirs, dirs
