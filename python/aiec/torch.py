"""AIEC for PyTorch: a drop-in for the published module, and a fused path.

``from aiec.torch import AIEC`` replaces the published ``AIEC`` module: the same
constructor, attributes (``decision_weights``, ``counters.activation_counts``,
``counters.inhibition_counts``, ``counters.total_counts``, ``count``, ``tau``,
``update_interval``, ``global_pool``), state-dict keys and behaviour (its
``forward(x, targets, inter_logits, inter_irrel_values)`` contract, which a
model's loss code (cross-entropy over the stacked logits plus the mean of the
squared masked values) keeps using). The passes over the activation are the
crate's fused kernels: one read of ``x`` gives the threshold, the keep bits and
the pooled vector; one pass over ``dy`` gives ``dx`` with the pooled gradient
added. The small ``[B, C]`` and ``[K, C]`` parts (logits, counting, the gate)
are PyTorch ops, so the published loss code and autograd work unchanged.

``AIECFused`` and :func:`losses` are for models that do not need the published
loss code: the whole training forward, counting and gate included, is the
crate's kernels, and so is the backward; the auxiliary and gate losses (with
the gate's normalisation over all layers) come from per-row cross-entropies and
per-layer statistics, with no boolean-mask gather and no host synchronisation.

Differences from the published module, on purpose (docs/SPEC.md, last section):
the logits and the masked values are float32 for float16 and bfloat16 inputs
(autocast or a model cast wholesale; the published module gives the input's
type), and ``tau`` is compared in float32; the step counter ``count`` lives in a
tensor (so ``torch.compile`` does not recompile at every step); the first
maximum is the prediction (ties and NaN as the spec says); with
``torch.distributed`` initialised the counters are summed over all ranks (see
``distributed``), and :func:`gate_loss` makes the published gate loss exact
across ranks. Under activation checkpointing the recomputed forward changes no
state (no step, no counting), so it reproduces the first forward's masks.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _counting, _dist, _ops
from ._counting import is_compiling as _is_compiling
from ._ops import POOLS

__all__ = ["AIEC", "AIECFused", "Counters", "TAU", "gate_loss", "losses"]


def _recomputing() -> bool:
    """Whether this forward runs inside autograd's backward: the recomputation
    of activation checkpointing (``torch.utils.checkpoint``, reentrant or not),
    whose forward must change no state: the step and the counting happened in
    the first forward, and with the counters as that forward left them the
    recomputed masks are the first forward's."""
    if _is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


def _positive_int(name: str, n) -> int:
    """``n`` as an int >= 1 (integers only: ``2.5`` is refused, not truncated)."""
    try:
        i = operator.index(n)
    except TypeError:
        raise ValueError(f"aiec: {name} must be an integer >= 1, got {n!r}") from None
    if i < 1:
        raise ValueError(f"aiec: {name} must be an integer >= 1, got {n!r}")
    return i


def _check_tau(tau) -> float:
    """``tau`` as a float: finite and >= 0 in float32, the type the kernels compare in."""
    t = float(tau)
    if not (t >= 0 and math.isfinite(t) and math.isfinite(float(torch.tensor(t, dtype=torch.float32)))):
        raise ValueError(f"aiec: tau must be finite (in float32) and >= 0, got {tau!r}")
    return t


def _roundings(tau: float) -> set:
    return {float(torch.tensor(tau, dtype=dt)) for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}


def _reread_tau(module, _incompatible_keys) -> None:
    module.value()


class TAU(nn.Module):
    """The threshold unit: ``y = x`` where ``x > tau`` (a NaN passes), else 0.
    The published module's ``TAU``, with its buffer ``tau``, which is the
    truth: a value loaded with ``load_state_dict`` or written in place is the
    one thresholded at the next forward (read to the host once per change, never
    under ``torch.compile``, which sees the value of the last eager forward or load)."""

    def __init__(self, tau: float = 0):
        super().__init__()
        t = _check_tau(tau)
        self.register_buffer("tau", torch.tensor(t))
        self._tau = t
        self._seen = (id(self.tau), self.tau._version)
        self.register_load_state_dict_post_hook(_reread_tau)

    def value(self) -> float:
        """The threshold as a Python float, re-read from the buffer when it was
        replaced or written since the last read."""
        if _is_compiling():
            return self._tau
        seen = (id(self.tau), self.tau._version)
        if seen != self._seen:
            stored = float(self.tau)
            # The buffer holds the last tau rounded to a floating type (float32
            # when built; the model's type after a cast): a rounding is not a new value.
            if stored not in _roundings(self._tau):
                self._tau = _check_tau(stored)
            self._seen = seen
        return self._tau

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return _ops.threshold_aten(x, self.value())
        flat = x.reshape(-1, 1) if x.numel() else x.reshape(0, 1)
        y, _ = _ops.threshold(flat, self.value(), "none", 1)
        return y.reshape(x.shape)


