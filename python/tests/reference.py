"""AIEC in eager PyTorch: the oracle the package is tested against, and the
golden checker.

This is AIEC (the contract: docs/SPEC.md) written the way a PyTorch user would
write it: vectorised tensor ops (torch.where, indexing, F.linear, index_add_,
boolean masks, F.cross_entropy) and autograd for the backward. No Python loop
runs over samples, channels or classes. The tests import it (``import
reference``; python/tests is on their path); python/benchmarks/bench_eager.py
times it, and scripts/bench_torch.py sets it beside ``aiec.torch``.

  python3 python/tests/reference.py [--golden DIR ...] [-v]
      Runs every golden case (default tests/data/golden) in float64 and compares
      every output, counter, loss and gradient (1e-9 relative, integers exact):
      this oracle is the same operation as the crate's (also a test:
      test_pt_golden.py::test_the_reference_passes_every_golden_case).

Requires torch (and safetensors for the golden check).
"""

import argparse
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "golden")

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

    def __init__(self, channels, classes, pool="token", tau=0.0, update_interval=5, device=None, dtype=torch.float32):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool mode {pool!r}")
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"tau must be finite and >= 0, got {tau}")
        if update_interval < 1:
            raise ValueError("update_interval must be >= 1")
        self.pool, self.tau, self.update_interval = pool, float(tau), int(update_interval)
        self.weight = nn.Parameter(torch.empty(classes, channels, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=channels**-0.5)
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
            x, self.weight, targets, self.act, self.inh, self.total, pool_mode=self.pool, tau=self.tau, update=update
        )
        self.last = (logits, mask, S, N, v)
        return y


def aiec_objective(layers, targets, aux_coef=1.0, gate_coef=200.0):
    """aux_coef * aux + gate_coef * gate over the layers' latest forwards."""
    aux, gate, N = aiec_losses(
        [m.last[0] for m in layers], targets, [m.last[2] for m in layers], [m.last[3] for m in layers]
    )
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
        errors.append(f"{name}: {int((~ok).sum())} of {want.numel()} values off (worst rel {worst:.3e})")


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
        layer = AIEC(C, K, pool=pool_mode, tau=tau, update_interval=1 if update else 2, device=device, dtype=dt)
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
    dirs = args.golden or [GOLDEN]
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


def main(argv=None):
    ap = argparse.ArgumentParser(description="run the golden cases through the eager oracle in float64")
    ap.add_argument("--golden", action="append", help="folder of golden cases (repeatable)")
    ap.add_argument("--device", help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true")
    return cmd_check(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
