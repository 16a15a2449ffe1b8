#!/usr/bin/env python3
"""SASS report: what every kernel costs an SM, and what its hot loop issues.

No GPU needed. For every kernel entry point at sm_80 and sm_90:

* resources: registers, static shared memory, spill bytes and stack as ptxas
  reports them (NVRTC's ``--ptxas-options=-v``), local memory as cuobjdump
  reads it from the CUBIN, and the theoretical occupancy at the block size the
  launch plans use (``aiec::resources``, ``aiec::launch::block_threads``);
* the hot loop's instruction mix, from ``nvdisasm``: loops are the ranges
  closed by backward branches; the hot loop is, for a GEMM (a kernel with
  ``HMMA``), the innermost loop holding the most ``HMMA`` (per ``mma``: the
  instructions and the shared-memory wavefronts; among equal loops, the
  costliest of those with the widest ``cp.async`` copies), for the f32 SIMT GEMMs the
  innermost loop holding the most ``FFMA`` (per ``FFMA``), and for every other
  kernel the innermost loop with the widest global loads, then the most loads
  of that width, then the most global loads and stores (per iteration, and per
  element where ``sass_budgets.json`` records how many elements one iteration
  handles, with the source line that says so).

Shared-memory wavefronts are a static estimate that assumes no bank conflicts:
a warp's ``LDS.128``/``STS.128`` is 4 wavefronts (512 B at 128 B each),
``.64`` is 2, 32 bits and narrower 1; ``LDSM`` counts one per 8x8 matrix
(``.M88.4``: 4); ``LDGSTS`` (``cp.async``) writes shared memory and counts by
its width like ``STS``; ``ATOMS`` counts 1. An instruction inside a loop nested
in the hot loop counts once, as if that loop ran once (the report says how
many such loops there are).

The CUBINs come from ``cargo run --release --example cubins`` (the crate's own
NVRTC options, every module a device may load); ``cuobjdump`` and ``nvdisasm``
from PyPI's ``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` wheels,
extracted into ``target/sass-tools`` once (only CUDA 13 builds are published;
they read the sm_80/sm_90 CUBINs of NVRTC 12.9 and 13.0 alike).

    python3 scripts/sass_report.py                # the report, plain text
    python3 scripts/sass_report.py --markdown     # the tables of BENCHMARKS.md
    python3 scripts/sass_report.py --check        # non-zero when a budget (or a goal held) is exceeded
    python3 scripts/sass_report.py --self-test    # the check must catch planted excesses
    python3 scripts/sass_report.py --record       # rewrite the budgets from today's values

Budgets live in ``scripts/sass_budgets.json``: per kernel and architecture the
recorded ceilings (registers, shared bytes, spills, stack, local bytes,
instructions and wavefronts per unit of work in the hot loop) and floors (the
narrowest global load and store in the hot loop, in bits). A kernel's ``goal``
(a target an issue set) is a second ceiling ``--check`` holds it to, unless its
``goal_exempt`` gives the reason its geometry cannot meet it. ``--record`` keeps
every hand-written field (``elements_per_iteration``, ``elements_source``,
``note``, ``goal``, ``goal_exempt``), sets the ceilings from today's values with
the slack described in that file, and keeps today's hot-loop rates without slack
under ``today`` (not checked: the cost model of ``examples/bench.rs`` reads them).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = ROOT / "scripts" / "sass_budgets.json"
TOOLS_VERSION = "13.4.92"
TOOLS = ROOT / "target" / "sass-tools" / TOOLS_VERSION
WHEELS = {"cuobjdump": "nvidia-cuda-cuobjdump", "nvdisasm": "nvidia-cuda-nvdisasm"}
ARCHS = ("sm_80", "sm_90")

# ---------------------------------------------------------------- the tools


def tool(name: str) -> Path:
    """The path of ``cuobjdump`` or ``nvdisasm``, fetched once into target/."""
    path = TOOLS / "nvidia" / "cu13" / "bin" / name
    if path.is_file():
        return path
    package = WHEELS[name]
    wheel_dir = TOOLS / "wheel"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    print(f"sass: fetching {package}=={TOOLS_VERSION} into {TOOLS.relative_to(ROOT)}", file=sys.stderr)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            f"{package}=={TOOLS_VERSION}",
            "-d",
            str(wheel_dir),
        ],
        check=True,
        stdout=sys.stderr,
    )
    prefix = package.replace("-", "_") + "-"
    wheel = next(w for w in wheel_dir.glob("*.whl") if w.name.startswith(prefix))
    member = f"nvidia/cu13/bin/{name}"
    with zipfile.ZipFile(wheel) as z:
        z.extract(member, TOOLS)
    path.chmod(0o755)
    return path


def build_cubins(out: Path) -> None:
    """The CUBINs and their manifest, from the crate's own compile."""
    env = dict(os.environ)
    wheel_lib = ROOT / "target" / "nvrtc-12" / "nvidia" / "cuda_nvrtc" / "lib" / "libnvrtc.so.12"
    if not env.get("AIEC_NVRTC_LIB") and wheel_lib.is_file():
        env["AIEC_NVRTC_LIB"] = str(wheel_lib)
    cmd = ["cargo", "run", "--quiet", "--release", "--example", "cubins", "--", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=sys.stderr)


