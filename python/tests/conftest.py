"""Shared helpers of the aiec.torch tests: the backends, published-style
models, and comparisons. The project's eager model of the spec, the oracle, is
reference.py beside this file (``import reference``)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GOLDEN = os.path.join(ROOT, "tests", "data", "golden")


HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU (the GPU check runs these)")

# (backend, activation dtype, relative tolerance): "reference" and "sim" are
# CPU tensors under AIEC_TORCH_BACKEND; "cuda" moves the test to the GPU.
BACKENDS = [
    pytest.param("reference", torch.float64, 1e-9, id="reference-f64"),
    pytest.param("reference", torch.float32, 1e-5, id="reference-f32"),
    pytest.param("sim", torch.float32, 1e-5, id="sim-f32"),
    pytest.param("cuda", torch.float32, 1e-5, id="cuda-f32", marks=CUDA),
]


def device_of(backend):
    return torch.device("cuda") if backend == "cuda" else torch.device("cpu")


@pytest.fixture
def use_backend(monkeypatch):
    def set_backend(name):
        if name != "cuda":
            monkeypatch.setenv("AIEC_TORCH_BACKEND", name)
        return device_of(name)

    return set_backend


def assert_close(name, got, want, rtol):
    """Per element ``|a - b| <= rtol * max(|b|, 0.1 * max|b|)`` (the crate's rule: sums taken in
    another order differ by ulps of the largest value), NaN where NaN."""
    got = got.detach().to(torch.float64).cpu()
    want = want.detach().to(torch.float64).cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if want.numel() == 0:
        return
    fin = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{name}: NaN in different places"
    scale = want[fin].abs().max().item() if fin.any() else 0.0
    tol = rtol * torch.maximum(want.abs(), torch.tensor(max(scale, 1e-300) * 0.1))
    bad = ((got - want).abs() > tol) & fin
    if bad.any():
        i = bad.nonzero()[0].tolist()
        worst = ((got - want).abs() / want.abs().clamp_min(1e-300))[bad].max().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {want.numel()} values off (worst rel {worst:.3e}; "
            f"first at {i}: {got[tuple(i)].item()} vs {want[tuple(i)].item()})"
        )


def assert_equal(name, got, want):
    got, want = got.detach().cpu(), want.detach().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not torch.equal(got.to(want.dtype), want):
        n = int((got.to(want.dtype) != want).sum())
        raise AssertionError(f"{name}: {n} of {want.numel()} values differ")


class Block(nn.Module):
    """A published-style block: fc1 -> AIEC -> fc2 (a ViT MLP for ``token``,
    an MLP for ``none``), or conv -> AIEC -> pooled head for ``avg_hw``. The
    AIEC layer comes from ``make(num_features, num_classes, pool)``."""

    def __init__(self, make, pool, d=12, hidden=24, classes=5, update_interval=2):
        super().__init__()
        self.pool = pool
        if pool == "avg_hw":
            self.fc1 = nn.Conv2d(3, hidden, 3, padding=1)
        else:
            self.fc1 = nn.Linear(d, hidden)
        self.act = make(hidden, classes, pool, update_interval)
        self.fc2 = nn.Linear(hidden, d)
        self.head = nn.Linear(d, classes)

    def features(self, x):
        return self.fc1(x)

    def finish(self, h):
        if self.pool == "avg_hw":
            h = h.mean((-1, -2))
        elif self.pool in ("token", "avg_token"):
            h = h[:, 0]
        return self.head(self.fc2(h))


def inputs(pool, batch=6, d=12, tokens=5, hw=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    if pool == "avg_hw":
        x = torch.randn(batch, 3, hw, hw, generator=g, dtype=torch.float64)
    elif pool == "none":
        x = torch.randn(batch, d, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(batch, tokens, d, generator=g, dtype=torch.float64)
    return x.to(dtype)


def published_loss(logits, inter_logits, inter_irrel, targets, classes, gate_coef=200.0):
    """The published model's loss: task CE, the aux CE over the stacked layer
    logits, and the mean of the squared masked values (0 when none)."""
    task = F.cross_entropy(logits, targets)
    stacked = torch.stack(inter_logits)
    aux = F.cross_entropy(stacked.view(-1, classes), targets.repeat(stacked.shape[0]))
    values = torch.cat(inter_irrel)
    gate = (values**2).mean() if values.numel() else torch.zeros((), dtype=logits.dtype)
    return task + aux + gate_coef * gate, aux, gate
