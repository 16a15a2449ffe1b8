"""The eager PyTorch oracle (python/tests/reference.py) timed on CUDA: forward,
backward and the whole training step (update steps) for eager PyTorch and
torch.compile, plus device-to-device copy bandwidth: the baseline the crate's
kernels are measured against (BENCHMARKS.md).

  python3 python/benchmarks/bench_eager.py [--json OUT] [--presets a,b] [--dtypes bf16,f32]
                                           [--iters N] [--no-compile]
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

# The oracle lives with the tests, which import it as `reference`.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from reference import aiec_layer, aiec_losses  # noqa: E402

# --------------------------------------------------------------------------------------

PRESETS = {
    # name: (pool, shape of x, K)
    "vit_tiny": ("token", (256, 65, 768), 100),
    "vit_b": ("token", (256, 197, 3072), 1000),
    "resnet_stage": ("avg_hw", (128, 256, 56, 56), 1000),
    "mlp": ("none", (4096, 4096), 1000),
}
TINY_PRESETS = {
    "vit_tiny": ("token", (8, 5, 24), 10),
    "vit_b": ("token", (8, 7, 48), 20),
    "resnet_stage": ("avg_hw", (4, 16, 6, 6), 20),
    "mlp": ("none", (16, 32), 20),
}
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}

AUX_COEF, GATE_COEF, TAU = 1.0, 200.0, 0.0


def make_step(pool_mode):
    """The training step's AIEC part for one layer: threshold + units + losses.
    Returns (y, objective); the counters are updated in place (update step)."""

    def step(x, weight, targets, act, inh, total):
        y, v, logits, mask, S, N = aiec_layer(
            x, weight, targets, act, inh, total, pool_mode=pool_mode, tau=TAU, update=True
        )
        aux, gate, _ = aiec_losses([logits], targets, [S], [N])
        return y, AUX_COEF * aux + GATE_COEF * gate

    return step


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b):
        if self.cuda:
            return a.elapsed_time(b)
        return (b - a) * 1e3

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def copy_bandwidth(device, nbytes, iters):
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timer = Timer(device)
    for _ in range(3):
        dst.copy_(src)
    timer.sync()
    times = []
    for _ in range(iters):
        a = timer.mark()
        dst.copy_(src)
        b = timer.mark()
        timer.sync()
        times.append(timer.ms(a, b))
    ms = statistics.median(times)
    del src, dst
    return 2 * n * 4 / (ms * 1e-3) / 1e9, ms


def bench_one(step_fn, bufs, weight, counters, timer, warmup, iters):
    """Times fwd, bwd and step of `step_fn` over rotated buffers; returns medians.

    No synchronisation inside the timed loop (the host may run ahead, as in a real
    training loop); on CUDA the events are read after one final synchronisation.
    """
    act, inh, total = counters
    marks = []
    one = None
    for i in range(warmup + iters):
        if i == warmup:
            timer.sync()
        x, dy, t = bufs[i % len(bufs)]
        x.grad = None
        weight.grad = None
        e0 = timer.mark()
        y, obj = step_fn(x, weight, t, act, inh, total)
        e1 = timer.mark()
        if one is None:
            one = torch.ones_like(obj)
        torch.autograd.backward([obj, y], [one, dy])
        e2 = timer.mark()
        del y, obj
        if i >= warmup:
            marks.append((e0, e1, e2))
    timer.sync()
    x.grad = None
    weight.grad = None
    fwd = [timer.ms(a, b) for a, b, _ in marks]
    bwd = [timer.ms(b, c) for _, b, c in marks]
    stp = [timer.ms(a, c) for a, _, c in marks]
    return statistics.median(fwd), statistics.median(bwd), statistics.median(stp)


def make_inputs(pool_mode, shape, K, dtype, device, nbuf, gen_seed):
    g = torch.Generator(device=device).manual_seed(gen_seed)
    B = shape[0]
    C = shape[1] if pool_mode == "avg_hw" else shape[-1]
    bufs = []
    for _ in range(nbuf):
        x = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)
        x.requires_grad_(True)
        dy = (torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 1e-3).to(dtype)
        t = torch.randint(0, K, (B,), generator=g, device=device)
        bufs.append((x, dy, t))
    weight = (torch.randn(K, C, generator=g, device=device) * C**-0.5).requires_grad_(True)
    return bufs, weight, C


def fresh_counters(K, C, device):
    return (
        torch.zeros(K, C, dtype=torch.int64, device=device),
        torch.zeros(K, C, dtype=torch.int64, device=device),
        torch.ones(K, dtype=torch.int64, device=device),
    )


def agreement(eager_fn, comp_fn, bufs, weight, K, C, device):
    """Max relative difference eager vs compiled on one step (y, obj, dx, dw, counters)."""
    x, dy, t = bufs[0]
    out = []
    for fn in (eager_fn, comp_fn):
        cnt = fresh_counters(K, C, device)
        x.grad = None
        weight.grad = None
        y, obj = fn(x, weight, t, *cnt)
        torch.autograd.backward([obj, y], [torch.ones_like(obj), dy])
        out.append((y.detach().float(), obj.detach().float(), x.grad.float(), weight.grad.clone(), cnt))
    x.grad = None
    weight.grad = None

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

    (ye, oe, dxe, dwe, ce), (yc, oc, dxc, dwc, cc) = out
    return {
        "y": rel(yc, ye),
        "obj": rel(oc, oe),
        "dx": rel(dxc, dxe),
        "dw": rel(dwc, dwe),
        "counters_equal": all(bool(torch.equal(a, b)) for a, b in zip(ce, cc)),
    }


def cmd_bench(args):
    t_start = time.time()
    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench: CUDA is not available (use --device cpu --tiny for a smoke test)")
        return 2
    presets = TINY_PRESETS if args.tiny else PRESETS
    names = [p for p in args.presets.split(",") if p] if args.presets else list(presets)
    dtypes = [d for d in args.dtypes.split(",") if d]
    for n in names:
        if n not in presets:
            print(f"unknown preset {n!r}; known: {', '.join(presets)}")
            return 2
    for d in dtypes:
        if d not in DTYPES:
            print(f"unknown dtype {d!r}; known: {', '.join(DTYPES)}")
            return 2
    timer = Timer(device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"# torch {torch.__version__} on {dev_name}; iters {args.iters} (median), "
        f"warm-up {args.warmup}, {args.buffers} rotated buffers, update steps",
        flush=True,
    )

    copy_gbps, copy_ms = copy_bandwidth(device, (1 << 30) if not args.tiny else (1 << 22), max(10, min(args.iters, 50)))
    print(f"# device-to-device copy: {copy_gbps:.1f} GB/s (read + written), {copy_ms:.3f} ms per copy", flush=True)

    results = []
    report = {
        "torch": torch.__version__,
        "device": dev_name,
        "iters": args.iters,
        "warmup": args.warmup,
        "buffers": args.buffers,
        "copy_GBps": copy_gbps,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "results": results,
    }

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)

    hdr = f"{'preset':<13}{'dtype':<6}{'impl':<9}{'fwd_ms':>9}{'bwd_ms':>9}{'step_ms':>9}{'compile_s':>10}  note"
    print(hdr)
    print("-" * len(hdr), flush=True)
    # dtype outermost: every preset in the first dtype (bf16 by default) comes first, so a
    # run cut short by a time limit still has the headline cells.
    for dname in dtypes:
        for name in names:
            pool_mode, shape, K = presets[name]
            dtype = DTYPES[dname]
            bufs, weight, C = make_inputs(pool_mode, shape, K, dtype, device, args.buffers, 1234)
            eager_fn = make_step(pool_mode)
            impls = [("eager", eager_fn)]
            if not args.no_compile:
                impls.append(("compile", None))
            for impl, fn in impls:
                rec = {
                    "preset": name,
                    "dtype": dname,
                    "impl": impl,
                    "pool": pool_mode,
                    "shape": list(shape),
                    "K": K,
                    "C": C,
                    "copy_GBps": copy_gbps,
                    "fwd_ms": None,
                    "bwd_ms": None,
                    "step_ms": None,
                }
                note = ""
                try:
                    if impl == "compile":
                        torch._dynamo.reset()
                        fn = torch.compile(make_step(pool_mode), dynamic=False)
                        t0 = time.time()
                        cnt = fresh_counters(K, C, device)
                        x, dy, t = bufs[0]
                        y, obj = fn(x, weight, t, *cnt)
                        torch.autograd.backward([obj, y], [torch.ones_like(obj), dy])
                        x.grad = None
                        weight.grad = None
                        del y, obj
                        timer.sync()
                        rec["compile_s"] = time.time() - t0
                        agree = agreement(eager_fn, fn, bufs, weight, K, C, device)
                        rec["agreement_vs_eager"] = agree
                        note = (
                            f"max rel diff vs eager: y {agree['y']:.1e} obj {agree['obj']:.1e} "
                            f"dx {agree['dx']:.1e} dw {agree['dw']:.1e}"
                            + ("" if agree["counters_equal"] else "; COUNTERS DIFFER")
                        )
                    counters = fresh_counters(K, C, device)
                    f_ms, b_ms, s_ms = bench_one(fn, bufs, weight, counters, timer, args.warmup, args.iters)
                    rec.update(fwd_ms=f_ms, bwd_ms=b_ms, step_ms=s_ms)
                except Exception as e:  # noqa: BLE001 - report compile failures, go on
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    rec["error"] = msg[:500]
                    note = "FAILED " + msg[:120]
                results.append(rec)
                save()

                def f(v):
                    return f"{v:9.3f}" if v is not None else f"{'-':>9}"

                cs = rec.get("compile_s")
                print(
                    f"{name:<13}{dname:<6}{impl:<9}{f(rec['fwd_ms'])}{f(rec['bwd_ms'])}"
                    f"{f(rec['step_ms'])}{(f'{cs:10.1f}' if cs is not None else ' ' * 10)}"
                    f"  {note}",
                    flush=True,
                )
            del bufs, weight
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["wall_s"] = time.time() - t_start
    save()
    print(
        f"# copy bandwidth {copy_gbps:.1f} GB/s; total {report['wall_s']:.1f} s"
        + (f"; JSON written to {args.json}" if args.json else ""),
        flush=True,
    )
    return 1 if any("error" in r and r["impl"] == "eager" for r in results) else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="time the eager oracle against torch.compile on CUDA")
    ap.add_argument("--json", help="write every number to this JSON file")
    ap.add_argument("--presets", help=f"comma list of {','.join(PRESETS)} (default all)")
    ap.add_argument("--dtypes", default="bf16,f32", help="activation dtypes, comma list")
    ap.add_argument("--iters", type=int, default=50, help="timed iterations (median)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    ap.add_argument("--buffers", type=int, default=3, help="rotated input buffers (2-4)")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--device", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 1 <= args.buffers <= 8:
        ap.error("--buffers must be in 1..8")
    return cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
