#!/usr/bin/env python3
"""AIEC in eager PyTorch: the baseline the crate's kernels are measured against.

This is AIEC (the contract: docs/SPEC.md) written
the way a PyTorch user would write it: vectorised tensor ops (torch.where, indexing,
F.linear, index_add_, boolean masks, F.cross_entropy) and autograd for the backward.
No Python loop runs over samples, channels or classes.

Two modes:

  python3 scripts/torch_aiec.py check [--golden DIR ...]
      Runs every golden case (default tests/data/golden) in float64 and compares
      every output, counter, loss and gradient (1e-9 relative, integers exact).
      Proves that this baseline is the same operation as the crate's.

  python3 scripts/torch_aiec.py bench [--json OUT] [--presets a,b] [--dtypes bf16,f32]
                                      [--iters N] [--no-compile]
      On CUDA: times forward, backward and the whole training step (update steps)
      for eager PyTorch and torch.compile, plus device-to-device copy bandwidth.

Requires torch (and safetensors for `check`).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

POOLS = ("token", "avg_token", "avg_hw", "none")


# --------------------------------------------------------------------------------------
# The operation (functional core, shared by the module and by torch.compile)
# --------------------------------------------------------------------------------------

def threshold(x, tau):
    """y = 0 where x <= tau, else x. NaN is not <= tau, so it passes (value and grad)."""
    return torch.where(x <= tau, torch.zeros((), dtype=x.dtype, device=x.device), x)


def pool(y, mode, dtype):
    """[B, C] pooled vector, computed (accumulated) in the statistics dtype."""
    if mode == "token":  # [B, T, C] -> class token
        return y[:, 0, :].to(dtype)
    if mode == "avg_token":  # [B, T, C] -> mean over T
        return y.mean(dim=1, dtype=dtype)
    if mode == "avg_hw":  # [B, C, H, W] -> mean over H, W
        return y.mean(dim=(2, 3), dtype=dtype)
    if mode == "none":  # [B, C]
        return y.to(dtype)
    raise ValueError(f"unknown pool mode {mode!r}")


def check_layout(x, mode):
    want = {"token": 3, "avg_token": 3, "avg_hw": 4, "none": 2}[mode]
    if x.dim() != want:
        raise ValueError(f"pool {mode!r} wants a {want}-d input, got shape {tuple(x.shape)}")
    if mode in ("token", "avg_token") and x.shape[1] == 0:
        raise ValueError(f"pool {mode!r} needs T >= 1")
    if mode == "avg_hw" and x.shape[2] * x.shape[3] == 0:
        raise ValueError("pool 'avg_hw' needs H*W >= 1")


def channels_of(x, mode):
    return x.shape[1] if mode == "avg_hw" else x.shape[-1]


def first_argmax(z):
    """argmax over the last dim: the lowest index among equal maxima, NaN largest.

    Explicit rather than torch.argmax, whose tie/NaN behaviour has differed between
    devices and versions. Rows holding a NaN pick their first NaN; other rows pick
    the first index equal to the row maximum (+-inf compare equal to themselves).
    """
    k = z.shape[-1]
    nan = torch.isnan(z)
    row_has_nan = nan.any(dim=-1, keepdim=True)
    is_max = torch.where(row_has_nan, nan, z == z.amax(dim=-1, keepdim=True))
    idx = torch.arange(k, device=z.device)
    return torch.where(is_max, idx, k).amin(dim=-1)


def aiec_layer(x, weight, targets, act, inh, total, *, pool_mode, tau, update):
    """One AIEC layer in training. Mutates act/inh/total in place when `update`.

    Returns (y, v, logits, mask, S, N): y has x's dtype; v, logits, S in the weight
    dtype (float32, or float64 for the golden check); mask bool [B, C]; N int64.
    """
    y = threshold(x, tau)
    v = pool(y, pool_mode, weight.dtype)  # [B, C]
    logits = F.linear(v, weight)  # [B, K]

    if update:  # activation-counting unit; no gradient flows through it
        with torch.no_grad():
            pred = first_argmax(logits)
            correct = (pred == targets).unsqueeze(1)  # [B, 1]
            vd = v.detach()
            act.index_add_(0, targets, ((vd > 0) & correct).to(act.dtype))
            inh.index_add_(0, targets, ((vd == 0) & correct).to(inh.dtype))
            total.index_add_(0, targets, correct.squeeze(1).to(total.dtype))

    # consensus gatekeeping unit, with the counters after the update.
    # activity <= 0  <=>  act <= inh  because total >= 1.
    with torch.no_grad():
        irrelevant = (act <= inh) & (weight.detach() <= 0)  # [K, C]
        mask = irrelevant[targets]  # [B, C] gathered by target
    vm = torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device))
    S = (vm * vm).sum()
    N = mask.sum()
    return y, v, logits, mask, S, N


def aiec_losses(logits_list, targets, S_list, N_list):
    """aux = mean CE over all L*B rows; gate = sum S / sum N (0 when sum N == 0)."""
    L = len(logits_list)
    logits_all = torch.cat(logits_list, dim=0)
    aux = F.cross_entropy(logits_all, targets.repeat(L), reduction="mean")
    S = torch.stack(S_list).sum()
    N = torch.stack(N_list).sum()
    gate = torch.where(N > 0, S / N.clamp_min(1).to(S.dtype), torch.zeros_like(S))
    return aux, gate, N


# --------------------------------------------------------------------------------------
# Module-like API
# --------------------------------------------------------------------------------------

class AIEC(nn.Module):
    """One AIEC activation. Several of them share one target vector; combine their
    losses with `aiec_objective(layers, targets, aux_coef, gate_coef)`."""

    def __init__(self, channels, classes, pool="token", tau=0.0, update_interval=5,
                 device=None, dtype=torch.float32):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool mode {pool!r}")
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"tau must be finite and >= 0, got {tau}")
        if update_interval < 1:
            raise ValueError("update_interval must be >= 1")
        self.pool, self.tau, self.update_interval = pool, float(tau), int(update_interval)
        self.weight = nn.Parameter(torch.empty(classes, channels, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=channels ** -0.5)
        self.register_buffer("act", torch.zeros(classes, channels, dtype=torch.int64, device=device))
        self.register_buffer("inh", torch.zeros(classes, channels, dtype=torch.int64, device=device))
        self.register_buffer("total", torch.ones(classes, dtype=torch.int64, device=device))
        self.step = 0
        self.last = None  # (logits, mask, S, N, v) of the latest forward with targets

    def reset_counters(self):
        self.act.zero_()
        self.inh.zero_()
        self.total.fill_(1)

    def train(self, mode=True):
        if self.training and not mode:
            self.reset_counters()
        return super().train(mode)

    def forward(self, x, targets=None):
        check_layout(x, self.pool)
        if channels_of(x, self.pool) != self.weight.shape[1]:
            raise ValueError("channel count does not match the layer")
        if self.training:
            self.step += 1
        if targets is None:
            self.last = None
            return threshold(x, self.tau)
        update = self.training and self.step % self.update_interval == 0
        y, v, logits, mask, S, N = aiec_layer(
            x, self.weight, targets, self.act, self.inh, self.total,
            pool_mode=self.pool, tau=self.tau, update=update)
        self.last = (logits, mask, S, N, v)
        return y


def aiec_objective(layers, targets, aux_coef=1.0, gate_coef=200.0):
    """aux_coef * aux + gate_coef * gate over the layers' latest forwards."""
    aux, gate, N = aiec_losses([m.last[0] for m in layers], targets,
                               [m.last[2] for m in layers], [m.last[3] for m in layers])
    return aux_coef * aux + gate_coef * gate, aux, gate, N


