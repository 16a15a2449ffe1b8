"""``aiec.torch.AIEC`` as a drop-in for the published module: published-style
models trained several steps follow the project's eager model step for step;
attributes and state-dict keys; evaluation reset; every bad input; saved
state; non-contiguous inputs; autocast; torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import reference
from aiec.torch import AIEC, AIECFused, losses
from conftest import BACKENDS, Block, assert_close, assert_equal, inputs, published_loss

POOL_MODES = ["token", "avg_hw", "none", "avg_token"]


def make_dropin(c, k, pool, interval):
    return AIEC(c, k, tau=0, update_interval=interval, global_pool=pool)


def make_eager(c, k, pool, interval):
    return reference.AIEC(c, k, pool=pool, tau=0.0, update_interval=interval)


def twin_models(pool, dtype, seed=0):
    """The same published-style block with the drop-in and with the eager model."""
    torch.manual_seed(seed)
    a = Block(make_dropin, pool).to(dtype)
    b = Block(make_eager, pool).to(dtype)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("act.")}, strict=False)
    with torch.no_grad():
        b.act.weight.copy_(a.act.decision_weights)
    return a, b


def step_dropin(m, x, t):
    h = m.features(x)
    inter_logits, inter_irrel = [], []
    y = m.act(h, t, inter_logits, inter_irrel)
    loss, aux, gate = published_loss(m.finish(y), inter_logits, inter_irrel, t, m.act.num_classes)
    return loss, aux, gate


def step_eager(m, x, t):
    h = m.features(x)
    y = m.act(h, t)
    obj, aux, gate, _ = reference.aiec_objective([m.act], t, 1.0, 200.0)
    return F.cross_entropy(m.finish(y), t) + obj, aux, gate


@pytest.mark.parametrize("backend,dtype,rtol", BACKENDS)
@pytest.mark.parametrize("pool", POOL_MODES)
def test_a_published_style_model_trains_like_the_eager_model(use_backend, backend, dtype, rtol, pool):
    dev = use_backend(backend)
    a, b = twin_models(pool, dtype)
    a, b = a.to(dev), b.to(dev)
    oa = torch.optim.SGD(a.parameters(), lr=0.05)
    ob = torch.optim.SGD(b.parameters(), lr=0.05)
    counted = 0
    for step in range(6):
        x = inputs(pool, seed=step, dtype=dtype).to(dev)
        t = torch.randint(0, 5, (x.shape[0],), generator=torch.Generator().manual_seed(100 + step)).to(dev)
        la, auxa, gatea = step_dropin(a, x, t)
        lb, auxb, gateb = step_eager(b, x, t)
        oa.zero_grad()
        ob.zero_grad()
        la.backward()
        lb.backward()
        for what, ga, gb in [("loss", la, lb), ("aux", auxa, auxb), ("gate", gatea, gateb)]:
            assert_close(f"step {step} {what}", ga, gb, rtol)
        for (name, pa), pb in zip(
            [(n, p) for n, p in a.named_parameters() if n != "act.decision_weights"],
            [p for n, p in b.named_parameters() if n != "act.weight"],
        ):
            assert_close(f"step {step} grad {name}", pa.grad, pb.grad, rtol)
        assert_close(f"step {step} grad W", a.act.decision_weights.grad, b.act.weight.grad, rtol)
        assert_equal(f"step {step} act", a.act.counters.activation_counts, b.act.act)
        assert_equal(f"step {step} inh", a.act.counters.inhibition_counts, b.act.inh)
        assert_equal(f"step {step} total", a.act.counters.total_counts, b.act.total)
        oa.step()
        ob.step()
    counted = int(a.act.counters.total_counts.sum()) - 5
    assert a.act.count == 6
    assert counted > 0, "no sample was counted: the comparison of counters proves little"


def test_the_published_attributes_and_state_dict_keys():
    m = AIEC(16, num_classes=7, tau=0.5, update_interval=3, global_pool="avg_token")
    assert tuple(m.decision_weights.shape) == (7, 16)
    bound = (6 / (7 + 16)) ** 0.5
    assert m.decision_weights.abs().max() <= bound, "Xavier-uniform"
    for name, shape in [("activation_counts", (7, 16)), ("inhibition_counts", (7, 16)), ("total_counts", (7,))]:
        buf = getattr(m.counters, name)
        assert buf.dtype == torch.int64 and tuple(buf.shape) == shape
    assert m.counters.total_counts.tolist() == [1] * 7
    assert m.count == 0 and m.update_interval == 3 and m.global_pool == "avg_token"
    assert float(m.tau.tau) == 0.5
    # The published module's state dict: the weights and the threshold; the counters are not persistent.
    assert sorted(m.state_dict()) == ["decision_weights", "tau.tau"]
    m.count = 4
    assert m.count == 4


def test_evaluation_resets_the_counters_and_moves_nothing():
    torch.manual_seed(1)
    m = AIEC(8, 3, update_interval=1, global_pool="none").double()
    with torch.no_grad():
        m.decision_weights.copy_(torch.tensor([[1.0] * 4 + [-1.0] * 4, [-1.0] * 8, [-0.5] * 8], dtype=torch.float64))
    x = torch.cat([torch.rand(4, 4, dtype=torch.float64) + 1.0, torch.rand(4, 4, dtype=torch.float64) * 0.1], 1)
    t = torch.zeros(4, dtype=torch.int64)
    m(x, t, [], [])
    assert m.counters.total_counts.tolist() == [5, 1, 1] and m.count == 1
    m.eval()
    assert m.counters.total_counts.tolist() == [1, 1, 1]
    assert int(m.counters.activation_counts.sum()) == 0
    logits, irrel = [], []
    y = m(x, t, logits, irrel)
    assert torch.equal(y, x)
    assert m.count == 1 and m.counters.total_counts.tolist() == [1, 1, 1], "evaluation moves nothing"
    # The published contract in evaluation: logits, and the masked values from the reset counters
    # (act = inh = 0: irrelevant where W <= 0, here channels 4..7 of class 0).
    assert len(logits) == 1 and irrel[0].numel() == 4 * 4
    m.train()
    m(x, t, [], [])
    assert m.count == 2 and m.counters.total_counts.tolist() == [5, 1, 1]


def test_bad_input_raises_and_changes_nothing():
    torch.manual_seed(2)
    m = AIEC(6, 4, update_interval=1, global_pool="token")
    x = torch.randn(3, 5, 6)
    t = torch.tensor([0, 1, 3])
    m(x, t, [], [])

    def state():
        c = m.counters
        return (
            m.decision_weights.detach().clone(),
            c.activation_counts.clone(),
            c.inhibition_counts.clone(),
            c.total_counts.clone(),
            m.count,
        )

    before = state()
    bad = [
        (ValueError, "outside 0..4", lambda: m(x, torch.tensor([0, 4, 1]), [], [])),
        (ValueError, "outside 0..4", lambda: m(x, torch.tensor([-1, 0, 1]), [], [])),
        (ValueError, "targets given for a batch", lambda: m(x, torch.tensor([0, 1]), [], [])),
        (TypeError, "integer type", lambda: m(x, t.float(), [], [])),
        (ValueError, "channels", lambda: m(torch.randn(3, 5, 7), t, [], [])),
        (ValueError, "3-d input", lambda: m(torch.randn(3, 6), t, [], [])),
        (ValueError, "tokens T must be at least 1", lambda: m(torch.randn(3, 0, 6), t, [], [])),
        (TypeError, "not supported", lambda: m(x.to(torch.int32), t, [], [])),
        (ValueError, "is on", lambda: m(x.to("meta"), t, [], [])),
    ]
    for kind, text, call in bad:
        with pytest.raises(kind, match=text):
            call()
        after = state()
        for got, want in zip(after[:4], before[:4]):
            assert torch.equal(got, want), f"{text}: state changed"
        assert after[4] == before[4], f"{text}: count moved"
    with pytest.raises(ValueError, match="pooling mode"):
        AIEC(6, 4, global_pool="cls")
    with pytest.raises(ValueError, match="tau"):
        AIEC(6, 4, tau=-1.0)
    with pytest.raises(ValueError, match="update_interval"):
        AIEC(6, 4, update_interval=0)


def test_only_the_keep_bits_and_small_state_are_saved_for_backward():
    m = AIEC(64, 10, global_pool="avg_token")
    x = torch.randn(4, 33, 64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x, torch.tensor([1, 2, 3, 4]), [], [])
    numel = x.numel()
    big = [s for s in saved if torch.Size(s[0]).numel() >= numel]
    assert not big, f"activation-sized tensors saved: {big}"
    keep = [s for s in saved if s[1] == torch.int32]
    assert keep == [(((numel + 31) // 32,), torch.int32)], f"one bit per element: {keep}"


def test_a_non_contiguous_input_is_made_contiguous():
    torch.manual_seed(3)
    m = AIEC(8, 3, global_pool="token", update_interval=1).double()
    base = torch.randn(5, 8, 4, dtype=torch.float64)
    x = base.transpose(1, 2)  # [5, 4, 8], not contiguous
    assert not x.is_contiguous()
    y = m(x, torch.tensor([0, 1, 2, 0, 1]), [], [])
    assert torch.equal(y, torch.where(x <= 0, torch.zeros(()), x))


def test_autocast_gives_bfloat16_activations_and_float32_logits(use_backend):
    use_backend("sim")
    torch.manual_seed(4)
    fc = torch.nn.Linear(12, 16)
    m = AIEC(16, 5, global_pool="none", update_interval=1)
    x = torch.randn(6, 12)
    t = torch.arange(6) % 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = fc(x)
        logits, irrel = [], []
        y = m(h, t, logits, irrel)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert logits[0].dtype == torch.float32
    (y.float().sum() + logits[0].sum()).backward()
    assert fc.weight.grad is not None and m.decision_weights.grad.dtype == torch.float32


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", ["AIEC", "AIECFused"])
def test_half_types_on_the_cpu_reference_compute_in_float32(use_backend, half, cls):
    """float16 and bfloat16 CPU tensors (CPU autocast, or a model cast wholesale)
    run on the reference as the kernels run them: computed in float32, ``y`` and
    ``dx`` in the input's type, ``dW`` in ``W``'s; the logits float32. (Before:
    a TypeError asking for AIEC_TORCH_BACKEND=sim.)"""
    use_backend("reference")
    torch.manual_seed(3)
    x32 = torch.randn(4, 5, 8)
    t = torch.tensor([0, 1, 2, 1])
    make = AIEC if cls == "AIEC" else AIECFused
    ref = make(8, 3, global_pool="avg_token", update_interval=1)
    m = copy.deepcopy(ref).to(half)
    with torch.no_grad():  # the same weights, as the half model holds them
        ref.decision_weights.copy_(m.decision_weights.float())
    xh = x32.to(half)
    ys = []
    for mod, x in ((ref, xh.float().requires_grad_()), (m, xh.clone().requires_grad_())):
        logits = []
        if cls == "AIEC":
            y = mod(x, t, logits, [])
            y.float().sum().backward()
        else:
            y = mod(x, t)
            logits = [mod.last[3]]
            (losses([mod])[0] + y.float().sum()).backward()
        ys.append((y, x.grad, logits[0], mod.counters.activation_counts.clone(), mod.decision_weights.grad))
    (y32, dx32, l32, a32, dw32), (yh, dxh, lh, ah, dwh) = ys
    assert yh.dtype == half and dxh.dtype == half and lh.dtype == torch.float32
    assert torch.equal(yh, y32.to(half))
    assert torch.equal(dxh, dx32.to(half))
    assert torch.equal(lh, l32)
    assert torch.equal(ah, a32) and int(ah.sum()) > 0
    if cls == "AIECFused":
        assert dwh.dtype == half and torch.equal(dwh, dw32.to(half))


@pytest.mark.parametrize("pool", ["token", "avg_hw"])
def test_torch_compile_traces_the_drop_in_with_fullgraph(pool):
    torch._dynamo.reset()
    torch.manual_seed(5)
    eager_model = Block(make_dropin, pool).double()
    compiled_model = copy.deepcopy(eager_model)

    def model(m, x, t):
        inter_logits, inter_irrel = [], []
        y = m.act(m.features(x), t, inter_logits, inter_irrel)
        return m.finish(y), inter_logits, inter_irrel

    # The model (and the module in it) is compiled whole; the published loss,
    # whose `if len(values) > 0` branches on data, stays outside.
    compiled = torch.compile(model, fullgraph=True)

    def loss_of(run, m, x, t):
        logits, inter_logits, inter_irrel = run(m, x, t)
        return published_loss(logits, inter_logits, inter_irrel, t, m.act.num_classes)[0]

    for step in range(4):
        x = inputs(pool, seed=step)
        t = torch.randint(0, 5, (x.shape[0],), generator=torch.Generator().manual_seed(step))
        le = loss_of(model, eager_model, x, t)
        lc = loss_of(compiled, compiled_model, x, t)
        le.backward()
        lc.backward()
        assert_close(f"step {step} loss", lc, le, 1e-9)
        assert_close(
            f"step {step} grad W", compiled_model.act.decision_weights.grad, eager_model.act.decision_weights.grad, 1e-9
        )
        for m in (eager_model, compiled_model):
            m.zero_grad()
    assert_equal("act", compiled_model.act.counters.activation_counts, eager_model.act.counters.activation_counts)
    assert compiled_model.act.count == eager_model.act.count == 4


def test_the_cuda_gather_gives_the_published_gather_and_checks_the_targets():
    """The gather the drop-in uses on CUDA (one host synchronisation carrying
    both the size and the targets check), run here on CPU tensors."""
    from aiec.torch import _gather_checking_targets

    m = AIEC(5, 3, update_interval=1, global_pool="none")
    g = torch.Generator().manual_seed(9)
    values = torch.randn(4, 5, generator=g)
    masks = torch.rand(4, 5, generator=g) > 0.5
    t = torch.tensor([0, 2, 1, 1])
    valid = (t >= 0) & (t < 3)
    assert torch.equal(_gather_checking_targets(m, values, masks, t, valid), values[masks])
    none = torch.zeros(4, 5, dtype=torch.bool)
    assert _gather_checking_targets(m, values, none, t, valid).numel() == 0
    bad = torch.tensor([0, 2, 5, -1])
    m.count = 3
    with pytest.raises(ValueError, match="target 2 is 5, outside 0..3"):
        _gather_checking_targets(m, values, masks, bad, (bad >= 0) & (bad < 3))
    assert m.count == 3, "the gather moves no step (a forward commits its step after it)"