class Counters(nn.Module):
    """Activation and inhibition counts per (class, channel), samples per
    class: the published ``Counters``, non-persistent int64 buffers."""

    def __init__(self, num_classes: int, num_features: int):
        super().__init__()
        self.register_buffer(
            "activation_counts", torch.zeros([num_classes, num_features], dtype=torch.int64), persistent=False
        )
        self.register_buffer(
            "inhibition_counts", torch.zeros([num_classes, num_features], dtype=torch.int64), persistent=False
        )
        self.register_buffer("total_counts", torch.ones([num_classes], dtype=torch.int64), persistent=False)
        self.num_classes = num_classes
        self.num_features = num_features

    def update(self, x: Tensor, targets: Tensor) -> None:
        """Counts samples ``x [B, C]`` (correctly classified ones) of classes ``targets [B]``."""
        self.increments_add(*self.increments(x, targets, torch.ones_like(targets, dtype=torch.bool)))

    @torch.no_grad()
    def increments(self, v: Tensor, targets: Tensor, count: Tensor):
        """This step's increments for the samples where ``count`` is true."""
        c = count.unsqueeze(1)
        return _counting.increments(targets, (v > 0) & c, (v == 0) & c, count, self.num_classes)

    @torch.no_grad()
    def increments_add(self, act: Tensor, inh: Tensor, total: Tensor) -> None:
        self.activation_counts.add_(act)
        self.inhibition_counts.add_(inh)
        self.total_counts.add_(total)

    @torch.no_grad()
    def clear(self) -> None:
        self.activation_counts.fill_(0)
        self.inhibition_counts.fill_(0)
        self.total_counts.fill_(1)

    @property
    def activity_levels(self) -> Tensor:
        return (self.activation_counts - self.inhibition_counts) / self.total_counts[:, None]


def _first_argmax(z: Tensor) -> Tensor:
    """argmax over the last dim: the lowest index among equal maxima, a NaN
    above any number (the first NaN wins)."""
    k = z.shape[-1]
    nan = torch.isnan(z)
    is_max = torch.where(nan.any(dim=-1, keepdim=True), nan, z == z.amax(dim=-1, keepdim=True))
    idx = torch.arange(k, device=z.device)
    return torch.where(is_max, idx, k).amin(dim=-1)


