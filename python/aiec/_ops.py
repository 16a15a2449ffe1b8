"""The crate's kernels as PyTorch custom operators (``torch.library``).

Each op allocates its outputs with PyTorch (on CUDA from its caching allocator),
passes the tensors themselves to the Rust extension ``aiec._aiec`` (which checks
each one's element type, device, contiguity, alignment and length before
anything runs, and holds it for the call), and launches on
``torch.cuda.current_stream()``: zero copy, no synchronisation. On CPU tensors
the same ops run the crate's CPU reference (float32, float64; float16 and
bfloat16 are computed in float32 and returned in their own type, as the kernels
do), or with ``AIEC_TORCH_BACKEND=sim`` the CUDA kernels in the crate's
simulator (float32, float16, bfloat16). Every op has a fake (meta)
implementation and the differentiable ones an autograd formula, so
``torch.compile(fullgraph=True)`` traces through them.

Ops (all in the namespace ``aiec``, ``NAMESPACE``; a name changes only when its
schema does, so a program exported with ``torch.export`` loads with later builds):

* ``threshold(x, tau, pool, channels) -> (y, keep)``: the threshold and its
  keep bits (one bit per element), for forwards without targets;
* ``activation(x, tau, pool, channels) -> (y, keep, v)``: the same pass over
  ``x`` also pools ``v [B, C]``; backward: ``activation_backward``, one pass over
  ``dy`` that adds the pooled gradient;
* ``fused_count(x, w, targets, act!, inh!, total!, step!, ...)`` and
  ``fused_gate(v, w, targets, act, inh, ...)``: the training forward of
  the fused kernels (threshold, pooling, logits, per-row cross-entropy, counting;
  then the gate), the first mutating the counters; :class:`Fused` ties them into
  one autograd node (with, for data-parallel training, the exchange of the
  counts between them); backward: ``fused_backward`` (``dx`` and ``dW``; ``dv``
  never leaves the device);
* ``masked_gather(values, masks) -> values[masks]``: the published module's
  boolean gather, whose fake has a data-dependent size, so ``torch.compile``
  traces it without a graph break.

An evaluation forward without targets needs none of them: it is the threshold
as ATen ops (:func:`threshold_aten`), which exporters translate and
TorchInductor fuses with its neighbours.

What is saved for backward: the keep bits and ``O(B*C + B*K)`` (``v``, ``g``,
``mask``), never ``x``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import torch
from torch import Tensor

from . import _aiec

NAMESPACE = "aiec"


def build_digest() -> str:
    """12 hex digits of SHA-256 over the package version and this file, which
    holds every fake implementation."""
    h = hashlib.sha256(_aiec.__version__.encode())
    try:
        with open(__file__, "rb") as f:
            h.update(f.read())
    except OSError:  # no source beside the bytecode: the version alone
        pass
    return h.hexdigest()[:12]


BUILD = build_digest()


def _tag_compile_caches() -> None:
    """Adds ``aiec-<BUILD>`` to ``torch.compiler.config.cache_key_tag``, which
    every on-disk cache of ``torch.compile`` (TorchInductor's FX graphs,
    AOTAutograd's) puts in its keys. Those keys name each custom op but not the
    output sizes its fake gives (PyTorch issue 160472): a graph compiled with
    an older build's fakes would be reused with that build's sizes, and its size
    asserts then fail. With the tag, another build compiles anew and the same
    build hits. A tag the user set is kept (ours is appended). The price: the
    graphs of a process that imports aiec, its ops or not, are cached apart from
    those of another aiec build."""
    config = getattr(torch.compiler, "config", None)
    if config is None or not hasattr(config, "cache_key_tag"):
        return  # torch < 2.6: no tag (and no protection)
    tag = f"aiec-{BUILD}"
    current = config.cache_key_tag
    if tag not in current.split(","):
        config.cache_key_tag = f"{current},{tag}" if current else tag


_tag_compile_caches()

POOLS = ("token", "avg_token", "avg_hw", "none")

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def dtype_name(dt: torch.dtype) -> str:
    try:
        return _DTYPE_NAMES[dt]
    except KeyError:
        raise TypeError(
            f"aiec: activations of type {dt} are not supported "
            "(float32, float16, bfloat16; float64 on the CPU reference)"
        ) from None


def stat_dtype(dt: torch.dtype) -> torch.dtype:
    """The type of ``v``, the logits and every sum: float64 for float64 inputs
    (the CPU reference), else float32."""
    return torch.float64 if dt == torch.float64 else torch.float32


def _scratch(plan: _aiec.Plan, device: torch.device) -> Tensor:
    """The forward's scratch for ``plan``: its first ``scratch_zero_bytes`` zero (the
    tickets, a few KB), the rest (the split logits' slices, up to about 5 MiB) left
    as it comes."""
    scratch = torch.empty(plan.scratch_bytes, dtype=torch.uint8, device=device)
    scratch[: plan.scratch_zero_bytes].zero_()
    return scratch


_CONFIGS: dict = {}


def config(channels: int, classes: int, tau: float, pool: str, interval: int) -> _aiec.Config:
    key = (channels, classes, float(tau), pool, interval)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg = _aiec.Config(channels, classes, float(tau), pool, interval)
        _CONFIGS[key] = cfg
    return cfg


_BACKENDS: dict = {}


def backend(t: Tensor) -> _aiec.Backend:
    """Where an op on ``t`` runs: CUDA on PyTorch's current stream of ``t``'s
    device; on CPU tensors the reference, or the simulator with
    ``AIEC_TORCH_BACKEND=sim``."""
    if t.device.type == "cuda":
        index = t.device.index if t.device.index is not None else torch.cuda.current_device()
        stream = torch.cuda.current_stream(t.device).cuda_stream
        key = ("cuda", index, stream)
        b = _BACKENDS.get(key)
        if b is None:
            b = _aiec.Backend.cuda(index, stream)
            _BACKENDS[key] = b
        return b
    if t.device.type == "cpu":
        kind = os.environ.get("AIEC_TORCH_BACKEND", "reference")
        if kind not in ("reference", "sim"):
            raise ValueError(f"aiec: AIEC_TORCH_BACKEND={kind!r}; expected 'reference' or 'sim'")
        b = _BACKENDS.get(kind)
        if b is None:
            b = _aiec.Backend.sim() if kind == "sim" else _aiec.Backend.reference()
            _BACKENDS[kind] = b
        return b
    raise TypeError(f"aiec: tensors on {t.device} are not supported (CPU or CUDA)")


def threshold_aten(x: Tensor, tau: float) -> Tensor:
    """The threshold as ATen ops, ``y = x`` where ``x > tau`` (a NaN passes),
    else 0, compared in float32 for float16 and bfloat16 as the kernels compare:
    the same values as the ``threshold`` op, and the same gradient through
    autograd, with nothing custom in the graph (for export and inference)."""
    xc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return torch.where(xc <= tau, torch.zeros((), dtype=x.dtype, device=x.device), x)


def _compute(x: Tensor) -> Tensor:
    """``x`` in the type the backend computes it in: float16 and bfloat16 CPU
    tensors in float32 on the CPU reference (the kernels read them as they
    are and compute in float32 too); contiguous."""
    if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu" and backend(x).kind == "reference":
        x = x.float()
    return x.contiguous()


def targets_int64(targets: Tensor) -> Tensor:
    """Targets of any integer type as contiguous int64 (the published module
    indexes with any); floats and booleans are a ``TypeError``."""
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"aiec: targets must be class indices of an integer type, got {targets.dtype}")
    return targets.to(torch.int64).contiguous()


def check_shape(shape, pool: str, channels: int, classes: int = 1, tau: float = 0.0) -> None:
    """The crate's check of an input shape against the pooling mode and ``C``,
    also where shapes may be symbolic (fakes, ``torch.compile``): a symbolic
    size is taken as ``C`` in the channel position and 1 elsewhere, so the rank
    and a static ``C`` are still checked."""
    dims = list(shape)
    ci = 1 if pool == "avg_hw" else len(dims) - 1
    concrete = [d if isinstance(d, int) else (channels if i == ci else 1) for i, d in enumerate(dims)]
    config(channels, classes, tau, pool, 1).plan(concrete)


def channels_of(shape, pool: str) -> int:
    return shape[1] if pool == "avg_hw" else shape[-1]


def batch_of(shape) -> int:
    return shape[0]


def keep_words(shape, pool: str):
    """Words of keep bits for an input of ``shape`` (mirrors the crate's
    ``layout::keep_words``, which ``_aiec.Config.plan`` returns; used by the fake
    implementations, where shapes may be symbolic; a test holds the two equal).
    The bits go row by row, every row from a 32-bit word: ``avg_hw`` ``[B, C, H, W]``
    has ``B*C`` rows of ``H*W`` positions, the other modes the rows of ``C``
    channels (the last dimension)."""
    if pool == "avg_hw":
        rows, row_len = shape[0] * shape[1], 1
        for d in shape[2:]:
            row_len = row_len * d
    else:
        row_len, rows = shape[-1], 1
        for d in shape[:-1]:
            rows = rows * d
    return rows * ((row_len + 31) // 32)


def _zeros_if_none(t: Optional[Tensor], shape, dtype, device) -> Tensor:
    return torch.zeros(shape, dtype=dtype, device=device) if t is None else t


# ------------------------------------------------------------------ threshold and activation pass


@torch.library.custom_op(f"{NAMESPACE}::threshold", mutates_args=())
def threshold(x: Tensor, tau: float, pool: str, channels: int) -> tuple[Tensor, Tensor]:
    dtype = x.dtype
    x = _compute(x)
    cfg = config(channels, 1, tau, pool, 1)
    plan = cfg.plan(list(x.shape))
    y = torch.empty_like(x)
    keep = torch.empty(plan.keep_words, dtype=torch.int32, device=x.device)
    _aiec.fwd_x(backend(x), cfg, x, y, keep, None)
    return y.to(dtype), keep


@threshold.register_fake
def _(x, tau, pool, channels):
    check_shape(x.shape, pool, channels, tau=tau)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty((keep_words(x.shape, pool),), dtype=torch.int32),
    )


@torch.library.custom_op(f"{NAMESPACE}::activation", mutates_args=())
def activation(x: Tensor, tau: float, pool: str, channels: int) -> tuple[Tensor, Tensor, Tensor]:
    dtype = x.dtype
    x = _compute(x)
    cfg = config(channels, 1, tau, pool, 1)
    plan = cfg.plan(list(x.shape))
    y = torch.empty_like(x)
    keep = torch.empty(plan.keep_words, dtype=torch.int32, device=x.device)
    v = torch.empty((plan.batch, plan.channels), dtype=stat_dtype(x.dtype), device=x.device)
    _aiec.fwd_x(backend(x), cfg, x, y, keep, v)
    return y.to(dtype), keep, v


@activation.register_fake
def _(x, tau, pool, channels):
    check_shape(x.shape, pool, channels, tau=tau)
    b, c = batch_of(x.shape), channels_of(x.shape, pool)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty((keep_words(x.shape, pool),), dtype=torch.int32),
        x.new_empty((b, c), dtype=stat_dtype(x.dtype)),
    )


@torch.library.custom_op(f"{NAMESPACE}::activation_backward", mutates_args=())
def activation_backward(dy: Tensor, keep: Tensor, dv: Optional[Tensor], tau: float, pool: str, channels: int) -> Tensor:
    dtype = dy.dtype
    dy = _compute(dy)
    cfg = config(channels, 1, tau, pool, 1)
    dx = torch.empty_like(dy)
    if dv is not None:
        dv = dv.to(stat_dtype(dy.dtype)).contiguous()
    _aiec.bwd_x(backend(dy), cfg, keep.contiguous(), dv, dy, dx)
    return dx.to(dtype)


@activation_backward.register_fake
def _(dy, keep, dv, tau, pool, channels):
    return torch.empty_like(dy, memory_format=torch.contiguous_format)


def _save_keep(ctx, inputs, output):
    x, tau, pool, channels = inputs
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.meta = (x.shape, x.dtype, tau, pool, channels)


def _threshold_backward(ctx, dy, _dkeep):
    (keep,) = ctx.saved_tensors
    shape, dtype, tau, pool, channels = ctx.meta
    dy = _zeros_if_none(dy, shape, dtype, keep.device)
    return activation_backward(dy, keep, None, tau, pool, channels), None, None, None


def _activation_backward(ctx, dy, _dkeep, dv):
    (keep,) = ctx.saved_tensors
    shape, dtype, tau, pool, channels = ctx.meta
    dy = _zeros_if_none(dy, shape, dtype, keep.device)
    return activation_backward(dy, keep, dv, tau, pool, channels), None, None, None


threshold.register_autograd(_threshold_backward, setup_context=_save_keep)
activation.register_autograd(_activation_backward, setup_context=_save_keep)


# ------------------------------------------------------------------ the masked gather


@torch.library.custom_op(f"{NAMESPACE}::masked_gather", mutates_args=())
def masked_gather(values: Tensor, masks: Tensor) -> Tensor:
    """``values[masks]``: the masked values in row-major order."""
    return values[masks]


@masked_gather.register_fake
def _(values, masks):
    n = torch.library.get_ctx().new_dynamic_size()
    return values.new_empty((n,))


def _save_masks(ctx, inputs, output):
    values, masks = inputs
    ctx.save_for_backward(masks)
    ctx.shape_dtype = (values.shape, values.dtype)


def _masked_gather_backward(ctx, grad):
    (masks,) = ctx.saved_tensors
    shape, dtype = ctx.shape_dtype
    return torch.zeros(shape, dtype=dtype, device=masks.device).masked_scatter(masks, grad), None


masked_gather.register_autograd(_masked_gather_backward, setup_context=_save_masks)


# ------------------------------------------------------------------ the fused training forward


@torch.library.custom_op(f"{NAMESPACE}::fused_count", mutates_args=("act", "inh", "total", "step"))
def fused_count(
    x: Tensor,
    w: Tensor,
    targets: Tensor,
    act: Tensor,
    inh: Tensor,
    total: Tensor,
    step: Tensor,
    interval: int,
    count: bool,
    advance: bool,
    tau: float,
    pool: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Launches 1 to 3 of the fused forward: (y, keep, v, logits, ce, g).
    With ``advance`` (a training forward) the step counter ``step`` moves on
    by one, inside the op and only once it has succeeded (so that a rejected
    call leaves it, under ``torch.compile`` too, where a mutation outside the
    op could be ordered before it); with ``count`` the counters count on the
    steps where the new ``step % interval == 0`` (decided where ``step`` lives)."""
    dtype = x.dtype
    x = _compute(x)
    k, c = w.shape
    cfg = config(c, k, tau, pool, interval)
    plan = cfg.plan(list(x.shape))
    b, kw = plan.batch, plan.keep_words
    scratch = _scratch(plan, x.device)
    dev, sd = x.device, stat_dtype(x.dtype)
    y = torch.empty_like(x)
    keep = torch.empty(kw, dtype=torch.int32, device=dev)
    v = torch.empty((b, c), dtype=sd, device=dev)
    logits = torch.empty((b, k), dtype=sd, device=dev)
    ce = torch.empty((b,), dtype=sd, device=dev)
    g = torch.empty((b, k), dtype=sd, device=dev)
    targets = targets_int64(targets)
    on_device = dev.type == "cuda"
    if not on_device:
        cfg.check_targets(targets, b)
    nxt = step + 1 if advance else step
    _aiec.fwd_x_logits(
        backend(x),
        cfg,
        x,
        w.to(sd).contiguous(),
        targets,
        on_device,
        (act, inh, total),
        False,
        nxt if count else None,
        (y, keep, v, logits, ce, g),
        scratch,
    )
    if advance:
        step.copy_(nxt)
    return y.to(dtype), keep, v, logits, ce, g


@fused_count.register_fake
def _(x, w, targets, act, inh, total, step, interval, count, advance, tau, pool):
    k, c = w.shape
    check_shape(x.shape, pool, c, k, tau)
    b = batch_of(x.shape)
    sd = stat_dtype(x.dtype)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty((keep_words(x.shape, pool),), dtype=torch.int32),
        x.new_empty((b, c), dtype=sd),
        x.new_empty((b, k), dtype=sd),
        x.new_empty((b,), dtype=sd),
        x.new_empty((b, k), dtype=sd),
    )


