"""The fused path (``AIECFused`` and ``losses``): the same losses, gradients
and counters as the eager model, for one and two layers in every pooling
mode; the gradient scales with the caller's loss; torch.compile traces it with
fullgraph and without dynamic-shape support (no gather); bad input."""

from __future__ import annotations

import pytest
import torch

import reference
from aiec.torch import AIECFused, losses
from conftest import BACKENDS, assert_close, assert_equal

POOLS = ["token", "avg_token", "avg_hw", "none"]


def layer_pair(c, k, pool, interval, dtype, seed):
    torch.manual_seed(seed)
    f = AIECFused(c, k, tau=0.1, update_interval=interval, global_pool=pool).to(dtype)
    e = reference.AIEC(c, k, pool=pool, tau=0.1, update_interval=interval, dtype=dtype)
    with torch.no_grad():
        e.weight.copy_(f.decision_weights)
    return f, e


def activations(pool, c, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    shape = {"token": (5, 4, c), "avg_token": (5, 4, c), "avg_hw": (5, c, 3, 2), "none": (5, c)}[pool]
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("backend,dtype,rtol", BACKENDS)
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_the_fused_path_gives_the_eager_models_losses_and_gradients(use_backend, backend, dtype, rtol, pool, layers):
    dev = use_backend(backend)
    c, k = 10, 4
    pairs = [layer_pair(c, k, pool, 2, dtype, seed) for seed in range(layers)]
    pairs = [(f.to(dev), e.to(dev)) for f, e in pairs]
    for step in range(4):
        t = torch.randint(0, k, (5,), generator=torch.Generator().manual_seed(50 + step)).to(dev)
        xf = [activations(pool, c, 10 * step + i, dtype).to(dev).requires_grad_(True) for i in range(layers)]
        xe = [x.detach().clone().requires_grad_(True) for x in xf]
        dy = [torch.randn_like(x) * 0.1 for x in xf]
        yf = [f(x, t) for (f, _), x in zip(pairs, xf)]
        ye = [e(x, t) for (_, e), x in zip(pairs, xe)]
        objf, auxf, gatef = losses([f for f, _ in pairs])
        obje, auxe, gatee, _ = reference.aiec_objective([e for _, e in pairs], t, 1.0, 200.0)
        torch.autograd.backward([objf] + yf, [torch.ones_like(objf)] + dy)
        torch.autograd.backward([obje] + ye, [torch.ones_like(obje)] + dy)
        assert_close(f"step {step} aux", auxf, auxe, rtol)
        assert_close(f"step {step} gate", gatef, gatee, rtol)
        for i, ((f, e), a, b) in enumerate(zip(pairs, xf, xe)):
            assert_close(f"step {step} layer {i} y", yf[i], ye[i], rtol)
            assert_close(f"step {step} layer {i} dx", a.grad, b.grad, rtol)
            assert_close(f"step {step} layer {i} dW", f.decision_weights.grad, e.weight.grad, rtol)
            assert_equal(f"step {step} layer {i} act", f.counters.activation_counts, e.act)
            assert_equal(f"step {step} layer {i} total", f.counters.total_counts, e.total)
            f.decision_weights.grad = None
            e.weight.grad = None
    assert all(f.count == 4 for f, _ in pairs)


def assert_same_step_gradients(f, e, x, t, rtol):
    """One step of the fused layer f and the eager model e on x with targets t, the objective
    and dy back through both: dx and dW agree within rtol."""
    xf, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    dy = torch.randn_like(x) * 0.1
    yf, ye = f(xf, t), e(xe, t)
    objf, _, _ = losses([f])
    obje, _, _, _ = reference.aiec_objective([e], t, 1.0, 200.0)
    torch.autograd.backward([objf, yf], [torch.ones_like(objf), dy])
    torch.autograd.backward([obje, ye], [torch.ones_like(obje), dy])
    assert_close("dx", xf.grad, xe.grad, rtol)
    assert_close("dW", f.decision_weights.grad, e.weight.grad, rtol)


@pytest.mark.parametrize("backend,dtype,rtol", [b for b in BACKENDS if b.values[0] != "reference"])
def test_dv_split_over_many_classes_gives_the_eager_models_gradients(use_backend, backend, dtype, rtol):
    """K = 1000 beside B = 5: the backward's dv scratch has room for several [B, C] slices
    (``Backend.dv_scratch_len``), so ``aiec_bwd_dv_dw`` splits dv's sums over the classes and
    ``aiec_bwd_sum_slices`` adds them; dx and dW as the eager model's."""
    from aiec import _ops

    dev = use_backend(backend)
    c, k = 12, 1000
    f, e = layer_pair(c, k, "token", 1, dtype, 3)
    f, e = f.to(dev), e.to(dev)
    x = activations("token", c, 4, dtype).to(dev)
    be = _ops.backend(x)
    slices = be.dv_scratch_len(_ops.config(c, k, 0.1, "token", 1), list(x.shape)) // (5 * c)
    assert slices > 1, f"{be.label}: {slices} slice(s)"
    t = torch.tensor([999, 0, 500, 3, 999]).to(dev)
    assert_same_step_gradients(f, e, x, t, rtol)


@pytest.mark.parametrize("backend,dtype,rtol", [b for b in BACKENDS if b.values[0] != "reference"])
def test_dw_split_over_many_samples_gives_the_eager_models_gradients(use_backend, backend, dtype, rtol):
    """B = 512 beside K = 10: dW's tiles sum over 16 stages of samples, dv's over one, so the
    backward splits dW's sums (their slices past the first in the dv scratch after dv,
    ``Backend.dv_scratch_len``) and ``aiec_bwd_sum_slices`` adds them onto dW; dx and dW as the
    eager model's."""
    from aiec import _ops

    dev = use_backend(backend)
    b, c, k = 512, 8, 10
    f, e = layer_pair(c, k, "none", 1, dtype, 5)
    f, e = f.to(dev), e.to(dev)
    g = torch.Generator().manual_seed(6)
    x = torch.randn((b, c), generator=g, dtype=torch.float64).to(dtype).to(dev)
    be = _ops.backend(x)
    n = be.dv_scratch_len(_ops.config(c, k, 0.1, "none", 1), [b, c])
    assert n > b * c and (n - b * c) % (k * c) == 0, f"{be.label}: a scratch of {n} values"
    t = (torch.arange(b) * 7 % k).to(dev)
    assert_same_step_gradients(f, e, x, t, rtol)


def test_the_reference_backend_takes_no_dv_scratch():
    from aiec import _aiec, _ops

    assert _aiec.Backend.reference().dv_scratch_len(_ops.config(12, 1000, 0.0, "none", 1), [5, 12]) == 0


def test_the_forward_scratch_zeroes_only_its_tickets():
    """vit_tiny's logits may split in 6: the forward scratch ends with room for 4 slices of
    [B, K] f32 partials, which need no content, so a step zeroes only the bytes before them;
    where the tiles fill the SMs there is no such room."""
    from aiec import _ops

    plan = _ops.config(768, 100, 0.0, "token", 1).plan([256, 65, 768])
    assert plan.scratch_zero_bytes % 16 == 0
    assert plan.scratch_bytes - plan.scratch_zero_bytes == 4 * 256 * 100 * 4
    scratch = _ops._scratch(plan, torch.device("cpu"))
    assert scratch.numel() == plan.scratch_bytes
    assert not scratch[: plan.scratch_zero_bytes].any()
    full = _ops.config(3072, 1000, 0.0, "none", 1).plan([1280, 3072])
    assert full.scratch_zero_bytes == full.scratch_bytes


def test_the_gradient_scales_with_the_callers_loss():
    torch.manual_seed(7)
    grads = []
    for scale in (1.0, 3.0):
        f = AIECFused(8, 3, update_interval=100, global_pool="none").double()
        with torch.no_grad():
            f.decision_weights.copy_(torch.linspace(-1, 1, 24, dtype=torch.float64).view(3, 8))
        x = torch.linspace(-2, 2, 40, dtype=torch.float64).view(5, 8).requires_grad_(True)
        y = f(x, torch.tensor([0, 1, 2, 0, 1]))
        obj, _, gate = losses([f])
        assert gate > 0, "the gate must take part"
        (scale * (obj + y.sum())).backward()
        grads.append((x.grad.clone(), f.decision_weights.grad.clone()))
    assert_close("dx * 3", grads[1][0], 3 * grads[0][0], 1e-12)
    assert_close("dW * 3", grads[1][1], 3 * grads[0][1], 1e-12)


@pytest.mark.parametrize("pool", ["token", "avg_hw"])
def test_torch_compile_traces_the_fused_path_without_dynamic_shapes(pool):
    torch._dynamo.reset()
    c, k = 12, 5

    def make():
        torch.manual_seed(11)
        return [AIECFused(c, k, update_interval=2, global_pool=pool).double() for _ in range(2)]

    def step(mods, xs, t):
        ys = [m(x, t) for m, x in zip(mods, xs)]
        obj, aux, gate = losses(mods)
        return obj + sum(y.sum() for y in ys), aux, gate

    eager_mods, compiled_mods = make(), make()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=False, capture_scalar_outputs=False):
        compiled = torch.compile(step, fullgraph=True)
        for s in range(4):
            t = torch.randint(0, k, (5,), generator=torch.Generator().manual_seed(s))
            xs = [activations(pool, c, s + i, torch.float64) for i in range(2)]
            le = step(eager_mods, [x.clone().requires_grad_(True) for x in xs], t)[0]
            lc = compiled(compiled_mods, [x.clone().requires_grad_(True) for x in xs], t)[0]
            le.backward()
            lc.backward()
            assert_close(f"step {s} loss", lc, le, 1e-9)
    for a, b in zip(compiled_mods, eager_mods):
        assert_close("dW", a.decision_weights.grad, b.decision_weights.grad, 1e-9)
        assert_equal("act", a.counters.activation_counts, b.counters.activation_counts)
        assert a.count == b.count == 4


def test_bad_input_on_the_fused_path_raises_and_changes_nothing():
    f = AIECFused(6, 4, update_interval=1, global_pool="none")
    x = torch.randn(3, 6)
    f(x, torch.tensor([0, 1, 3]))
    before = (f.decision_weights.detach().clone(), f.counters.total_counts.clone(), f.count)
    for kind, text, call in [
        (ValueError, "outside 0..4", lambda: f(x, torch.tensor([0, 7, 1]))),
        (ValueError, "targets given", lambda: f(x, torch.tensor([0, 1]))),
        (ValueError, "channels", lambda: f(torch.randn(3, 5), torch.tensor([0, 1, 2]))),
        (TypeError, "integer type", lambda: f(x, torch.tensor([0.0, 1.0, 2.0]))),
    ]:
        with pytest.raises(kind, match=text):
            call()
        assert torch.equal(f.decision_weights, before[0]) and torch.equal(f.counters.total_counts, before[1])
        assert f.count == before[2], text
    with pytest.raises(ValueError, match="forward with targets"):
        f(x)
        losses([f])
