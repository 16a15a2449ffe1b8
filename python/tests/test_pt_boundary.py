"""The extension's boundary under hostile but honest use: every entry point of
``aiec._aiec`` takes the tensors themselves and checks each one's element
type, device, contiguity, alignment, length and overlap before anything runs.

A valid call of every entry point is built (on the CPU reference in float32 and
float64, and through the simulator in float32, float16 and bfloat16), then one
of its tensors is replaced by a wrong one (another element type, a strided
view, one value more or less, another device, not a tensor, a temporary that
nothing else holds, memory shared with another buffer): the call must raise a
``TypeError`` or ``ValueError`` naming the buffer, and no buffer may change.
Before, the extension took ``(data_ptr, numel)`` pairs and read float64 as
float32, an int32 counter as int64, and a freed temporary's memory."""

from __future__ import annotations

import gc
import random

import pytest
import torch

import aiec
from aiec import _aiec, _ops

B, T, C, K = 3, 4, 6, 5
POOL = "token"

BACKENDS = [
    pytest.param("reference", torch.float64, id="reference-f64"),
    pytest.param("reference", torch.float32, id="reference-f32"),
    pytest.param("sim", torch.float32, id="sim-f32"),
    pytest.param("sim", torch.float16, id="sim-f16"),
    pytest.param("sim", torch.bfloat16, id="sim-bf16"),
]


def valid_calls(dtype):
    """Every entry point with valid arguments: ``name -> (function, args, written)``
    where ``written`` are the positions (paths into nested tuples) of the
    buffers the call writes, the others it only reads."""
    g = torch.Generator().manual_seed(0)
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    cfg = _ops.config(C, K, 0.0, POOL, 2)
    plan = cfg.plan([B, T, C])
    kw, scratch = plan.keep_words, plan.scratch_bytes
    x = torch.randn(B, T, C, generator=g).to(dtype)
    be = _ops.backend(x)
    w = torch.randn(K, C, generator=g).to(sd)
    t = torch.tensor([0, 4, 2])
    act = torch.zeros(K, C, dtype=torch.int64)
    inh = torch.zeros(K, C, dtype=torch.int64)
    total = torch.ones(K, dtype=torch.int64)
    step = torch.tensor(2)
    y, keep = torch.empty_like(x), torch.empty(kw, dtype=torch.int32)
    v = torch.empty(B, C, dtype=sd)
    logits, ce, gg = torch.empty(B, K, dtype=sd), torch.empty(B, dtype=sd), torch.empty(B, K, dtype=sd)
    mask, stats = torch.empty(B, C, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    scr = torch.zeros(scratch, dtype=torch.uint8)
    dy, dx, dw = torch.randn(B, T, C, generator=g).to(dtype), torch.empty_like(x), torch.empty(K, C, dtype=sd)
    scales = torch.zeros(8, dtype=sd)
    dv_scratch = torch.empty(B * C if be.kind != "reference" else 0, dtype=torch.float32)
    return be, {
        "fwd_x": (_aiec.fwd_x, [be, cfg, x, y, keep, v], [(3,), (4,), (5,)]),
        "bwd_x": (_aiec.bwd_x, [be, cfg, keep, v, dy, dx], [(5,)]),
        "fwd_x_logits": (
            _aiec.fwd_x_logits,
            [be, cfg, x, w, t, False, (act, inh, total), False, step, (y, keep, v, logits, ce, gg), scr],
            [(6, 0), (6, 1), (6, 2), (9, 0), (9, 1), (9, 2), (9, 3), (9, 4), (9, 5)],
        ),
        "fwd_gate": (
            _aiec.fwd_gate,
            [be, cfg, [B, T, C], v.zero_(), w, t, act, inh, mask, stats, scr],
            [(8,), (9,)],
        ),
        "backward_train": (
            _aiec.backward_train,
            [
                be,
                cfg,
                (keep.zero_(), v, gg.zero_(), mask.zero_()),
                w,
                ce.zero_(),
                scales,
                dy,
                dx,
                dw,
                dv_scratch,
                False,
            ],
            [(8,), (9,)],
        ),
    }


def leaves(args, prefix=()):
    """Paths of every tensor among the arguments (nested tuples included)."""
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            yield prefix + (i,)
        elif isinstance(a, tuple):
            yield from leaves(a, prefix + (i,))


def get(args, path):
    for i in path:
        args = args[i]
    return args


def put(args, path, value):
    if len(path) == 1:
        out = list(args)
        out[path[0]] = value
        return out if isinstance(args, list) else tuple(out)
    out = list(args)
    out[path[0]] = put(args[path[0]], path[1:], value)
    return out if isinstance(args, list) else tuple(out)


WRONG_TYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8]


