#!/usr/bin/env python3
"""aiec.torch side by side with eager PyTorch, per training step, in one process.

For each preset (the bench's layer shapes, and a published-style ViT-B MLP block:
fc1, AIEC, fc2) and each variant, one training step (forward with targets on an
update step, the AIEC losses, backward):

* ``eager``: the project's eager PyTorch model of the spec (python/tests/reference.py);
* ``compiled``: ``torch.compile`` of that same step;
* ``dropin``: ``aiec.torch.AIEC`` with the published loss code (CE over the stacked
  logits, mean of the squared masked values: one boolean gather);
* ``fused``: ``aiec.torch.AIECFused`` with ``aiec.torch.losses``.

Reported: median step time (CUDA events; wall clock on CPU), peak memory of the
step above what was allocated before it (``torch.cuda.max_memory_allocated``), and
the bytes autograd saved for backward (a ``saved_tensors_hooks`` count of distinct
tensors). ``--json OUT`` writes every number.

    python3 scripts/bench_torch.py                     # CUDA, the full presets
    python3 scripts/bench_torch.py --device cpu --tiny --no-compile   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


# The eager oracle lives with the Python tests, which import it as `reference`.
sys.path.insert(0, os.path.join(HERE, "..", "python", "tests"))
import reference  # noqa: E402

# name: (pool, shape of the AIEC input, K, block) ; block: run fc1 -> AIEC -> fc2 around it.
PRESETS = {
    "vit_b": ("token", (256, 197, 3072), 1000, False),
    "resnet_stage": ("avg_hw", (128, 256, 56, 56), 1000, False),
    "mlp": ("none", (4096, 4096), 1000, False),
    "vit_b_mlp_block": ("token", (256, 197, 3072), 1000, True),
}
TINY = {
    "vit_b": ("token", (8, 7, 48), 20, False),
    "resnet_stage": ("avg_hw", (4, 16, 6, 6), 20, False),
    "mlp": ("none", (16, 32), 20, False),
    "vit_b_mlp_block": ("token", (8, 7, 48), 20, True),
}
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


class Layer(torch.nn.Module):
    """One AIEC layer (``variant``), optionally inside fc1 -> AIEC -> fc2."""

    def __init__(self, variant, pool, c, k, block, d):
        super().__init__()
        self.variant, self.pool, self.block = variant, pool, block
        if variant in ("eager", "compiled"):
            self.act = reference.AIEC(c, k, pool=pool, tau=0.0, update_interval=1)
        elif variant == "dropin":
            from aiec.torch import AIEC

            self.act = AIEC(c, k, tau=0, update_interval=1, global_pool=pool)
        else:
            from aiec.torch import AIECFused

            self.act = AIECFused(c, k, tau=0, update_interval=1, global_pool=pool)
        if block:
            self.fc1 = torch.nn.Linear(d, c)
            self.fc2 = torch.nn.Linear(c, d)

    def step(self, x, t):
        h = self.fc1(x) if self.block else x
        if self.variant in ("eager", "compiled"):
            y = self.act(h, t)
            obj, _, _, _ = reference.aiec_objective([self.act], t, 1.0, 200.0)
        elif self.variant == "dropin":
            inter_logits, inter_irrel = [], []
            y = self.act(h, t, inter_logits, inter_irrel)
            k = self.act.num_classes
            aux = F.cross_entropy(torch.stack(inter_logits).view(-1, k), t)
            values = torch.cat(inter_irrel)
            gate = (values.float() ** 2).mean() if values.numel() else torch.zeros((), device=x.device)
            obj = aux + 200.0 * gate
        else:
            from aiec.torch import losses

            y = self.act(h, t)
            obj, _, _ = losses([self.act])
        out = self.fc2(y) if self.block else y
        return out, obj


def run_variant(variant, preset, pool, shape, k, block, dtype, device, iters, warmup, compile_ok):
    torch.manual_seed(0)
    b = shape[0]
    c = shape[1] if pool == "avg_hw" else shape[-1]
    d = 768 if not TINY_MODE else 24
    xshape = (shape[0], shape[1], d) if block else shape
    m = Layer(variant, pool, c, k, block, d).to(device)
    g = torch.Generator(device=device).manual_seed(1)
    xs = [torch.randn(xshape, generator=g, device=device).to(dtype).requires_grad_(not block) for _ in range(2)]
    dys = [(torch.randn(xshape if block else shape, generator=g, device=device) * 1e-3).to(dtype) for _ in range(2)]
    ts = [torch.randint(0, k, (b,), generator=g, device=device) for _ in range(2)]
    fn = m.step
    if variant == "compiled":
        if not compile_ok:
            return None
        # The eager model keeps its step as a Python int; without this, torch.compile
        # would recompile at every step (and give up after 8).
        torch._dynamo.config.allow_unspec_int_on_nn_module = True
        fn = torch.compile(m.step)
    ctx = torch.autocast(device.type, dtype=dtype) if block and dtype != torch.float32 else _null()

    def one(i):
        with ctx:
            out, obj = fn(xs[i % 2], ts[i % 2])
        torch.autograd.backward([obj, out], [torch.ones_like(obj), dys[i % 2].to(out.dtype)])

    for i in range(warmup):
        one(i)
    sync(device)
    # Bytes saved for backward in one forward (distinct storages).
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        out, obj = fn(xs[0], ts[0])
    del out, obj
    saved = sum(seen.values())
    for p in m.parameters():
        p.grad = None
    sync(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(iters):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            one(i)
            e1.record()
            times.append((e0, e1))
        else:
            t0 = time.perf_counter()
            one(i)
            times.append(time.perf_counter() - t0)
    sync(device)
    ms = [a.elapsed_time(b) for a, b in times] if device.type == "cuda" else [t * 1e3 for t in times]
    peak = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else None
    return {"ms": statistics.median(ms), "peak_bytes": peak, "saved_bytes": saved}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


TINY_MODE = False


def main():
    global TINY_MODE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test on CPU)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--variants", default="eager,compiled,dropin,fused")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    TINY_MODE = args.tiny
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_torch: CUDA is not available (use --device cpu --tiny for a smoke test)")
        return 2
    presets = TINY if args.tiny else PRESETS
    rows = []
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"{'preset':<16} {'dtype':<5} {'variant':<9} {'ms/step':>9} {'vs eager':>9} {'peak MB':>9} {'saved MB':>9}")
    for name in args.presets.split(","):
        pool, shape, k, block = presets[name]
        for dn in args.dtypes.split(","):
            dtype = DTYPES[dn]
            if device.type == "cpu" and dtype != torch.float32 and os.environ.get("AIEC_TORCH_BACKEND") != "sim":
                dtype = torch.float32  # the CPU reference runs float32/float64
            ref = None
            for variant in args.variants.split(","):
                r = run_variant(
                    variant, name, pool, shape, k, block, dtype, device, args.iters, args.warmup, not args.no_compile
                )
                if r is None:
                    continue
                if variant == "eager":
                    ref = r["ms"]
                r.update(preset=name, dtype=str(dtype).replace("torch.", ""), variant=variant)
                rows.append(r)
                ratio = f"{ref / r['ms']:.2f}x" if ref else "-"
                peak = f"{r['peak_bytes'] / 1e6:.1f}" if r["peak_bytes"] is not None else "-"
                print(
                    f"{name:<16} {r['dtype']:<5} {variant:<9} {r['ms']:>9.3f} {ratio:>9} {peak:>9} "
                    f"{r['saved_bytes'] / 1e6:>9.2f}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": str(device), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
