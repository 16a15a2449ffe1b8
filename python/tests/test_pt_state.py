"""The modules' state under what real training does to them: activation
checkpointing, rejected calls (eager and under ``torch.compile``), copies,
checkpoints with another ``tau``, targets of other integer types, and bad
constructor arguments. Each test failed before its change (said in its
docstring)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from aiec.torch import AIEC, AIECFused, gate_loss, losses
from conftest import assert_equal


def state(m):
    c = m.counters
    return (
        m.decision_weights.detach().clone(),
        c.activation_counts.clone(),
        c.inhibition_counts.clone(),
        c.total_counts.clone(),
        m.count,
    )


def same_state(a, b):
    return all(torch.equal(x, y) for x, y in zip(a[:4], b[:4])) and a[4] == b[4]


class Mlp(nn.Module):
    """Linear -> AIEC -> Linear, the block checkpointed in the tests."""

    def __init__(self, cls, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(6, 8)
        self.act = cls(8, 3, update_interval=2, global_pool="none")
        self.fc2 = nn.Linear(8, 3)

    def block(self, x, t, logits, irrel):
        h = self.fc1(x)
        y = self.act(h, t, logits, irrel) if isinstance(self.act, AIEC) else self.act(h, t)
        return self.fc2(y)


def train(cls, ckpt, aux=True, steps=6):
    """Steps of SGD; ``ckpt``: None, or checkpoint's ``use_reentrant``;
    ``aux``: the AIEC losses in the loss."""
    m = Mlp(cls).double()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    seen = []
    for _ in range(steps):
        x = torch.randn(10, 6, generator=g, dtype=torch.float64).requires_grad_(True)
        t = torch.randint(0, 3, (10,), generator=g)
        logits, irrel = [], []
        if ckpt is None:
            out = m.block(x, t, logits, irrel)
        else:
            out = checkpoint(m.block, x, t, logits, irrel, use_reentrant=ckpt)
        loss = nn.functional.cross_entropy(out, t)
        if not aux:
            pass
        elif cls is AIEC:
            loss = loss + nn.functional.cross_entropy(logits[0], t) + 200 * gate_loss(irrel[:1])
        else:
            loss = loss + losses([m.act])[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append((state(m.act), m.fc1.weight.detach().clone()))
    return seen


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("cls", [AIEC, AIECFused], ids=["AIEC", "AIECFused"])
def test_activation_checkpointing_counts_once_and_gives_the_same_training(use_backend, cls, reentrant):
    """Before: the recomputed forward stepped and counted again (the drop-in's
    count went up by 2 a step and step 4 crashed on a shape mismatch; the fused
    path's gradients diverged silently)."""
    use_backend("reference")
    # The reentrant checkpoint runs the first forward without grad: what the
    # layer hands out beside its output (the logits and masked values, ``last``)
    # carries no gradient there, for the published module as for this one. Its
    # comparison trains on the task loss alone.
    plain = train(cls, None, aux=not reentrant)
    ckpt = train(cls, reentrant, aux=not reentrant)
    for step, ((s1, w1), (s2, w2)) in enumerate(zip(plain, ckpt)):
        assert s2[4] == s1[4] == step + 1, f"step {step}: count {s2[4]}, want {step + 1}"
        for name, a, b in zip(["W", "act", "inh", "total"], s2, s1):
            assert torch.equal(a, b), f"step {step}: {name}"
        assert torch.equal(w2, w1), f"step {step}: fc1"
    assert int(plain[-1][0][3].sum()) > 3, "nothing was counted"


@pytest.mark.parametrize("cls", [AIEC, AIECFused], ids=["AIEC", "AIECFused"])
def test_a_rejected_step_under_compile_changes_nothing(use_backend, cls):
    """Before: under torch.compile(fullgraph=True) each failed call of an
    AIECFused moved ``count`` (inductor ordered the counter's update before the
    op that raised)."""
    use_backend("reference")
    torch._dynamo.reset()
    f = cls(6, 4, update_interval=1, global_pool="none")
    step = torch.compile((lambda x, t: f(x, t, [], [])) if cls is AIEC else (lambda x, t: f(x, t)), fullgraph=True)
    x = torch.randn(3, 6)
    step(x, torch.tensor([0, 1, 3]))
    before = state(f)
    for _ in range(2):
        with pytest.raises(Exception, match="outside 0.."):
            step(x, torch.tensor([0, 9, 1]))
        assert same_state(state(f), before), f"count {f.count}, want {before[4]}"
    step(x, torch.tensor([0, 1, 2]))
    assert f.count == before[4] + 1


@pytest.mark.parametrize("cls", [AIEC, AIECFused], ids=["AIEC", "AIECFused"])
def test_a_channel_mismatch_under_compile_names_the_channels(use_backend, cls):
    """Before: a Dynamo ``Unsupported`` about a matmul, not our message."""
    use_backend("reference")
    torch._dynamo.reset()
    m = cls(6, 4, update_interval=1, global_pool="none")
    if cls is AIEC:
        fn = torch.compile(lambda x, t: m(x, t, [], []), fullgraph=True)
    else:
        fn = torch.compile(lambda x, t: m(x, t), fullgraph=True)
    before = state(m)
    with pytest.raises(Exception, match="channels") as err:
        fn(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    assert "aiec:" in str(err.value)
    assert same_state(state(m), before)


def test_a_tuple_for_the_values_list_is_refused_before_counting(use_backend):
    """Before: ``m(x, t, [], ())`` raised AttributeError after the counters changed."""
    use_backend("reference")
    m = AIEC(6, 4, update_interval=1, global_pool="none")
    before = state(m)
    logits = []
    with pytest.raises(TypeError, match="must be lists"):
        m(torch.randn(3, 6), torch.tensor([0, 1, 2]), logits, ())
    assert same_state(state(m), before) and logits == []


@pytest.mark.parametrize("cls", [AIEC, AIECFused], ids=["AIEC", "AIECFused"])
def test_a_bad_target_changes_nothing_not_even_the_lists(use_backend, cls):
    use_backend("reference")
    m = cls(6, 4, update_interval=1, global_pool="none")
    before = state(m)
    logits, irrel = [], []
    with pytest.raises(ValueError, match="outside 0..4"):
        if cls is AIEC:
            m(torch.randn(3, 6), torch.tensor([0, 7, 2]), logits, irrel)
        else:
            m(torch.randn(3, 6), torch.tensor([0, 7, 2]))
    assert same_state(state(m), before) and logits == [] and irrel == []


@pytest.mark.parametrize("cls", [AIEC, AIECFused], ids=["AIEC", "AIECFused"])
def test_deepcopy_and_pickle_after_a_training_forward(use_backend, cls):
    """Before: ``copy.deepcopy`` of an AIECFused after a training forward (an EMA
    copy) raised: ``last`` held graph tensors."""
    use_backend("reference")
    m = cls(6, 4, update_interval=1, global_pool="none")
    x = torch.randn(3, 6, requires_grad=True)
    if cls is AIEC:
        m(x, torch.tensor([0, 1, 2]), [], [])
    else:
        m(x, torch.tensor([0, 1, 2]))
        assert m.last is not None
    ema = copy.deepcopy(m)
    assert same_state(state(ema), state(m))
    if cls is AIECFused:
        assert ema.last is None and m.last is not None
    again = pickle.loads(pickle.dumps(m))
    assert same_state(state(again), state(m))


@pytest.mark.parametrize("cls", [AIEC, AIECFused], ids=["AIEC", "AIECFused"])
def test_tau_loaded_from_a_checkpoint_is_the_threshold(use_backend, cls):
    """Before: ``load_state_dict`` wrote ``tau.tau`` but the module kept the
    float it was built with: [0.2, 0.6, 0, 0.5] instead of [0, 0.6, 0, 0]."""
    use_backend("reference")
    trained = cls(1, 2, tau=0.5, global_pool="none")
    fresh = cls(1, 2, tau=0, global_pool="none")
    fresh.load_state_dict(trained.state_dict())
    x = torch.tensor([0.2, 0.6, -1.0, 0.5]).reshape(4, 1)
    assert fresh(x).reshape(-1).tolist() == [0.0, pytest.approx(0.6), 0.0, 0.0]
    assert fresh.tau(x).reshape(-1).tolist() == [0.0, pytest.approx(0.6), 0.0, 0.0]
    # Written in place: the next forward uses it too.
    with torch.no_grad():
        fresh.tau.tau.fill_(0.0)
    assert fresh(x).reshape(-1).tolist() == [pytest.approx(0.2), pytest.approx(0.6), 0.0, 0.5]
    # A model cast to float64 keeps the exact tau it was built with (its buffer's
    # float32 rounding is not a new value): 0.7 stays 0.7, not 0.699999988.
    m = cls(1, 2, tau=0.7, global_pool="none").double()
    assert m(torch.tensor([[0.7]], dtype=torch.float64)).item() == 0.0


def test_tau_is_read_without_recompiling(use_backend):
    use_backend("reference")
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    m = AIEC(4, 2, tau=0.25, global_pool="none")
    counter = CompileCounter()
    fn = torch.compile(lambda x: m(x), backend=counter, fullgraph=True)
    x = torch.tensor([[0.2, 0.3, -1.0, 0.25]])
    for _ in range(3):
        assert fn(x).tolist() == [[0.0, pytest.approx(0.3), 0.0, 0.0]]
    assert counter.frame_count == 1


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
@pytest.mark.parametrize("cls", [AIEC, AIECFused], ids=["AIEC", "AIECFused"])
def test_targets_of_any_integer_type(use_backend, cls, dtype):
    """Before: int32 targets raised a TypeError; the published module takes them."""
    use_backend("reference")
    torch.manual_seed(2)
    a = cls(6, 4, update_interval=1, global_pool="none")
    b = copy.deepcopy(a)
    x, t = torch.randn(5, 6), torch.tensor([0, 1, 3, 2, 1])
    for m, tt in ((a, t), (b, t.to(dtype))):
        if cls is AIEC:
            m(x, tt, [], [])
        else:
            m(x, tt)
    assert_equal("act", b.counters.activation_counts, a.counters.activation_counts)
    for bad in (t.float(), t > 0):
        with pytest.raises(TypeError, match="integer type"):
            b(x, bad, [], []) if cls is AIEC else b(x, bad)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_features=-1), "num_features must be an integer >= 1, got -1"),
        (dict(num_features=0), "num_features must be an integer >= 1"),
        (dict(num_classes=0), "num_classes must be an integer >= 1"),
        (dict(num_features=6.0), "num_features must be an integer"),
        (dict(update_interval=2.5), "update_interval must be an integer >= 1, got 2.5"),
        (dict(update_interval=0), "update_interval must be an integer >= 1"),
        (dict(tau=1e39), "tau must be finite"),
        (dict(tau=float("inf")), "tau must be finite"),
        (dict(tau=-0.5), "tau must be finite"),
    ],
)
@pytest.mark.parametrize("cls", [AIEC, AIECFused], ids=["AIEC", "AIECFused"])
def test_bad_constructor_arguments_raise_our_error(cls, kwargs, match):
    """Before: ``AIEC(-1)`` reached torch's own error, ``tau=1e39`` (infinite in
    float32) was accepted, ``update_interval=2.5`` silently truncated."""
    args = dict(num_features=6, num_classes=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cls(**args)


def test_losses_over_layers_of_different_batches_are_refused(use_backend):
    """Before: the aux mean was taken over the rows of both, silently."""
    use_backend("reference")
    f1 = AIECFused(6, 4, global_pool="none")
    f2 = AIECFused(6, 4, global_pool="none")
    f1(torch.randn(3, 6), torch.tensor([0, 1, 2]))
    f2(torch.randn(2, 6), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"different batches \(B = \[3, 2\]\)"):
        losses([f1, f2])