def mutations(t, others, rng):
    """Wrong replacements for ``t``: (label, value or a function making it)."""
    out = []
    for dt in WRONG_TYPES + [torch.bool, torch.complex64]:
        if dt != t.dtype:
            out.append((f"as {dt}", lambda dt=dt: t.to(dt)))
    if t.numel() > 1:
        out.append(("strided", lambda: torch.empty(t.numel() * 2, dtype=t.dtype)[::2].copy_(t.reshape(-1))))
    out.append(("one value less", lambda: t.reshape(-1)[:-1].clone() if t.numel() else torch.ones(1, dtype=t.dtype)))
    out.append(
        (
            "one value more",
            lambda: torch.cat(
                [t.reshape(-1), t.reshape(-1)[:1].clone() if t.numel() else torch.zeros(1, dtype=t.dtype)]
            ),
        )
    )
    out.append(("on meta", lambda: t.to("meta")))
    out.append(("not a tensor", lambda: rng.choice([3, 2.5, "x", [1, 2], (t.data_ptr(), t.numel())])))
    if t.numel() > 0:
        big = [o for o in others if o.numel() * o.element_size() >= t.numel() * t.element_size() and o is not t]
        if big:
            o = rng.choice(big)
            out.append(
                (
                    "shares memory",
                    lambda o=o: o.reshape(-1).view(torch.uint8)[: t.numel() * t.element_size()].view(t.dtype),
                )
            )
    return out


def _bytes(t):
    return None if t.device.type == "meta" else t.detach().contiguous().clone().reshape(-1).view(torch.uint8)


def snapshot(args):
    return [_bytes(get(args, p)) for p in leaves(args)]


def unchanged(before, args):
    return all(a is None or torch.equal(a, _bytes(get(args, p))) for a, p in zip(before, leaves(args)))


@pytest.mark.parametrize("backend,dtype", BACKENDS)
def test_every_entry_point_accepts_its_valid_call(use_backend, backend, dtype):
    use_backend(backend)
    _, calls = valid_calls(dtype)
    for fn, args, _ in calls.values():
        fn(*args)  # the baseline the mutations below break


@pytest.mark.parametrize("backend,dtype", BACKENDS)
def test_random_wrong_buffers_raise_and_change_nothing(use_backend, backend, dtype):
    """Property test: 150 seeded mutations per backend and type."""
    use_backend(backend)
    rng = random.Random(f"{backend}-{dtype}")
    tried = set()
    for _ in range(150):
        be, calls = valid_calls(dtype)
        name = rng.choice(sorted(calls))
        fn, args, _ = calls[name]
        paths = list(leaves(args))
        path = rng.choice(paths)
        t = get(args, path)
        others = [get(args, p) for p in paths]
        label, make = rng.choice(mutations(t, others, rng))
        if label == "shares memory" and path not in calls[name][2]:
            continue  # two read-only buffers may share memory
        bad = make()
        args = put(args, path, bad)
        before = snapshot(args)
        try:
            fn(*args)
        except (TypeError, ValueError) as e:
            err = e
        else:
            raise AssertionError(f"{name}: {label} at {path} was accepted")
        assert "aiec:" in str(err), f"{name} {path} {label}: {err}"
        assert unchanged(before, args), f"{name}: buffers changed by the call refused for {path} {label}"
        tried.add((name, label))
    assert len(tried) > 40, f"the mutations covered too little: {sorted(tried)}"


def test_a_float32_module_fed_float64_on_the_fused_path_computes_in_float64(use_backend):
    """Before: W and dW read and written as float64 (aux 1e257, then munmap_chunk)."""
    use_backend("reference")
    from aiec.torch import AIECFused, losses

    torch.manual_seed(0)
    f = AIECFused(64, num_classes=10, global_pool="none", update_interval=1)
    f64 = AIECFused(64, num_classes=10, global_pool="none", update_interval=1).double()
    with torch.no_grad():
        f64.decision_weights.copy_(f.decision_weights)
    x = torch.randn(16, 64, dtype=torch.float64)
    t = torch.randint(0, 10, (16,))
    for m in (f, f64):
        y = m(x, t)
        (losses([m])[0] + y.sum()).backward()
    _, aux, gate = losses([f])
    _, aux64, gate64 = losses([f64])
    assert torch.equal(aux, aux64) and torch.equal(gate, gate64)
    assert f.decision_weights.grad.dtype == torch.float32
    assert torch.equal(f.decision_weights.grad, f64.decision_weights.grad.float())