@torch.library.custom_op(f"{NAMESPACE}::fused_gate", mutates_args=())
def fused_gate(
    v: Tensor, w: Tensor, targets: Tensor, act: Tensor, inh: Tensor, shape: list[int], tau: float, pool: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch 4: (mask, S, N) from the counters as they are now."""
    k, c = w.shape
    cfg = config(c, k, tau, pool, 1)
    b = v.shape[0]
    dev = v.device
    scratch = _scratch(cfg.plan(list(shape)), dev)
    mask = torch.empty((b, c), dtype=torch.uint8, device=dev)
    stats = torch.zeros(_aiec.GATE_STATS_SIZE // 8, dtype=torch.int64, device=dev)
    _aiec.fwd_gate(
        backend(v),
        cfg,
        list(shape),
        v,
        w.to(v.dtype).contiguous(),
        targets_int64(targets),
        act,
        inh,
        mask,
        stats,
        scratch,
    )
    s = stats.view(v.dtype)[_aiec.GATE_STATS_FIELDS["sum_sq"] // v.element_size()]
    return mask, s.clone(), stats[_aiec.GATE_STATS_FIELDS["count"] // 8].clone()


@fused_gate.register_fake
def _(v, w, targets, act, inh, shape, tau, pool):
    return (
        v.new_empty(v.shape, dtype=torch.uint8),
        v.new_empty((), dtype=v.dtype),
        v.new_empty((), dtype=torch.int64),
    )


def _gate_only_losses(gate_scale: Tensor) -> Tensor:
    """An ``AiecLosses`` whose one nonzero field is ``gate_scale`` (a 0-dim
    tensor): one value of its dtype per 4-byte word of the struct, each field
    at its byte offset / 4 (``_aiec.LOSSES_FIELDS``, from the crate's one
    definition); ``aux_scale`` stays 0, as ``row_scale`` replaces it."""
    words = _aiec.LOSSES_SIZE // 4
    at = _aiec.LOSSES_FIELDS["gate_scale"] // 4
    zeros = torch.zeros(words - 1, dtype=gate_scale.dtype, device=gate_scale.device)
    return torch.cat([zeros[:at], gate_scale.reshape(1), zeros[at:]])


@torch.library.custom_op(f"{NAMESPACE}::fused_backward", mutates_args=())
def fused_backward(
    dy: Tensor,
    keep: Tensor,
    v: Tensor,
    g: Tensor,
    mask: Tensor,
    w: Tensor,
    dce: Tensor,
    ds: Tensor,
    tau: float,
    pool: str,
) -> tuple[Tensor, Tensor]:
    """(dx, dW) of the fused forward, given the gradients of the loss with
    respect to ``y`` (``dy``), each row's CE (``dce``) and ``S`` (``ds``)."""
    dtype = dy.dtype
    dy = _compute(dy)
    k, c = w.shape
    cfg = config(c, k, tau, pool, 1)
    sd = stat_dtype(dy.dtype)
    dev = dy.device
    dx = torch.empty_like(dy)
    dw = torch.empty((k, c), dtype=sd, device=dev)
    row_scale = dce.to(sd).contiguous()
    scales = _gate_only_losses(2 * ds.to(sd))
    dv_scratch = torch.empty(backend(dy).dv_scratch_len(cfg, list(dy.shape)), dtype=torch.float32, device=dev)
    _aiec.backward_train(
        backend(dy),
        cfg,
        (keep, v, g, mask),
        w.to(sd).contiguous(),
        row_scale,
        scales,
        dy,
        dx,
        dw,
        dv_scratch,
        False,
    )
    return dx.to(dtype), dw.to(w.dtype)


@fused_backward.register_fake
def _(dy, keep, v, g, mask, w, dce, ds, tau, pool):
    return torch.empty_like(dy, memory_format=torch.contiguous_format), torch.empty_like(w)


class Fused(torch.autograd.Function):
    """The fused training forward with its autograd: ``fused_count`` (which
    mutates the counters), optionally the data-parallel exchange of this step's
    counts (``exchange``: a function of ``(v, logits, targets)`` that returns the
    global increments, added before the gate), then ``fused_gate``. A mutating
    custom op cannot carry an autograd formula of its own; an
    ``autograd.Function`` around the ops is traced by ``torch.compile`` as well.
    ``step`` (the layer's counter) moves on by one when ``training``.
    Outputs ``(y, keep, v, logits, ce, g, mask, S, N)``; differentiable: ``y``,
    ``ce`` and ``S``."""

    @staticmethod
    def forward(ctx, x, w, targets, act, inh, total, step, interval, training, tau, pool, exchange=None):
        count_here = training and exchange is None
        y, keep, v, logits, ce, g = fused_count(
            x, w, targets, act, inh, total, step, interval, count_here, training, tau, pool
        )
        if training and exchange is not None:
            d_act, d_inh, d_total = exchange(v, logits, targets)
            act.add_(d_act)
            inh.add_(d_inh)
            total.add_(d_total)
        mask, s, n = fused_gate(v, w, targets, act, inh, list(x.shape), tau, pool)
        ctx.save_for_backward(keep, v, g, mask, w)
        ctx.mark_non_differentiable(keep, v, logits, g, mask, n)
        ctx.meta = (x.shape, x.dtype, v.shape[0], tau, pool)
        return y, keep, v, logits, ce, g, mask, s, n

    @staticmethod
    def backward(ctx, dy, _dkeep, _dv, _dlogits, dce, _dg, _dmask, ds, _dn):
        keep, v, g, mask, w = ctx.saved_tensors
        shape, dtype, b, tau, pool = ctx.meta
        sd = stat_dtype(dtype)
        dy = _zeros_if_none(dy, shape, dtype, keep.device)
        dce = _zeros_if_none(dce, (b,), sd, keep.device)
        ds = _zeros_if_none(ds, (), sd, keep.device)
        dx, dw = fused_backward(dy, keep, v, g, mask, w, dce, ds, tau, pool)
        return dx, dw, None, None, None, None, None, None, None, None, None, None