# --------------------------------------------------------------------------------------
# check: golden cases
# --------------------------------------------------------------------------------------

def load_case(path):
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def compare(name, got, want, errors, rtol=1e-9):
    got = got.detach().cpu()
    want = want.cpu()
    if tuple(got.shape) != tuple(want.shape):
        errors.append(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
        return
    if not want.is_floating_point():
        if not torch.equal(got.to(want.dtype), want):
            bad = (got.to(want.dtype) != want).sum().item()
            errors.append(f"{name}: {bad} of {want.numel()} integers differ")
        return
    got = got.to(torch.float64)
    want = want.to(torch.float64)
    same_nan = torch.isnan(got) == torch.isnan(want)
    # relative to the element, with a floor relative to the tensor's scale (so that
    # values that cancel to ~0 are judged against the magnitudes involved)
    scale = want[torch.isfinite(want)].abs().max().item() if want.numel() else 0.0
    tol = rtol * torch.maximum(want.abs(), torch.tensor(max(scale, 1e-300) * 1e-3))
    fin = torch.isfinite(want)
    ok_fin = ((got - want).abs() <= tol) | ~fin
    ok_inf = (got == want) | fin | torch.isnan(want)
    ok = same_nan & ok_fin & ok_inf
    if not bool(ok.all()):
        worst = ((got - want).abs() / want.abs().clamp_min(1e-300))[~ok].max().item()
        errors.append(f"{name}: {int((~ok).sum())} of {want.numel()} values off "
                      f"(worst rel {worst:.3e})")


def run_case(path, device):
    meta, t = load_case(path)
    pool_mode = meta["pool"]
    tau = float(meta["tau"])
    update = meta["update"].lower() == "true"
    aux_coef = float(meta["aux_coef"])
    gate_coef = float(meta["gate_coef"])
    L = int(meta["layers"])
    K, C = int(meta["classes"]), int(meta["channels"])
    targets = t["targets"].to(device)
    dt = torch.float64

    layers, xs = [], []
    for li in range(L):
        p = f"l{li}."
        # update_interval 1: this forward updates; 2: the first forward (step 1) does not
        layer = AIEC(C, K, pool=pool_mode, tau=tau, update_interval=1 if update else 2,
                     device=device, dtype=dt)
        with torch.no_grad():
            layer.weight.copy_(t[p + "w"])
            layer.act.copy_(t[p + "act_in"])
            layer.inh.copy_(t[p + "inh_in"])
            layer.total.copy_(t[p + "total_in"])
        x = t[p + "x"].to(device=device, dtype=dt).requires_grad_(True)
        layers.append(layer)
        xs.append(x)

    ys = [layer(x, targets) for layer, x in zip(layers, xs)]
    obj, aux, gate, N = aiec_objective(layers, targets, aux_coef, gate_coef)
    dys = [t[f"l{li}.dy"].to(device=device, dtype=dt) for li in range(L)]
    # loss = sum_l <y_l, dy_l> + aux_coef * aux + gate_coef * gate
    torch.autograd.backward([obj] + ys, [torch.ones_like(obj)] + dys)

    errors = []
    for li, (layer, x, y) in enumerate(zip(layers, xs, ys)):
        p = f"l{li}."
        logits, mask, S, Nl, v = layer.last
        compare(p + "y", y, t[p + "y"], errors)
        compare(p + "v", v, t[p + "v"], errors)
        compare(p + "logits", logits, t[p + "logits"], errors)
        compare(p + "mask", mask.to(torch.uint8), t[p + "mask"], errors)
        compare(p + "act", layer.act, t[p + "act"], errors)
        compare(p + "inh", layer.inh, t[p + "inh"], errors)
        compare(p + "total", layer.total, t[p + "total"], errors)
        compare(p + "gate_sum_sq", S.reshape(1), t[p + "gate_sum_sq"], errors)
        compare(p + "dx", x.grad, t[p + "dx"], errors)
        compare(p + "dw", layer.weight.grad, t[p + "dw"], errors)
    compare("aux_loss", aux.reshape(1), t["aux_loss"], errors)
    compare("gate_loss", gate.reshape(1), t["gate_loss"], errors)
    compare("gate_count", N.reshape(1), t["gate_count"], errors)
    return errors


def cmd_check(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dirs = args.golden or [os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "..", "tests", "data", "golden")]
    if os.environ.get("AIEC_GOLDEN_DIR") and not args.golden:
        dirs.append(os.environ["AIEC_GOLDEN_DIR"])
    files = []
    for d in dirs:
        files += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))
    if not files:
        print(f"no golden cases found in {dirs}")
        return 1
    passed = 0
    for path in files:
        try:
            errors = run_case(path, device)
        except Exception as e:  # noqa: BLE001 - report, keep going
            errors = [f"exception: {type(e).__name__}: {e}"]
        if errors:
            print(f"FAIL {os.path.basename(path)}")
            for e in errors:
                print(f"    {e}")
        else:
            passed += 1
            if args.verbose:
                print(f"ok   {os.path.basename(path)}")
    print(f"torch-eager golden: {passed}/{len(files)} cases passed (device {device}, float64)")
    return 0 if passed == len(files) else 1