# ---------------------------------------------------------------- SASS parsing

INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
LABEL = re.compile(r"^\s*(\.L_x_\d+):")
FUNC = re.compile(r"^\s*\.text\.([A-Za-z_$][\w$]*):")
LINE = re.compile(r'//## File "([^"]*)", line (\d+)')
TARGET = re.compile(r"`\((\.L_x_\d+)\)")
PRED = re.compile(r"^@!?U?P[T0-9]+\s+")


class Instr:
    __slots__ = ("addr", "pred", "op", "args", "src", "target")

    def __init__(self, addr: int, text: str, src: tuple[str, int] | None):
        self.addr = addr
        m = PRED.match(text)
        self.pred = m.group(0).strip() if m else ""
        rest = text[m.end() :] if m else text
        self.op, _, self.args = rest.partition(" ")
        self.src = src
        self.target: int | None = None

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


def parse_sass(text: str) -> dict[str, list[Instr]]:
    """nvdisasm output (``-c -g``) to each function's instructions, with the
    branch targets resolved to addresses (``Instr.args`` keeps the label)."""
    funcs: dict[str, list[Instr]] = {}
    labels: dict[str, dict[str, int]] = {}
    cur: list[Instr] | None = None
    name = ""
    pending: list[str] = []
    src: tuple[str, int] | None = None
    for line in text.splitlines():
        if m := FUNC.match(line):
            name = m.group(1)
            cur = funcs.setdefault(name, [])
            labels[name] = {}
            pending, src = [], None
            continue
        if cur is None:
            continue
        if m := LINE.search(line):
            src = (os.path.basename(m.group(1)).split(" [")[0], int(m.group(2)))
            continue
        if m := LABEL.match(line):
            pending.append(m.group(1))
            continue
        if m := INSTR.match(line):
            ins = Instr(int(m.group(1), 16), m.group(2), src)
            for lab in pending:
                labels[name][lab] = ins.addr
            pending = []
            cur.append(ins)
    return {name: _resolve(body, labels[name]) for name, body in funcs.items()}


def _resolve(body: list[Instr], labels: dict[str, int]) -> list[Instr]:
    for ins in body:
        t = TARGET.search(ins.args)
        ins.target = labels.get(t.group(1)) if t and ins.base in ("BRA", "BRX", "JMP") else None
    return body


def loops(body: list[Instr]) -> list[tuple[int, int]]:
    """Index ranges [first, last] closed by a backward branch. Ranges that hold
    an unpredicated ``EXIT`` or ``RET`` are not loops (the jumps back from the
    divergent fallbacks ptxas places after a kernel's or a ``__noinline__``
    function's end), nor is the final ``BRA`` to itself."""
    index = {ins.addr: i for i, ins in enumerate(body)}
    out = set()
    for i, ins in enumerate(body):
        t = ins.target
        if t is None or t > ins.addr or t not in index:
            continue
        first = index[t]
        if first == i:
            continue
        if any(b.base in ("EXIT", "RET") and not b.pred for b in body[first:i]):
            continue
        out.add((first, i))
    return sorted(out)


