"""Compile every aiec kernel file with the real NVRTC (no GPU needed), as the Rust crate will at run time:
no -I option, no CUDA toolkit header; every kernels/*.cuh (common.cuh, ...) is handed to NVRTC as an in-memory header.

    AIEC_NVRTC_LIB=/path/to/libnvrtc.so.12 python3 kernels/sim/nvrtc_check.py [file.cu ...]

Default files: kernels/*.cu and kernels/sim/selftest_kernels.cu. libnvrtc-builtins.so.12.* (same wheel) must lie
next to libnvrtc.so.12. For each file and each of sm_75, sm_80, sm_90 it builds a cubin (--gpu-architecture=sm_XX)
and PTX (compute_XX), lists the entry points and counts 16-byte vector loads/stores in the PTX.
Exit status 0 only if every compilation succeeded without a warning."""
import ctypes
import glob
import os
import re
import sys

kernels = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
lib_path = os.environ.get("AIEC_NVRTC_LIB")
if not lib_path:
    sys.exit("set AIEC_NVRTC_LIB to libnvrtc.so.12 (pip download --no-deps nvidia-cuda-nvrtc-cu12, unzip)")
lib = ctypes.CDLL(lib_path)
lib.nvrtcGetErrorString.restype = ctypes.c_char_p


def check(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(rc).decode()}")


def compile_one(name, src, arch):
    # every kernels/*.cuh in memory by its file name (kernels/*.cu), and as ../<name> (kernels/sim/*.cu)
    headers = [(os.path.basename(h).encode(), open(h, "rb").read())
               for h in sorted(glob.glob(os.path.join(kernels, "*.cuh")))]
    headers += [(b"../" + n, t) for n, t in headers]
    prog = ctypes.c_void_p()
    hdrs = (ctypes.c_char_p * len(headers))(*[t for _, t in headers])
    names = (ctypes.c_char_p * len(headers))(*[n for n, _ in headers])
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src, name.encode(), len(headers), hdrs, names),
          "nvrtcCreateProgram")
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    out = None
    if rc == 0:
        cubin = arch.startswith("sm_")
        get_size, get = (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if cubin else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX)
        check(get_size(prog, ctypes.byref(size)), "size")
        buf = ctypes.create_string_buffer(size.value)
        check(get(prog, buf), "get")
        out = buf.raw
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode().strip(), out


major, minor = ctypes.c_int(), ctypes.c_int()
check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
print(f"NVRTC {major.value}.{minor.value} from {lib_path}")
files = sys.argv[1:] or sorted(glob.glob(os.path.join(kernels, "*.cu"))) + [
    os.path.join(kernels, "sim", "selftest_kernels.cu")
]
ok = True
for path in files:
    name = os.path.relpath(path, os.path.dirname(kernels))
    src = open(path, "rb").read()
    for sm in ("75", "80", "90"):
        rc, log, cubin = compile_one(name, src, f"sm_{sm}")
        rc2, log2, ptx = compile_one(name, src, f"compute_{sm}")
        if rc != 0 or rc2 != 0 or log or log2:
            ok = False
            print(f"FAIL {name} sm_{sm}: rc {rc}/{rc2}\n{log}\n{log2}")
            continue
        ptx = ptx.decode(errors="replace")
        entries = re.findall(r"\.entry\s+(\w+)", ptx)
        v4 = len(re.findall(r"\b(?:ld|st)\.global(?:\.nc)?\.v4\.[bu]32", ptx))
        print(f"OK   {name} sm_{sm}: cubin {len(cubin)} bytes, {len(entries)} entries ({', '.join(entries)}), "
              f"{v4} 16-byte global ld/st in PTX")
sys.exit(0 if ok else 1)