class _Base(nn.Module):
    """What the drop-in and the fused module share: parameters, buffers, the
    step counter, train/eval, and input checks (before anything changes)."""

    def __init__(
        self, num_features, num_classes=1000, tau=0, update_interval=5, global_pool="token", distributed="sum"
    ):
        super().__init__()
        _dist.check_mode(distributed)
        num_features = _positive_int("num_features", num_features)
        num_classes = _positive_int("num_classes", num_classes)
        if global_pool not in POOLS:
            raise ValueError(f"aiec: unknown pooling mode {global_pool!r}; expected one of {', '.join(POOLS)}")
        update_interval = _positive_int("update_interval", update_interval)
        # The crate checks the whole configuration (C, K, tau) before anything is built.
        _ops.config(num_features, num_classes, _check_tau(tau), global_pool, update_interval)
        self.tau = TAU(tau=tau)
        self.counters = Counters(num_classes, num_features)
        self.update_interval = update_interval
        self.global_pool = global_pool
        self.decision_weights = nn.Parameter(torch.empty(num_classes, num_features))
        nn.init.xavier_uniform_(self.decision_weights)
        # The step counter (the published module's ``count``), kept on the
        # device: the update decision never needs the host, and torch.compile
        # does not specialise on its value.
        self.register_buffer("_count", torch.zeros((), dtype=torch.int64), persistent=False)
        # A host copy of the step, for the data-parallel exchange only (it runs on
        # update steps); never read under torch.compile.
        self._host_steps = 0
        self.distributed = distributed
        self.distributed_scheme = "auto"

    @property
    def count(self) -> int:
        """Training forwards so far (reading it synchronises with the device)."""
        return int(self._count)

    @count.setter
    def count(self, n: int) -> None:
        with torch.no_grad():
            self._count.fill_(int(n))
        self._host_steps = int(n)

    def _next_step(self) -> Tensor:
        """The step this training forward will be, as a new tensor: the
        counter itself moves only when the forward has succeeded (``_commit``)."""
        return self._count + 1

    def _commit(self, step: Tensor) -> None:
        """The training forward succeeded: the step counter is ``step``."""
        with torch.no_grad():
            self._count.copy_(step)
        if not _is_compiling():
            self._host_steps += 1

    def _sums_over_ranks(self) -> bool:
        return self.distributed == "sum" and _dist.active()

    def _begin_training_forward(self) -> None:
        if self.distributed == "rank0" and _dist.active():
            _dist.broadcast_from_rank0(self)

    @property
    def num_classes(self) -> int:
        return self.decision_weights.shape[0]

    @property
    def num_features(self) -> int:
        return self.decision_weights.shape[1]

    def train(self, mode: bool = True):
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        if mode is False:
            self.counters.clear()
        self.training = mode
        for module in self.children():
            module.train(mode)
        return self

    def _cfg(self):
        return _ops.config(
            self.num_features, self.num_classes, self.tau.value(), self.global_pool, self.update_interval
        )

    def __getstate__(self):
        # Copies and pickles (copy.deepcopy for an EMA model) never take the
        # graph tensors of the last forward.
        state = dict(super().__getstate__())
        for key in self._transient:
            state[key] = None
        return state

    _transient = ("targets", "last")

    def _check(self, x: Tensor, targets: Optional[Tensor], *lists) -> Optional[Tensor]:
        """Every bad input is an exception here, before any state changes;
        returns the targets as int64 (any integer type is taken)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"aiec: x must be a torch.Tensor, got {type(x).__name__}")
        _ops.dtype_name(x.dtype)
        w = self.decision_weights
        if x.device != w.device:
            raise ValueError(f"aiec: x is on {x.device}, the decision weights on {w.device}")
        for out in lists:
            if out is not None and not callable(getattr(out, "append", None)):
                raise TypeError(f"aiec: inter_logits and inter_irrel_values must be lists, got {type(out).__name__}")
        if not _is_compiling():
            # (Under torch.compile the ops' fakes make this check, at trace time.)
            self._cfg().plan(list(x.shape))
        if targets is None:
            return None
        if not isinstance(targets, Tensor):
            raise TypeError(f"aiec: targets must be a torch.Tensor, got {type(targets).__name__}")
        targets = _ops.targets_int64(targets)
        if targets.device != x.device:
            raise ValueError(f"aiec: targets are on {targets.device}, x on {x.device}")
        if targets.dim() != 1 or targets.shape[0] != x.shape[0]:
            raise ValueError(f"aiec: {tuple(targets.shape)} targets given for a batch of B = {x.shape[0]}")
        if targets.device.type == "cpu" and not _is_compiling():
            self._cfg().check_targets(targets, x.shape[0])
        return targets


class AIEC(_Base):
    """The published AIEC module, on the crate's kernels.

    ``forward(x, targets=None, inter_logits=None, inter_irrel_values=None)``
    returns the threshold output; with targets it appends the logits ``[B, K]``
    to ``inter_logits`` and the masked pooled values to ``inter_irrel_values``,
    and on every ``update_interval``-th training forward counts the correctly
    classified samples. Layouts: ``token``, ``avg_token`` ``[B, T, C]``;
    ``avg_hw`` ``[B, C, H, W]``; ``none`` ``[B, C]``. Non-contiguous inputs are
    made contiguous (a copy).

    ``distributed``: with ``torch.distributed`` initialised, ``"sum"`` (default)
    adds every rank's counts of an update step before the mask is built, so all
    ranks hold what one process would with the whole batch; ``"local"`` keeps
    each rank's own counts; ``"rank0"`` reproduces the published behaviour under
    ``DistributedDataParallel`` (rank 0's counters copied over the others').
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int = 1000,
        tau: float = 0,
        update_interval: int = 5,
        global_pool: str = "token",
        distributed: str = "sum",
    ):
        super().__init__(num_features, num_classes, tau, update_interval, global_pool, distributed)

    def forward(self, x, targets=None, inter_logits=None, inter_irrel_values=None):
        targets = self._check(x, targets, inter_logits, inter_irrel_values)
        pool, c, tau = self.global_pool, self.num_features, self.tau.value()
        train_step = self.training and not _recomputing()
        if targets is None:
            if not self.training:  # inference: ATen ops only (export, fusion)
                self.targets = None
                return _ops.threshold_aten(x, tau)
            y, _ = _ops.threshold(x, tau, pool, c)
            if train_step:
                self._commit(self._next_step())
            self.targets = None
            return y
        y, _, values = _ops.activation(x, tau, pool, c)
        w = self.decision_weights
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(values, w.to(values.dtype))
        k = self.num_classes
        valid = (targets >= 0) & (targets < k)
        safe = targets.clamp(0, k - 1)
        if _is_compiling():
            torch._assert_async(valid.all(), "aiec: a target is outside 0..K")
        step = None
        if train_step:
            self._begin_training_forward()
            step = self._next_step()
            with torch.no_grad():
                update = step % self.update_interval == 0
                correct = (_first_argmax(logits.detach()) == targets) & update & valid.all()
                if not self._sums_over_ranks():
                    self.counters.increments_add(*self.counters.increments(values.detach(), safe, correct))
                elif _dist.exchanges_now(self):
                    inc = _dist.global_increments(values.detach(), safe, correct, k, self.distributed_scheme)
                    self.counters.increments_add(*inc)
        counts = self.counters
        meta_masks = (counts.activation_counts <= counts.inhibition_counts) & (w.detach() <= 0)
        masks = meta_masks[safe]
        if _is_compiling():
            irrel = _ops.masked_gather(values, masks)  # a data-dependent size, no graph break
        elif x.device.type == "cuda":
            irrel = _gather_checking_targets(self, values, masks, targets, valid)
        else:
            irrel = values[masks]
        # Nothing has failed: the step and the results become visible together.
        if step is not None:
            self._commit(step)
        self.targets = targets
        if inter_logits is not None:
            inter_logits.append(logits)
        if inter_irrel_values is not None:
            inter_irrel_values.append(irrel)
        return y