def innermost(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [r for r in ranges if not any(o != r and r[0] <= o[0] and o[1] <= r[1] for o in ranges)]


def width_bits(op: str) -> int:
    """The access width of a load or store: 128, 64, 32 (the default), 16, 8."""
    parts = op.split(".")[1:]
    for p in parts:
        if p in ("128", "64", "32"):
            return int(p)
        if p in ("U16", "S16", "16"):
            return 16
        if p in ("U8", "S8", "8"):
            return 8
    return 32


def wavefronts(ins: Instr) -> int:
    """Static shared-memory wavefronts of one warp instruction (conflict-free).
    ``@!PT`` (never true) instructions access nothing: ptxas pads LDGSTS with
    such LDS; they take an issue slot and count as instructions only."""
    if ins.pred == "@!PT":
        return 0
    b = ins.base
    if b in ("LDS", "STS", "LDGSTS"):
        return max(1, width_bits(ins.op) // 32)
    if b == "LDSM":
        parts = ins.op.split(".")
        return int(parts[-1]) if parts[-1] in ("2", "4") else 1
    if b in ("ATOMS", "STSM"):
        return 1
    return 0


MEM_KINDS = ("LDG", "STG", "LDGSTS", "LDS", "STS", "LDSM", "LDL", "STL", "ATOMG", "RED", "ATOMS")


def mix(body: list[Instr], first: int, last: int) -> dict:
    """The instruction mix of body[first..last] (NOPs left out)."""
    ins = [i for i in body[first : last + 1] if i.base != "NOP"]
    counts: dict[str, int] = {}
    for i in ins:
        counts[i.base] = counts.get(i.base, 0) + 1
    by_width: dict[str, int] = {}
    for i in ins:
        if i.base in ("LDG", "STG", "LDGSTS", "LDS", "STS", "LDL", "STL"):
            key = f"{i.base}.{width_bits(i.op)}"
            by_width[key] = by_width.get(key, 0) + 1
        elif i.base == "LDSM":
            by_width[i.op] = by_width.get(i.op, 0) + 1
    lds_wf = sum(wavefronts(i) for i in ins if i.base in ("LDS", "LDSM"))
    sts_wf = sum(wavefronts(i) for i in ins if i.base in ("STS", "LDGSTS", "ATOMS", "STSM"))
    files: dict[str, list[int]] = {}
    for i in ins:
        if i.src:
            files.setdefault(i.src[0], []).append(i.src[1])
    source = ""
    if files:
        f, lines = max(files.items(), key=lambda kv: len(kv[1]))
        source = f"{f}:{min(lines)}-{max(lines)}"
    widths = lambda base: sorted({width_bits(i.op) for i in ins if i.base == base})  # noqa: E731
    return {
        "instructions": len(ins),
        "hmma": sum(1 for i in ins if i.base in ("HMMA", "HGMMA")),
        "ffma": counts.get("FFMA", 0),
        "fadd": counts.get("FADD", 0),
        "fmul": counts.get("FMUL", 0),
        "lds_wavefronts": lds_wf,
        "sts_wavefronts": sts_wf,
        "wavefronts": lds_wf + sts_wf,
        "by_width": dict(sorted(by_width.items())),
        "ldg_bits": widths("LDG"),
        "stg_bits": widths("STG"),
        "ldgsts_bits": widths("LDGSTS"),
        "local_ops": counts.get("LDL", 0) + counts.get("STL", 0),
        "global_ops": sum(counts.get(k, 0) for k in ("LDG", "STG", "LDGSTS", "ATOMG", "RED")),
        "source": source,
    }


GEMM_PREFIXES = ("aiec_fwd_logits", "aiec_bwd_dv_dw")  # as aiec::launch::block_threads


def hot_loop(name: str, body: list[Instr]) -> dict | None:
    """The hot loop of one function and its mix, per the module docstring."""
    all_loops = loops(body)
    has_hmma = any(i.base in ("HMMA", "HGMMA") for i in body)
    gemm = has_hmma or name.startswith(GEMM_PREFIXES)
    unit = "hmma" if has_hmma else "ffma" if gemm else "iteration"

    def innermost_holding(pred):
        held = [r for r in all_loops if any(pred(b) for b in body[r[0] : r[1] + 1])]
        return [r for r in held if not any(o != r and r[0] <= o[0] and o[1] <= r[1] for o in held)]

    if gemm:
        # The innermost loops that hold an HMMA (an FFMA for the SIMT GEMMs):
        # the one with the most of them; among equals (one tile loop per operand
        # layout and scaling), those staging with the widest copies (the common
        # path, not the 4-byte one for rows that are not 16-byte multiples), and
        # of those the costliest, so that the budget holds for every variant.
        cands = [(r, mix(body, *r)) for r in innermost_holding(lambda b: b.base in ("HMMA", "HGMMA", "FFMA"))]
        cands = [c for c in cands if c[1][unit] > 0]
        if has_hmma:
            best = max(
                cands,
                key=lambda c: (c[1][unit], max(c[1]["ldgsts_bits"] or [0]), c[1]["instructions"]),
                default=None,
            )
        else:  # the densest FFMA loop: the k loop, not an epilogue that also multiplies
            best = max(cands, key=lambda c: c[1][unit] / c[1]["instructions"], default=None)
    else:
        # The innermost loop with the widest global loads (the vector path of
        # a pass, not its narrow or scalar variants), then the most loads of
        # that width (a narrower variant may load a side operand as wide, e.g.
        # aiec_bwd_x's dv), then the most global loads and stores (the fully
        # unrolled step), then the most instructions.
        cands = [(r, mix(body, *r)) for r in innermost(all_loops)]

        def widest(m: dict) -> tuple[int, int]:
            w = max(m["ldg_bits"] or [0])
            return w, m["by_width"].get(f"LDG.{w}", 0)

        best = max(
            cands,
            key=lambda c: (*widest(c[1]), c[1]["global_ops"], c[1]["instructions"]),
            default=None,
        )
    if best is None:
        return None
    (first, last), m = best
    m["unit"] = unit
    m["address"] = f"{body[first].addr:04x}-{body[last].addr:04x}"
    m["nested_loops"] = sum(1 for r in all_loops if r != (first, last) and first <= r[0] and r[1] <= last)
    m["loops"] = len(all_loops)
    per = m[unit] if unit != "iteration" else 1
    m["instructions_per_unit"] = round(m["instructions"] / per, 3)
    m["wavefronts_per_unit"] = round(m["wavefronts"] / per, 3)
    if gemm:
        # The tile loop around it (the innermost loop that also stages operands
        # from global memory), when it is another loop: what it issues outside
        # the hot loop, per tile (not budgeted: its trip count is not static).
        outer = [
            r
            for r in all_loops
            if r[0] <= first
            and last <= r[1]
            and r != (first, last)
            and any(b.base in ("LDG", "LDGSTS") for b in body[r[0] : r[1] + 1])
        ]
        if outer:
            o = min(outer, key=lambda r: r[1] - r[0])
            t = mix(body, *o)
            m["tile_loop"] = {
                "source": t["source"],
                "instructions_outside_hot_loop": t["instructions"] - m["instructions"],
                "wavefronts_outside_hot_loop": t["wavefronts"] - m["wavefronts"],
                "by_width": t["by_width"],
            }
    return m


# ---------------------------------------------------------------- the report


def res_usage(cuobjdump: Path, cubin: Path) -> dict[str, dict[str, int]]:
    out = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], check=True, capture_output=True, text=True).stdout
    res, name = {}, None
    for line in out.splitlines():
        if m := re.match(r"\s*Function ([\w$]+):", line):
            name = m.group(1)
        elif name and "REG:" in line:
            res[name] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            name = None
    return res