@pytest.mark.parametrize("backend", ["reference", "sim"])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_a_module_cast_to_half_runs_on_both_backends(use_backend, backend, half):
    """Before: ``.half()`` aborted on both backends, bf16 on the simulator gave garbage."""
    from aiec.torch import AIECFused, losses

    torch.manual_seed(1)
    ref = AIECFused(16, 4, global_pool="avg_token", update_interval=1)
    m = AIECFused(16, 4, global_pool="avg_token", update_interval=1).to(half)
    with torch.no_grad():
        ref.decision_weights.copy_(m.decision_weights.float())
    x = torch.randn(5, 3, 16).to(half)
    t = torch.tensor([0, 1, 2, 3, 1])
    use_backend("reference")
    ref(x.float(), t)
    use_backend(backend)
    m(x, t)
    _, aux, gate = losses([m])
    _, aux_ref, gate_ref = losses([ref])
    assert torch.isfinite(aux) and abs(aux.item() - aux_ref.item()) <= 1e-5 * abs(aux_ref.item())
    assert abs(gate.item() - gate_ref.item()) <= 1e-5 * max(abs(gate_ref.item()), 1e-6)
    assert torch.equal(m.counters.activation_counts, ref.counters.activation_counts)


@pytest.mark.parametrize("backend", ["reference", "sim"])
def test_an_int32_counter_swapped_in_is_refused(use_backend, backend):
    from aiec.torch import AIECFused

    use_backend(backend)
    f = AIECFused(8, 3, global_pool="none", update_interval=1)
    f.counters.total_counts = torch.ones(3, dtype=torch.int32)
    act = f.counters.activation_counts.clone()
    with pytest.raises(TypeError, match="total_counts must be int64, got int32"):
        f(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    assert f.count == 0 and torch.equal(f.counters.activation_counts, act)
    assert torch.equal(f.counters.total_counts, torch.ones(3, dtype=torch.int32))


@pytest.mark.parametrize("backend", ["reference", "sim"])
@pytest.mark.parametrize("cls", ["AIEC", "AIECFused"])
def test_strided_and_expanded_targets_are_read_while_they_live(use_backend, backend, cls):
    """Before: ``targets.contiguous().data_ptr()`` was passed and the copy freed
    before Rust read it: 'target 0 is 23024425853', or a segfault."""
    from aiec.torch import AIEC, AIECFused

    use_backend(backend)
    make = AIEC if cls == "AIEC" else AIECFused
    cases = [torch.randint(0, 10, (8, 2), generator=torch.Generator().manual_seed(2))[:, 0], torch.tensor(3).expand(8)]
    for targets in cases:
        assert not targets.is_contiguous()
        torch.manual_seed(4)
        a, b = make(6, 10, global_pool="none", update_interval=1), make(6, 10, global_pool="none", update_interval=1)
        b.load_state_dict(a.state_dict())
        x = torch.randn(8, 6)
        ya = a(x, targets, [], []) if cls == "AIEC" else a(x, targets)
        gc.collect()
        yb = b(x, targets.contiguous().clone(), [], []) if cls == "AIEC" else b(x, targets.contiguous().clone())
        assert torch.equal(ya, yb)
        assert torch.equal(a.counters.total_counts, b.counters.total_counts)


@pytest.mark.parametrize("backend", ["reference", "sim"])
def test_a_non_contiguous_w_after_assign_is_read_as_its_values(use_backend, backend):
    """Before: ``_buf(w.contiguous())`` inline freed the copy (aux 1.5e32)."""
    from aiec.torch import AIECFused, losses

    use_backend(backend)
    torch.manual_seed(5)
    a = AIECFused(6, 4, global_pool="none", update_interval=1)
    b = AIECFused(6, 4, global_pool="none", update_interval=1)
    wt = a.decision_weights.detach().t().contiguous().t()  # [K, C] with strides (1, K)
    assert not wt.is_contiguous()
    b.load_state_dict({"decision_weights": wt, "tau.tau": a.tau.tau}, strict=False, assign=True)
    assert not b.decision_weights.is_contiguous()
    x, t = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    for m in (a, b):
        y = m(x, t)
        (losses([m])[0] + y.sum()).backward()
    assert torch.equal(losses([a])[1], losses([b])[1])
    assert torch.equal(a.decision_weights.grad, b.decision_weights.grad)


def test_check_targets_takes_a_tensor_and_refuses_an_address():
    cfg = aiec.Config(4, 3, 0.0, "none", 1)
    t = torch.tensor([0, 2])
    cfg.check_targets(t, 2)
    with pytest.raises(TypeError, match="targets must be a torch.Tensor"):
        cfg.check_targets((t.data_ptr(), t.numel()), 2)
    with pytest.raises(TypeError, match="targets must be int64, got int32"):
        cfg.check_targets(t.int(), 2)