def _gather_checking_targets(module, values, masks, targets, valid):
    """``values[masks]`` with the targets check folded into the one host
    synchronisation that the gather needs anyway (its size): a bad target
    raises here, after a step that counted nothing (the counting is off when a
    target is bad) and before the step counter moves."""
    bad = ~valid
    first = (
        torch.argmax(bad.to(torch.int8))
        if targets.numel()
        else torch.zeros((), dtype=torch.int64, device=targets.device)
    )
    info = torch.stack([masks.sum(), bad.any().to(torch.int64), first, targets[first] if targets.numel() else first])
    n, any_bad, index, value = info.tolist()
    if any_bad:
        raise ValueError(f"aiec: target {index} is {value}, outside 0..{module.num_classes} (K = {module.num_classes})")
    flat = torch.nonzero_static(masks.reshape(-1), size=int(n)).reshape(-1)
    return values.reshape(-1)[flat]


class AIECFused(_Base):
    """AIEC whose whole training step is the crate's fused kernels.

    ``forward(x, targets=None)`` returns the threshold output; with targets it
    also runs the decision unit, the per-row cross-entropy, the counting (on
    update steps, decided on the device) and the gate, and keeps the layer's
    ``ce [B]``, ``S`` and ``N`` for :func:`losses`. No boolean-mask gather and
    no host synchronisation. A bad target on a CUDA tensor changes no counter
    and gives NaN cross-entropies; ``aiec.torch.synchronize(x.device)`` raises it.
    """

    def __init__(
        self, num_features, num_classes=1000, tau=0, update_interval=5, global_pool="token", distributed="sum"
    ):
        super().__init__(num_features, num_classes, tau, update_interval, global_pool, distributed)
        self.last = None

    def _exchange(self):
        """The data-parallel exchange of this step's counts, or None. It runs
        after the counting op, which has already moved ``_count`` on."""
        if not (self._sums_over_ranks() and _dist.exchanges_now(self)):
            return None
        k = self.num_classes

        def exchange(v, logits, targets):
            valid = (targets >= 0) & (targets < k)
            update = self._count % self.update_interval == 0
            counted = (_first_argmax(logits) == targets) & update & valid.all()
            return _dist.global_increments(v, targets.clamp(0, k - 1), counted, k, self.distributed_scheme)

        return exchange

    def forward(self, x, targets=None):
        targets = self._check(x, targets)
        pool, c, tau = self.global_pool, self.num_features, self.tau.value()
        recompute = _recomputing()
        train_step = self.training and not recompute
        if targets is None:
            if not recompute:
                self.last = None
            if not self.training:  # inference: ATen ops only (export, fusion)
                return _ops.threshold_aten(x, tau)
            y, _ = _ops.threshold(x, tau, pool, c)
            if train_step:
                self._commit(self._next_step())
            return y
        if train_step:
            self._begin_training_forward()
        counts = self.counters
        y, _, _, logits, ce, _, mask, s, n = _ops.Fused.apply(
            x,
            self.decision_weights,
            targets,
            counts.activation_counts,
            counts.inhibition_counts,
            counts.total_counts,
            self._count,  # moved on by the op itself, once it has succeeded
            self.update_interval,
            train_step,
            tau,
            pool,
            self._exchange() if train_step else None,
        )
        if train_step and not _is_compiling():
            self._host_steps += 1
        if not recompute:
            self.last = (ce, s, n, logits, mask)
        return y