def disassemble(cuobjdump: Path, nvdisasm: Path, mod: dict, cubins: Path) -> list[dict]:
    """The rows of one module: its kernels' resources and hot loops."""
    cubin = cubins / mod["cubin"]
    usage = res_usage(cuobjdump, cubin)
    sass = subprocess.run([str(nvdisasm), "-c", "-g", str(cubin)], check=True, capture_output=True, text=True).stdout
    funcs = parse_sass(sass)
    rows = []
    for k in mod["kernels"]:
        name = k["kernel"]
        u = usage.get(name, {})
        if u.get("REG") != k["registers"]:
            raise SystemExit(f"sass: {name} {mod['arch']}: ptxas says {k['registers']} registers, cuobjdump {u}")
        body = funcs.get(name, [])
        rows.append(
            {
                "kernel": name,
                "arch": mod["arch"],
                "module": mod["cubin"],
                "registers": k["registers"],
                "shared_bytes": k["shared_bytes"],
                "spill_bytes": k["spill_stores"] + k["spill_loads"],
                "stack_bytes": max(k["stack_bytes"], u.get("STACK", 0)),
                "local_bytes": u.get("LOCAL", 0),
                "local_ops": sum(1 for i in body if i.base in ("LDL", "STL")),
                "block_threads": k["block_threads"],
                "blocks_per_sm": k["blocks_per_sm"],
                "limit": k["limit"],
                "occupancy": k["occupancy"],
                "hot": hot_loop(name, body),
            }
        )
    return rows


def report(cubins: Path) -> tuple[str, list[dict]]:
    """The NVRTC version the CUBINs come from, and one row per (kernel, architecture)."""
    manifest = json.loads((cubins / "manifest.json").read_text())
    cuobjdump, nvdisasm = tool("cuobjdump"), tool("nvdisasm")
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        parts = pool.map(lambda m: disassemble(cuobjdump, nvdisasm, m, cubins), manifest["modules"])
        rows = [r for part in parts for r in part]
    rows.sort(key=lambda r: (r["kernel"], r["arch"]))
    return manifest["nvrtc"], rows