# --------------------------------------------------------------------------------------
# bench
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
            x, weight, targets, act, inh, total, pool_mode=pool_mode, tau=TAU, update=True)
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
    weight = (torch.randn(K, C, generator=g, device=device) * C ** -0.5).requires_grad_(True)
    return bufs, weight, C


def fresh_counters(K, C, device):
    return (torch.zeros(K, C, dtype=torch.int64, device=device),
            torch.zeros(K, C, dtype=torch.int64, device=device),
            torch.ones(K, dtype=torch.int64, device=device))


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
        out.append((y.detach().float(), obj.detach().float(), x.grad.float(),
                    weight.grad.clone(), cnt))
    x.grad = None
    weight.grad = None

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    (ye, oe, dxe, dwe, ce), (yc, oc, dxc, dwc, cc) = out
    return {"y": rel(yc, ye), "obj": rel(oc, oe), "dx": rel(dxc, dxe), "dw": rel(dwc, dwe),
            "counters_equal": all(bool(torch.equal(a, b)) for a, b in zip(ce, cc))}


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
    print(f"# torch {torch.__version__} on {dev_name}; iters {args.iters} (median), "
          f"warm-up {args.warmup}, {args.buffers} rotated buffers, update steps", flush=True)

    copy_gbps, copy_ms = copy_bandwidth(device, (1 << 30) if not args.tiny else (1 << 22),
                                        max(10, min(args.iters, 50)))
    print(f"# device-to-device copy: {copy_gbps:.1f} GB/s (read + written), "
          f"{copy_ms:.3f} ms per copy", flush=True)

    results = []
    report = {"torch": torch.__version__, "device": dev_name, "iters": args.iters,
              "warmup": args.warmup, "buffers": args.buffers, "copy_GBps": copy_gbps,
              "tf32": bool(torch.backends.cuda.matmul.allow_tf32), "results": results}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)

    hdr = (f"{'preset':<13}{'dtype':<6}{'impl':<9}{'fwd_ms':>9}{'bwd_ms':>9}{'step_ms':>9}"
           f"{'compile_s':>10}  note")
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
                rec = {"preset": name, "dtype": dname, "impl": impl, "pool": pool_mode,
                       "shape": list(shape), "K": K, "C": C, "copy_GBps": copy_gbps,
                       "fwd_ms": None, "bwd_ms": None, "step_ms": None}
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
                        note = ("max rel diff vs eager: y %.1e obj %.1e dx %.1e dw %.1e%s" % (
                            agree["y"], agree["obj"], agree["dx"], agree["dw"],
                            "" if agree["counters_equal"] else "; COUNTERS DIFFER"))
                    counters = fresh_counters(K, C, device)
                    f_ms, b_ms, s_ms = bench_one(fn, bufs, weight, counters, timer,
                                                 args.warmup, args.iters)
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
                print(f"{name:<13}{dname:<6}{impl:<9}{f(rec['fwd_ms'])}{f(rec['bwd_ms'])}"
                      f"{f(rec['step_ms'])}{(f'{cs:10.1f}' if cs is not None else ' ' * 10)}"
                      f"  {note}", flush=True)
            del bufs, weight
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["wall_s"] = time.time() - t_start
    save()
    print(f"# copy bandwidth {copy_gbps:.1f} GB/s; total {report['wall_s']:.1f} s"
          + (f"; JSON written to {args.json}" if args.json else ""), flush=True)
    return 1 if any("error" in r and r["impl"] == "eager" for r in results) else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="run the golden cases in float64")
    c.add_argument("--golden", action="append", help="folder of golden cases (repeatable)")
    c.add_argument("--device", help=argparse.SUPPRESS)
    c.add_argument("-v", "--verbose", action="store_true")
    b = sub.add_parser("bench", help="time eager vs torch.compile on CUDA")
    b.add_argument("--json", help="write every number to this JSON file")
    b.add_argument("--presets", help=f"comma list of {','.join(PRESETS)} (default all)")
    b.add_argument("--dtypes", default="bf16,f32", help="activation dtypes, comma list")
    b.add_argument("--iters", type=int, default=50, help="timed iterations (median)")
    b.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    b.add_argument("--buffers", type=int, default=3, help="rotated input buffers (2-4)")
    b.add_argument("--no-compile", action="store_true", help="eager only")
    b.add_argument("--device", help=argparse.SUPPRESS)
    b.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cmd == "check":
        return cmd_check(args)
    if not 1 <= args.buffers <= 8:
        ap.error("--buffers must be in 1..8")
    return cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
