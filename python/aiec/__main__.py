"""``python -m aiec``: what a bug report needs; ``python -m aiec prepare``:
every kernel compiled into the cache ahead of a job.

The report (paste it into an issue): the package's and the crate's versions,
the backend each kind of tensor runs on, the NVRTC library found (``nvrtc:
PATH (MAJOR.MINOR)``) and at which step of the search (README, section
Diagnostics), or why none was, the CUDA driver and its GPUs or why none, the
kernel cache, and torch's version. Torch is never imported (its version comes
from its installed metadata).

``prepare [--arch sm_90] [--dtype bf16]`` compiles every module a job may load
(each kernel file; the per-type ones for each ``--dtype``, all three by
default) for each ``--arch`` (default: the GPUs present) into the cache
(``AIEC_CACHE_DIR``, else ``~/.cache/aiec``). It needs no GPU, so a cluster's
login node can fill a shared cache; a job reads the files when it finds an
NVRTC of the same version (the version is part of each file's key).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import List, Optional, Sequence, TextIO, Tuple

from . import _aiec

DTYPES = ("f32", "f16", "bf16")


def _distribution_version(name: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _driver() -> Tuple[Optional[Tuple[int, List[Tuple[str, str]]]], Optional[str]]:
    """``((version, gpus), None)``, or ``(None, why not)``."""
    try:
        return _aiec.cuda_driver(), None
    except RuntimeError as e:
        return None, str(e).removeprefix("aiec: ")


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def report(out: TextIO = sys.stdout) -> int:
    """Prints the report; 0 (a missing GPU or NVRTC is reported, not an error)."""
    say = lambda s: print(s, file=out)  # noqa: E731
    pkg = _distribution_version("aiec") or "(not installed as a distribution)"
    say(f"aiec: {pkg} (extension {_aiec.__version__}, crate {_aiec.CRATE_VERSION}, {os.path.dirname(__file__)})")
    say(f"python: {platform.python_version()} ({sys.executable}), {platform.platform()}")
    # The driver first: NVRTC's search prefers a major version the driver supports.
    driver, no_driver = _driver()
    cpu = os.environ.get("AIEC_TORCH_BACKEND", "reference")
    sim = "built" if _aiec.HAS_SIM else "not built"
    say(f"backend: CUDA tensors: cuda; CPU tensors: {cpu} (AIEC_TORCH_BACKEND; simulator {sim})")
    try:
        path, major, minor, origin = _aiec.nvrtc()
        say(f"nvrtc: {path} ({major}.{minor})")
        say(f"nvrtc found at: {origin}")
    except RuntimeError as e:
        say(f"nvrtc: none: {e}")
    if os.environ.get("AIEC_NVRTC_LIB"):
        say(f"AIEC_NVRTC_LIB: {os.environ['AIEC_NVRTC_LIB']}")
    if driver is None:
        say(f"driver: none: {no_driver}")
    else:
        version, gpus = driver
        say(f"driver: CUDA {_cuda_version(version)} ({version}), {len(gpus)} GPU(s)")
        for i, (name, arch) in enumerate(gpus):
            say(f"gpu {i}: {name} ({arch})")
    cache = _aiec.cache_dir()
    files = len(os.listdir(cache)) if os.path.isdir(cache) else 0
    say(f"cache: {cache} ({files} files)")
    say(f"torch: {_distribution_version('torch') or 'not installed'}")
    return 0


class _Progress:
    """``[i/n] what`` lines, or one bar redrawn in place on a terminal."""

    def __init__(self, total: int, out: TextIO):
        self.total, self.out, self.done = total, out, 0
        self.tty = out.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.tty:
            width = 30
            filled = width * self.done // self.total
            bar = "#" * filled + "." * (width - filled)
            end = "\n" if self.done == self.total else ""
            self.out.write(f"\r\x1b[K[{bar}] {self.done}/{self.total} {what}{end}")
        else:
            self.out.write(f"[{self.done}/{self.total}] {what}\n")
        self.out.flush()


def prepare(archs: Sequence[str], dtypes: Sequence[str], out: TextIO = sys.stdout) -> int:
    """Compiles every module for each arch into the cache; 0 on success, 1 (and
    why, on stderr) when NVRTC or a compile fails or no arch is known."""
    try:
        archs = [_aiec.parse_arch(a) for a in archs]
    except ValueError as e:
        print(f"aiec prepare: {e}", file=sys.stderr)
        return 2
    driver, no_driver = _driver()
    if not archs:
        if driver is None or not driver[1]:
            print(
                f"aiec prepare: give --arch (e.g. --arch sm_90): no GPU to read it from ({no_driver})", file=sys.stderr
            )
            return 1
        archs = sorted({arch for _, arch in driver[1]})
    try:
        path, major, minor, _ = _aiec.nvrtc()
    except RuntimeError as e:
        print(f"aiec prepare: {e}", file=sys.stderr)
        return 1
    modules = _aiec.kernel_modules(list(dtypes))
    cache = _aiec.cache_dir()
    print(f"nvrtc: {path} ({major}.{minor})", file=out)
    print(f"compiling {len(modules)} modules for {', '.join(archs)} into {cache}", file=out)
    bar = _Progress(len(modules) * len(archs), out)
    compiled = cached = 0
    start = time.monotonic()
    for arch in archs:
        for file, only in modules:
            name = file if only is None else f"{file} [{only} only]"
            try:
                _, target, hit = _aiec.prepare_module(file, only, arch)
            except RuntimeError as e:
                print(f"\naiec prepare: {name} for {arch}: {e}", file=sys.stderr)
                return 1
            cached += hit
            compiled += not hit
            bar.step(f"{name} -> {target}{' (cached)' if hit else ''}")
    secs = time.monotonic() - start
    print(
        f"done in {secs:.1f} s: {compiled} compiled, {cached} already cached, in {cache} "
        f"(read by jobs whose NVRTC is {major}.{minor})",
        file=out,
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiec", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("prepare", help="compile every kernel into the cache ahead of a job (no GPU needed)")
    p.add_argument("--arch", action="append", default=[], help="target, e.g. sm_90 (repeatable; default: the GPUs)")
    p.add_argument(
        "--dtype", action="append", default=[], choices=DTYPES, help="activation type (repeatable; default: all)"
    )
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args.arch, args.dtype or list(DTYPES))
    return report()


if __name__ == "__main__":
    sys.exit(main())