def unit_label(row: dict, budget: dict | None) -> tuple[str, float | None]:
    """The hot loop's unit and its instructions per unit (per element for a
    pass when the budgets record its elements per iteration)."""
    hot = row["hot"]
    if not hot:
        return "", None
    epi = (budget or {}).get("elements_per_iteration")
    if hot["unit"] == "iteration" and epi:
        return "element", round(hot["instructions"] / epi, 3)
    return hot["unit"], hot["instructions_per_unit"]


# ---------------------------------------------------------------- budgets

CEILINGS = (
    "registers",
    "shared_bytes",
    "spill_bytes",
    "stack_bytes",
    "local_bytes",
    "local_ops",
    "instructions_per_unit",
    "wavefronts_per_unit",
)
FLOORS = ("min_ldg_bits", "min_stg_bits")


def measured(row: dict) -> dict:
    """The budgeted metrics of one row."""
    m = {k: row[k] for k in CEILINGS[:6]}
    hot = row["hot"]
    if hot:
        m["instructions_per_unit"] = hot["instructions_per_unit"]
        m["wavefronts_per_unit"] = hot["wavefronts_per_unit"]
        if hot["ldg_bits"]:
            m["min_ldg_bits"] = min(hot["ldg_bits"])
        if hot["stg_bits"]:
            m["min_stg_bits"] = min(hot["stg_bits"])
    return m


def check(rows: list[dict], budgets: dict) -> list[str]:
    """Every way today's kernels exceed their budgets, one line each."""
    errors = []
    kernels = budgets["kernels"]
    seen = set()
    for row in rows:
        name, arch = row["kernel"], row["arch"]
        seen.add((name, arch))
        b = kernels.get(name, {}).get(arch)
        if b is None:
            errors.append(f"{name} {arch}: no budget recorded (scripts/sass_report.py --record)")
            continue
        m = measured(row)
        for key in CEILINGS:
            if key in b and key in m and m[key] > b[key]:
                errors.append(f"{name} {arch}: {key} {m[key]} exceeds its budget {b[key]}")
            elif key in b and key not in m:
                errors.append(f"{name} {arch}: {key} has a budget {b[key]} but no hot loop was found")
        for key in FLOORS:
            if key in b and key in m and m[key] < b[key]:
                errors.append(f"{name} {arch}: {key} {m[key]} is below its budget {b[key]}")
        entry = kernels.get(name, {})
        goal = entry.get("goal", {}).get(arch, {})
        if goal and "goal_exempt" not in entry:
            for key, ceiling in goal.items():
                if key not in m:
                    errors.append(f"{name} {arch}: {key} has a goal {ceiling} but no hot loop was found")
                elif m[key] > ceiling:
                    errors.append(f"{name} {arch}: {key} {m[key]} exceeds its goal {ceiling}")
    for name, per_arch in kernels.items():
        for arch in per_arch:
            if arch in ARCHS and (name, arch) not in seen:
                errors.append(f"{name} {arch}: budgeted but not in any CUBIN (stale budget)")
    return errors