def losses(modules, aux_coef: float = 1.0, gate_coef: float = 200.0):
    """The AIEC losses of ``AIECFused`` layers that saw the same targets:
    ``(objective, aux, gate)`` with ``aux`` the mean cross-entropy over all
    ``L * B`` rows and ``gate = sum S / sum N`` over all layers (0 when nothing
    is masked), ``objective = aux_coef * aux + gate_coef * gate``. Ordinary
    autograd nodes: scaling the loss scales their gradients. Data-parallel
    (``distributed="sum"``): ``gate`` is this rank's share ``W * sum S / N_all``,
    whose mean over the ranks (what DDP's gradient average takes) is the whole
    batch's gate loss."""
    lasts = [m.last for m in modules]
    if not lasts or any(last is None for last in lasts):
        raise ValueError("aiec: every layer needs a forward with targets before losses()")
    batches = [last[0].shape[0] for last in lasts]
    if any(b != batches[0] for b in batches):
        raise ValueError(f"aiec: losses() over layers that saw different batches (B = {batches}); one batch per call")
    ce = torch.cat([last[0] for last in lasts])
    aux = ce.mean()
    s = torch.stack([last[1] for last in lasts]).sum()
    n = torch.stack([last[2] for last in lasts]).sum()
    if modules[0]._sums_over_ranks():
        # This rank's share W * S_rank / N_all: the ranks' mean is S_all / N_all.
        world = torch.distributed.get_world_size()
        gate = world * s / _dist.global_count(n).clamp_min(1).to(s.dtype)
    else:
        gate = s / n.clamp_min(1).to(s.dtype)
    return aux_coef * aux + gate_coef * gate, aux, gate


def gate_loss(inter_irrel_values, group=None) -> Tensor:
    """The published gate loss, ``torch.cat(inter_irrel_values).pow(2).mean()``
    over the masked values of every layer (0 when nothing is masked), made
    exact across ranks.

    On one process it is exactly the published expression. With
    ``torch.distributed`` initialised (more than one rank in ``group``), its
    value is the mean over the masked values of all ranks (what one process
    with the whole batch would report), and its gradient is this rank's share
    ``W * sum(v^2) / N_all``, so that DDP's average of the ranks' gradients is
    the whole batch's gradient: a model trains under DDP as one process at the
    global batch. One all-reduce of two float64 values per call, for all layers
    together. Every rank must call it at every step (it is a collective)."""
    values = list(inter_irrel_values)
    if not values:
        raise ValueError("aiec: gate_loss() needs the masked values of at least one layer (an empty list was given)")
    flat = torch.cat([v.reshape(-1) for v in values])
    if not _dist.active(group):
        return flat.pow(2).mean() if flat.numel() else flat.pow(2).sum()
    sq = flat.pow(2).sum()
    totals = torch.stack([sq.detach().to(torch.float64), sq.new_tensor(flat.numel(), dtype=torch.float64)])
    torch.distributed.all_reduce(totals, group=group)
    n_all = totals[1].clamp_min(1)
    world = torch.distributed.get_world_size(group)
    share = sq * (world / n_all).to(sq.dtype)
    mean = (totals[0] / n_all).to(sq.dtype)
    return share + (mean - share).detach()


def synchronize(device) -> None:
    """Waits for the device and raises the first bad device-side target seen
    by the fused kernels since the last call (CUDA)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        probe = torch.empty(0, device=dev)
        _ops.backend(probe).synchronize()
