"""Every golden case (tests/data/golden, computed in float64 by an independent
PyTorch model of the spec) through the drop-in and the fused path, on the CPU
reference in float64 and, in float32, through the simulator."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

import reference
from aiec.torch import AIEC, AIECFused, losses
from conftest import CUDA, GOLDEN, assert_close, assert_equal


def cases():
    dirs = [GOLDEN] + ([os.environ["AIEC_GOLDEN_DIR"]] if os.environ.get("AIEC_GOLDEN_DIR") else [])
    out = []
    for d in dirs:
        out += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))
    assert out, f"no golden cases in {dirs}"
    return out


def load(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def layers_of(meta, t, cls, dtype):
    """The case's layers as modules of ``cls``, set up so that this forward
    updates exactly when the case says so."""
    k, c, n = int(meta["classes"]), int(meta["channels"]), int(meta["layers"])
    update = meta["update"].lower() == "true"
    mods = []
    for i in range(n):
        m = cls(c, k, tau=float(meta["tau"]), update_interval=1 if update else 2, global_pool=meta["pool"])
        m = m.to(dtype)
        with torch.no_grad():
            m.decision_weights.copy_(t[f"l{i}.w"])
            m.counters.activation_counts.copy_(t[f"l{i}.act_in"])
            m.counters.inhibition_counts.copy_(t[f"l{i}.inh_in"])
            m.counters.total_counts.copy_(t[f"l{i}.total_in"])
        mods.append(m)
    return mods


def check(meta, t, mods, ys, xs, aux, gate, rtol, logits=None):
    n = int(meta["layers"])
    for i in range(n):
        p = f"l{i}."
        assert_close(p + "y", ys[i], t[p + "y"], rtol)
        if logits is not None:
            assert_close(p + "logits", logits[i], t[p + "logits"], rtol)
        c = mods[i].counters
        assert_equal(p + "act", c.activation_counts, t[p + "act"])
        assert_equal(p + "inh", c.inhibition_counts, t[p + "inh"])
        assert_equal(p + "total", c.total_counts, t[p + "total"])
        assert_close(p + "dx", xs[i].grad, t[p + "dx"], rtol)
        assert_close(p + "dw", mods[i].decision_weights.grad, t[p + "dw"], rtol)
    assert_close("aux_loss", aux.reshape(1), t["aux_loss"], rtol)
    assert_close("gate_loss", gate.reshape(1), t["gate_loss"], rtol)


BACKENDS = [
    pytest.param("reference", torch.float64, 1e-9, id="reference-f64"),
    pytest.param("sim", torch.float32, 2e-5, id="sim-f32"),
    pytest.param("cuda", torch.float32, 2e-5, id="cuda-f32", marks=CUDA),
]


def on(t, dev):
    return {k: v.to(dev) for k, v in t.items()}


@pytest.mark.parametrize("backend,dtype,rtol", BACKENDS)
def test_golden_cases_through_the_drop_in(use_backend, backend, dtype, rtol):
    dev = use_backend(backend)
    paths = cases()
    for path in paths:
        meta, t = load(path)
        t = on(t, dev)
        mods = [m.to(dev) for m in layers_of(meta, t, AIEC, dtype)]
        targets = t["targets"]
        n, k = len(mods), int(meta["classes"])
        xs = [t[f"l{i}.x"].to(dtype).requires_grad_(True) for i in range(n)]
        inter_logits, inter_irrel = [], []
        ys = [m(x, targets, inter_logits, inter_irrel) for m, x in zip(mods, xs)]
        stacked = torch.stack(inter_logits)
        aux = torch.nn.functional.cross_entropy(stacked.view(-1, k), targets.repeat(n))
        values = torch.cat(inter_irrel)
        gate = (values**2).mean() if values.numel() else torch.zeros((), dtype=dtype, device=dev)
        objective = float(meta["aux_coef"]) * aux + float(meta["gate_coef"]) * gate
        torch.autograd.backward(
            [objective] + ys, [torch.ones_like(objective)] + [t[f"l{i}.dy"].to(dtype) for i in range(n)]
        )
        assert int(values.numel()) == int(t["gate_count"][0]), f"{path}: N"
        check(meta, t, mods, ys, xs, aux, gate, rtol, logits=inter_logits)
    print(f"golden drop-in {backend}: {len(paths)}/{len(paths)} cases passed")


@pytest.mark.parametrize("backend,dtype,rtol", BACKENDS)
def test_golden_cases_through_the_fused_path(use_backend, backend, dtype, rtol):
    dev = use_backend(backend)
    paths = cases()
    for path in paths:
        meta, t = load(path)
        t = on(t, dev)
        mods = [m.to(dev) for m in layers_of(meta, t, AIECFused, dtype)]
        targets = t["targets"]
        n = len(mods)
        xs = [t[f"l{i}.x"].to(dtype).requires_grad_(True) for i in range(n)]
        ys = [m(x, targets) for m, x in zip(mods, xs)]
        objective, aux, gate = losses(mods, float(meta["aux_coef"]), float(meta["gate_coef"]))
        torch.autograd.backward(
            [objective] + ys, [torch.ones_like(objective)] + [t[f"l{i}.dy"].to(dtype) for i in range(n)]
        )
        count = sum(int(m.last[2]) for m in mods)
        assert count == int(t["gate_count"][0]), f"{path}: N"
        check(meta, t, mods, ys, xs, aux, gate, rtol, logits=[m.last[3] for m in mods])
    print(f"golden fused {backend}: {len(paths)}/{len(paths)} cases passed")


@pytest.mark.parametrize("path", cases(), ids=os.path.basename)
def test_the_reference_passes_every_golden_case(path):
    """The eager oracle (reference.py) is the crate's op: every output, counter,
    loss and gradient of every case in float64 (1e-9 relative, integers exact)."""
    errors = reference.run_case(path, torch.device("cpu"))
    assert not errors, "\n".join(errors)