def slack(key: str, value):
    """Today's value to a ceiling: registers rounded up to the allocation
    granule of 8 per thread (256 per warp; no change of occupancy), the hot
    loop's rates 5% above today's, the rest exact."""
    if key == "registers":
        return -(-value // 8) * 8
    if key in ("instructions_per_unit", "wavefronts_per_unit"):
        return round(value * 1.05 + 0.005, 2)
    return value


def record(rows: list[dict], budgets: dict) -> dict:
    """Budgets from today's values, keeping the hand-written fields."""
    new = copy.deepcopy(budgets)
    kernels = {}
    for row in rows:
        old = budgets["kernels"].get(row["kernel"], {})
        entry = kernels.setdefault(row["kernel"], {k: v for k, v in old.items() if k not in ARCHS})
        m = measured(row)
        b = {key: slack(key, m[key]) for key in CEILINGS if key in m}
        b.update({key: m[key] for key in FLOORS if key in m})
        # Today's rates without slack: what examples/bench.rs's cost model reads (not checked).
        b["today"] = {key: m[key] for key in ("instructions_per_unit", "wavefronts_per_unit") if key in m}
        entry[row["arch"]] = b
    new["kernels"] = dict(sorted(kernels.items()))
    return new


# ---------------------------------------------------------------- output


def fmt_rate(x) -> str:
    return "" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def markdown(rows: list[dict], budgets: dict, archs) -> str:
    kernels = budgets.get("kernels", {})
    out = []
    for arch in archs:
        out.append(
            f"| kernel ({arch}) | regs | smem | spill / stack / local | block | blocks per SM (limit) "
            "| occupancy | hot loop (source) | instr | per | instr per | smem wavefronts per | "
            "global loads / stores (bits) |"
        )
        out.append("| --- | ---: | ---: | --- | ---: | --- | ---: | --- | ---: | --- | ---: | ---: | --- |")
        for r in rows:
            if r["arch"] != arch:
                continue
            b = kernels.get(r["kernel"], {})
            hot = r["hot"]
            unit, per = unit_label(r, b)
            loop = wf = inst = gl = ""
            if hot:
                loop = f"`{hot['source']}`" + (f" (+{hot['nested_loops']} nested)" if hot["nested_loops"] else "")
                inst = str(hot["instructions"])
                div = hot[hot["unit"]] if hot["unit"] != "iteration" else 1
                if unit == "element":
                    div = b["elements_per_iteration"]
                wf = fmt_rate(hot["wavefronts"] / div) if div else ""
                ld = "/".join(str(w) for w in hot["ldg_bits"] + [f"cp{w}" for w in hot["ldgsts_bits"]]) or "-"
                st = "/".join(str(w) for w in hot["stg_bits"]) or "-"
                gl = f"{ld} / {st}"
            occ = f"{100 * r['occupancy']:.0f}%" if r["occupancy"] is not None else ""
            out.append(
                f"| `{r['kernel']}` | {r['registers']} | {r['shared_bytes']:,} | "
                f"{r['spill_bytes']} / {r['stack_bytes']} / {r['local_bytes']} | {r['block_threads']} | "
                f"{r['blocks_per_sm']} ({r['limit']}) | {occ} | {loop or 'none'} | {inst} | {unit} | "
                f"{fmt_rate(per)} | {wf} | {gl} |"
            )
        out.append("")
    goals = [(name, k) for name, k in sorted(kernels.items()) if k.get("goal")]
    if goals:
        out.append("| kernel | arch | goal (instr / wavefronts per unit) | today | held to it |")
        out.append("| --- | --- | --- | --- | --- |")
        for name, k in goals:
            for arch, g in sorted(k["goal"].items()):
                today = k.get(arch, {}).get("today", {})
                ceil = " / ".join(str(g.get(key, "-")) for key in ("instructions_per_unit", "wavefronts_per_unit"))
                now = " / ".join(fmt_rate(today.get(key)) for key in ("instructions_per_unit", "wavefronts_per_unit"))
                held = "no: exempt (sass_budgets.json `goal_exempt`)" if "goal_exempt" in k else "yes (`--check`)"
                out.append(f"| `{name}` | {arch} | {ceil} | {now} | {held} |")
        out.append("")
    return "\n".join(out)


def text(rows: list[dict], budgets: dict) -> str:
    kernels = budgets.get("kernels", {})
    lines = []
    for r in rows:
        hot = r["hot"]
        unit, per = unit_label(r, kernels.get(r["kernel"]))
        lines.append(
            f"{r['arch']} {r['kernel']:<26} {r['registers']:>3} regs {r['shared_bytes']:>6} B smem "
            f"spill {r['spill_bytes']} stack {r['stack_bytes']} local {r['local_bytes']} "
            f"{r['blocks_per_sm']} x {r['block_threads']} ({r['limit']}) occ {100 * (r['occupancy'] or 0):.0f}%"
        )
        if hot:
            lines.append(
                f"      hot loop {hot['address']} {hot['source']}: {hot['instructions']} instr, "
                f"{per} per {unit}, {hot['wavefronts_per_unit']} wavefronts per {hot['unit']}, "
                f"HMMA {hot['hmma']} FFMA {hot['ffma']} FADD {hot['fadd']} {hot['by_width']}"
            )
            if "tile_loop" in hot:
                t = hot["tile_loop"]
                lines.append(
                    f"      tile loop {t['source']}: {t['instructions_outside_hot_loop']} instr and "
                    f"{t['wavefronts_outside_hot_loop']} wavefronts per tile outside the hot loop, {t['by_width']}"
                )
    return "\n".join(lines)


# ---------------------------------------------------------------- self-test

SYNTHETIC = """
//--------------------- .text.k       --------------------------
.text.k:
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_0:
        /*0010*/                   LDS.128 R4, [R0] ;
        /*0020*/                   LDSM.16.M88.4 R8, [R0+0x10] ;
        /*0030*/                   HMMA.1688.F32.TF32 R12, R4, R8, R12 ;
        /*0040*/                   HMMA.1688.F32.TF32 R16, R4, R10, R16 ;
        /*0050*/                   LDGSTS.E.BYPASS.LTC128B.128 [R1], desc[UR4][R2.64] ;
        /*0060*/                   STS.64 [R0], R4 ;
        /*0070*/                   NOP ;
        /*0080*/               @P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0090*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*00a0*/                   STG.E.U16 desc[UR4][R2.64], R4 ;
        /*00b0*/               @P1 BRA `(.L_x_1) ;
        /*00c0*/                   EXIT ;
.L_x_2:
        /*00d0*/                   BRA `(.L_x_2) ;
//--------------------- .text.f       --------------------------
.text.f:
        /*0000*/                   LDG.E R0, desc[UR4][R2.64] ;
.L_x_9:
        /*0010*/                   STG.E desc[UR4][R2.64], R0 ;
        /*0020*/                   RET.REL.NODEC R20 `(f) ;
        /*0030*/                   BRA `(.L_x_9) ;
"""


def self_test(rows: list[dict] | None, budgets: dict) -> None:
    """The parser and the check on planted inputs: every planted excess must
    fail, naming the kernel, the metric, the value and the budget."""
    funcs = parse_sass(SYNTHETIC)
    body = funcs["k"]
    assert loops(body) == [(1, 8), (9, 11)], loops(body)
    # A jump back across a return (a divergent fallback after a function's end) is no loop.
    assert loops(funcs["f"]) == [] and hot_loop("f", funcs["f"]) is None
    hot = hot_loop("k", body)
    assert hot is not None and hot["hmma"] == 2 and hot["instructions"] == 7, hot
    # LDS.128 4 + LDSM .4 4 = 8 read; LDGSTS.128 4 + STS.64 2 = 6 written.
    assert (hot["lds_wavefronts"], hot["sts_wavefronts"]) == (8, 6), hot
    assert hot["instructions_per_unit"] == 3.5 and hot["wavefronts_per_unit"] == 7.0, hot
    assert width_bits("LDG.E.U16") == 16 and width_bits("LDGSTS.E.BYPASS.LTC128B.128") == 128
    assert width_bits("LDG.E.CONSTANT") == 32 and width_bits("STG.E.64") == 64

    def fake(**hot_over):
        h = mix(body, 1, 8) | {"unit": "hmma", "instructions_per_unit": 3.5, "wavefronts_per_unit": 7.0}
        h.update(hot_over)
        return {
            "kernel": "k",
            "arch": "sm_90",
            "registers": 100,
            "shared_bytes": 1024,
            "spill_bytes": 0,
            "stack_bytes": 0,
            "local_bytes": 0,
            "local_ops": 0,
            "hot": h,
        }

    planted = [fake()]
    ok = {"kernels": {"k": {"sm_90": record(planted, {"kernels": {}})["kernels"]["k"]["sm_90"]}}}
    assert check(planted, ok) == [], check(planted, ok)
    assert ok["kernels"]["k"]["sm_90"]["registers"] == 104
    cases = [
        ("registers", 96, "k sm_90: registers 100 exceeds its budget 96"),
        ("instructions_per_unit", 3.0, "k sm_90: instructions_per_unit 3.5 exceeds its budget 3.0"),
        ("wavefronts_per_unit", 6.5, "k sm_90: wavefronts_per_unit 7.0 exceeds its budget 6.5"),
        ("spill_bytes", -1, "k sm_90: spill_bytes 0 exceeds its budget -1"),
        ("min_ldg_bits", 256, "k sm_90: min_ldg_bits 128 is below its budget 256"),
    ]
    planted[0]["hot"]["ldg_bits"] = [128]
    for key, value, want in cases:
        b = copy.deepcopy(ok)
        b["kernels"]["k"]["sm_90"][key] = value
        got = check(planted, b)
        assert got == [want], (key, got)
    assert check(planted, {"kernels": {}}) == ["k sm_90: no budget recorded (scripts/sass_report.py --record)"]
    stale = copy.deepcopy(ok)
    stale["kernels"]["gone"] = {"sm_80": {"registers": 1}}
    assert check(planted, stale) == ["gone sm_80: budgeted but not in any CUBIN (stale budget)"]
    # A goal is a second ceiling: enforced at the architectures it names, unless the kernel is exempt.
    goal = copy.deepcopy(ok)
    goal["kernels"]["k"]["goal"] = {"sm_90": {"wavefronts_per_unit": 6.9}, "sm_80": {"wavefronts_per_unit": 1.0}}
    assert check(planted, goal) == ["k sm_90: wavefronts_per_unit 7.0 exceeds its goal 6.9"], check(planted, goal)
    goal["kernels"]["k"]["goal_exempt"] = "its geometry"
    assert check(planted, goal) == [], check(planted, goal)
    n = 6
    if rows:
        # The real report: one metric of every budgeted kernel set just below
        # today's value must fail, naming it.
        for row in rows:
            b = copy.deepcopy(budgets)
            entry = b["kernels"].get(row["kernel"], {}).get(row["arch"])
            if entry is None:
                continue
            m = measured(row)
            key = "instructions_per_unit" if "instructions_per_unit" in m else "registers"
            entry[key] = m[key] - 0.5 if key != "registers" else m[key] - 1
            got = [e for e in check(rows, b) if e.startswith(f"{row['kernel']} {row['arch']}: {key}")]
            assert got == [f"{row['kernel']} {row['arch']}: {key} {m[key]} exceeds its budget {entry[key]}"], got
            n += 1
            # And a goal just below today's value, where the kernel has one it is held to.
            kernel = budgets["kernels"][row["kernel"]]
            goal = kernel.get("goal", {}).get(row["arch"], {})
            if goal and "goal_exempt" not in kernel:
                b = copy.deepcopy(budgets)
                key = next(iter(goal))
                b["kernels"][row["kernel"]]["goal"][row["arch"]][key] = m[key] - 0.01
                want = f"{row['kernel']} {row['arch']}: {key} {m[key]} exceeds its goal {m[key] - 0.01}"
                assert want in check(rows, b), check(rows, b)
                n += 1
    print(f"sass: self-test passed ({n} planted excesses caught)")


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cubins", type=Path, help="use the CUBINs and manifest.json in this directory (no build)")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "sass" / "cubins", help="where to build them")
    ap.add_argument("--budgets", type=Path, default=BUDGETS)
    ap.add_argument("--check", action="store_true", help="exit 1 when a kernel exceeds its budget")
    ap.add_argument("--markdown", action="store_true", help="print the report as markdown tables")
    ap.add_argument("--json", type=Path, help="write the full report (every hot loop's mix) here")
    ap.add_argument("--arch", action="append", choices=ARCHS, help="only these in the tables (repeatable)")
    ap.add_argument("--record", action="store_true", help="rewrite the budgets from today's values")
    ap.add_argument("--self-test", action="store_true", help="plant excesses and require the check to catch them")
    args = ap.parse_args()

    budgets = json.loads(args.budgets.read_text()) if args.budgets.is_file() else {"kernels": {}}
    if args.self_test and not (args.check or args.markdown or args.record or args.json):
        self_test(None, budgets)  # the planted inputs alone: no CUBINs needed
        return 0
    cubins = args.cubins
    if cubins is None:
        cubins = args.out
        build_cubins(cubins)
    nvrtc, rows = report(cubins)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.record:
        budgets = record(rows, budgets)
        budgets["nvrtc"] = nvrtc
        args.budgets.write_text(json.dumps(budgets, indent=2) + "\n")
        print(f"sass: recorded {len(budgets['kernels'])} kernels' budgets in {args.budgets}", file=sys.stderr)
    if args.markdown:
        print(markdown(rows, budgets, args.arch or ARCHS))
    elif not args.check:
        print(text(rows, budgets))
    status = 0
    if args.check:
        errors = check(rows, budgets)
        if budgets.get("nvrtc") != nvrtc:
            # Another NVRTC allocates registers and schedules differently: its
            # CUBINs are not what the budgets were recorded from.
            errors.insert(
                0,
                f"the budgets were recorded from NVRTC {budgets.get('nvrtc')}'s CUBINs, these are NVRTC {nvrtc}'s "
                "(AIEC_NVRTC_LIB=$(aiec_nvrtc_wheel 12) after `. scripts/ensure-nvrtc.sh`)",
            )
        for e in errors:
            print(f"sass budget: {e}", file=sys.stderr)
        if errors:
            status = 1
        else:
            print(f"sass: {len(rows)} kernel builds within their budgets ({args.budgets.name})", file=sys.stderr)
    if args.self_test:
        self_test(rows, budgets)
    return status


if __name__ == "__main__":
    sys.exit(main())
