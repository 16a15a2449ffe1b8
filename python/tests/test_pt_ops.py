"""The custom operators themselves: ``torch.autograd.gradcheck`` in float64,
``torch.library.opcheck``, the keep-bit sizes of the fakes against the crate,
the kernels in the simulator against the CPU reference in every activation
type, and the extension's typed errors."""

from __future__ import annotations

import os

import pytest
import torch

import aiec
from aiec import _aiec, _ops
from aiec.torch import AIECFused, losses
from conftest import HAS_CUDA, assert_close

SHAPES = {"token": (3, 4, 5), "avg_token": (3, 4, 5), "avg_hw": (3, 5, 2, 3), "none": (3, 5)}


@pytest.mark.parametrize("pool", sorted(SHAPES))
def test_gradcheck_of_the_activation_pass(pool):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPES[pool], generator=g, dtype=torch.float64)
    x = torch.where(x.abs() < 0.05, x + 0.2, x).requires_grad_(True)  # keep away from the kink at 0
    c = _ops.channels_of(x.shape, pool)

    def f(x):
        y, _, v = _ops.activation(x, 0.0, pool, c)
        return y, v

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("pool", sorted(SHAPES))
def test_gradcheck_of_the_fused_path(pool):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(SHAPES[pool], generator=g, dtype=torch.float64)
    x = torch.where(x.abs() < 0.05, x + 0.2, x).requires_grad_(True)
    c = _ops.channels_of(x.shape, pool)
    m = AIECFused(c, 3, update_interval=10**9, global_pool=pool).double()
    m.count = 1  # step 1 of an interval of 10^9: never an update step
    w = (torch.randn(3, c, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    t = torch.tensor([0, 2, 1])

    def f(x, w):
        with torch.no_grad():
            m.decision_weights.copy_(w)
        counts = m.counters
        y, _, _, _, ce, _, _, s, n = _ops.Fused.apply(
            x,
            w,
            t,
            counts.activation_counts,
            counts.inhibition_counts,
            counts.total_counts,
            m._count,
            m.update_interval,
            True,
            0.0,
            pool,
        )
        return y, ce, s

    assert torch.autograd.gradcheck(f, (x, w), eps=1e-6, atol=1e-8)
    assert int(m.counters.total_counts.sum()) == 3, "no update happened, so every call saw the same mask"


def test_opcheck_of_the_functional_ops():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    torch.library.opcheck(_ops.activation, (x, 0.0, "avg_token", 5))
    torch.library.opcheck(_ops.threshold, (x, 0.0, "token", 5))
    y, keep, v = _ops.activation(x, 0.0, "token", 5)
    torch.library.opcheck(_ops.activation_backward, (torch.randn_like(x), keep, torch.randn_like(v), 0.0, "token", 5))


def test_the_fakes_keep_bit_sizes_are_the_crates():
    for pool, shape in [("token", (3, 5, 7)), ("avg_hw", (2, 3, 7, 7)), ("none", (33, 96)), ("avg_token", (1, 1, 1))]:
        for scale in (1, 2, 5):
            s = (shape[0] * scale,) + shape[1:]
            c = _ops.channels_of(s, pool)
            kw = aiec.Config(c, 10, 0.0, pool, 1).plan(list(s)).keep_words
            assert _ops.keep_words(s, pool) == kw, (pool, s)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 1e-2)])
def test_the_simulated_kernels_match_the_reference_in_every_type(use_backend, dtype, rtol):
    pool, c, k = "avg_token", 16, 4
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 5, c, generator=g) * 2).to(dtype)
    dy = (torch.randn(6, 5, c, generator=g) * 0.1).to(dtype)
    t = torch.tensor([0, 1, 2, 3, 0, 1])
    torch.manual_seed(4)
    w = torch.randn(k, c) * 0.3
    results = {}
    for backend in ("sim", "reference"):
        use_backend(backend)
        # The reference runs in float64 on the same (rounded) inputs.
        xd = x.detach().to(torch.float64 if backend == "reference" else dtype).clone().requires_grad_(True)
        m = AIECFused(c, k, update_interval=100, global_pool=pool)
        m = m.double() if backend == "reference" else m
        with torch.no_grad():
            m.decision_weights.copy_(w)
        y = m(xd, t)
        obj, aux, gate = losses([m])
        torch.autograd.backward([obj, y], [torch.ones_like(obj), dy.to(xd.dtype)])
        results[backend] = (y, xd.grad, m.decision_weights.grad, aux, gate)
    for name, a, b in zip(["y", "dx", "dW", "aux", "gate"], results["sim"], results["reference"]):
        assert_close(f"{dtype} {name}", a, b, rtol)


def test_the_extension_raises_typed_errors():
    with pytest.raises(ValueError, match="pooling mode"):
        aiec.Config(4, 3, 0.0, "max", 1)
    with pytest.raises(ValueError, match="tau"):
        aiec.Config(4, 3, float("nan"), "none", 1)
    cfg = aiec.Config(4, 3, 0.0, "none", 1)
    with pytest.raises(ValueError, match="channels"):
        cfg.plan([2, 5])
    t = torch.tensor([0, 3])
    with pytest.raises(ValueError, match="target 1 is 3, outside 0..3"):
        cfg.check_targets(t, 2)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        if torch.cuda.is_available():
            raise RuntimeError("CUDA is not available (skipped: this machine has a GPU)")
        aiec.Backend.cuda(0, 0)


def test_cuda_is_there_when_the_gpu_check_expects_it():
    """The GPU check sets AIEC_EXPECT_CUDA: then the CUDA cases must run, not skip."""
    if os.environ.get("AIEC_EXPECT_CUDA"):
        assert HAS_CUDA, "AIEC_EXPECT_CUDA is set but torch sees no CUDA GPU"
        assert aiec.Backend.cuda(0, torch.cuda.current_stream().cuda_stream).kind == "cuda"


def test_the_structs_python_builds_are_the_extensions():
    # The extension exports the layouts from the crate's one definition (src/params.rs, pinned to
    # kernels/aiec_params.cuh); these numbers pin that export, and the builder places by it.
    assert (_aiec.LOSSES_SIZE, _aiec.GATE_STATS_SIZE) == (32, 16)
    assert _aiec.LOSSES_FIELDS == {"aux": 0, "gate": 4, "sum_sq": 8, "aux_scale": 12, "gate_scale": 16, "count": 24}
    assert _aiec.GATE_STATS_FIELDS == {"sum_sq": 0, "count": 8}
    for dtype in (torch.float32, torch.float64):
        scales = _ops._gate_only_losses(torch.tensor(3.0, dtype=dtype))
        assert scales.dtype == dtype and scales.tolist() == [0, 0, 0, 0, 3, 0, 0, 0]
