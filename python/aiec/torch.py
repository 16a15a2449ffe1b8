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
an input exactly equal to ``tau`` gives 0 (the published ``TAU`` passes it); the
logits are float32 under autocast; the step counter ``count`` lives in a tensor
(so ``torch.compile`` does not recompile at every step); the first maximum is
the prediction (ties and NaN as the spec says); with ``torch.distributed``
initialised the counters are summed over all ranks (see ``distributed``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _dist, _ops
from ._ops import POOLS

__all__ = ["AIEC", "AIECFused", "Counters", "TAU", "losses"]


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return False


class TAU(nn.Module):
    """The threshold unit: ``y = x`` where ``x > tau`` (a NaN passes), else 0.
    The published module's ``TAU``, with its buffer ``tau``."""

    def __init__(self, tau: float = 0):
        super().__init__()
        if not (math.isfinite(float(tau)) and float(tau) >= 0):
            raise ValueError(f"aiec: tau must be finite and >= 0, got {tau}")
        self.register_buffer("tau", torch.tensor(float(tau)))
        self._tau = float(tau)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, 1) if x.numel() else x.reshape(0, 1)
        y, _ = _ops.threshold(flat, self._tau, "none", 1)
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
        k = self.num_classes
        c = count.unsqueeze(1)
        act = torch.zeros((k, v.shape[1]), dtype=torch.int64, device=v.device)
        inh = torch.zeros_like(act)
        total = torch.zeros((k,), dtype=torch.int64, device=v.device)
        act.index_add_(0, targets, ((v > 0) & c).to(torch.int64))
        inh.index_add_(0, targets, ((v == 0) & c).to(torch.int64))
        total.index_add_(0, targets, count.to(torch.int64))
        return act, inh, total

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
        if global_pool not in POOLS:
            raise ValueError(f"aiec: unknown pooling mode {global_pool!r}; expected one of {', '.join(POOLS)}")
        if int(update_interval) < 1:
            raise ValueError(f"aiec: update_interval must be >= 1, got {update_interval}")
        self.tau = TAU(tau=tau)
        self.counters = Counters(num_classes, num_features)
        self.update_interval = int(update_interval)
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
        # The crate checks the configuration (C, K, tau) once.
        _ops.config(num_features, num_classes, float(tau), global_pool, self.update_interval)

    @property
    def count(self) -> int:
        """Training forwards so far (reading it synchronises with the device)."""
        return int(self._count)

    @count.setter
    def count(self, n: int) -> None:
        with torch.no_grad():
            self._count.fill_(int(n))
        self._host_steps = int(n)

    def _step(self, by: int = 1) -> None:
        """Advances (or, ``by = -1``, takes back) the training step."""
        with torch.no_grad():
            self._count.add_(by)
        if not _is_compiling():
            self._host_steps += by

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
        return _ops.config(self.num_features, self.num_classes, self.tau._tau, self.global_pool, self.update_interval)

    def _check(self, x: Tensor, targets: Optional[Tensor]) -> None:
        """Every bad input is an exception here, before any state changes."""
        _ops.dtype_name(x.dtype)
        w = self.decision_weights
        if x.device != w.device:
            raise ValueError(f"aiec: x is on {x.device}, the decision weights on {w.device}")
        if _is_compiling():
            return
        self._cfg().plan(list(x.shape))
        if targets is None:
            return
        if targets.dtype != torch.int64:
            raise TypeError(f"aiec: targets must be int64 (torch.long), got {targets.dtype}")
        if targets.device != x.device:
            raise ValueError(f"aiec: targets are on {targets.device}, x on {x.device}")
        if targets.dim() != 1 or targets.shape[0] != x.shape[0]:
            raise ValueError(f"aiec: {tuple(targets.shape)} targets given for a batch of B = {x.shape[0]}")
        if targets.device.type == "cpu":
            self._cfg().check_targets((targets.contiguous().data_ptr(), targets.numel()), x.shape[0])


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
        self._check(x, targets)
        self.targets = targets
        pool, c, tau = self.global_pool, self.num_features, self.tau._tau
        if targets is None:
            if self.training:
                self._step()
            y, _ = _ops.threshold(x, tau, pool, c)
            return y
        y, _, values = _ops.activation(x, tau, pool, c)
        w = self.decision_weights
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(values, w.to(values.dtype))
        if inter_logits is not None:
            inter_logits.append(logits)
        k = self.num_classes
        valid = (targets >= 0) & (targets < k)
        safe = targets.clamp(0, k - 1)
        if self.training:
            self._begin_training_forward()
            self._step()
            with torch.no_grad():
                update = self._count % self.update_interval == 0
                correct = (_first_argmax(logits.detach()) == targets) & update & valid.all()
                if not self._sums_over_ranks():
                    self.counters.increments_add(*self.counters.increments(values.detach(), safe, correct))
                elif _dist.exchanges_now(self):
                    inc = _dist.global_increments(values.detach(), safe, correct, k, self.distributed_scheme)
                    self.counters.increments_add(*inc)
        counts = self.counters
        meta_masks = (counts.activation_counts <= counts.inhibition_counts) & (w.detach() <= 0)
        masks = meta_masks[safe]
        if x.device.type == "cuda" and not _is_compiling():
            irrel = _gather_checking_targets(self, values, masks, targets, valid)
        else:
            if _is_compiling():
                torch._assert_async(valid.all(), "aiec: a target is outside 0..K")
            irrel = values[masks]
        if self._sums_over_ranks():
            # Scaled so that the published gate loss, the mean of the squares of
            # these, is this rank's share W * S_rank / N_all: DDP's average of the
            # ranks' gradients is then the whole batch's S_all / N_all.
            n_local = masks.sum()
            n_all = _dist.global_count(n_local)
            world = torch.distributed.get_world_size()
            dt = irrel.dtype
            irrel = irrel * torch.sqrt(world * n_local.to(dt) / n_all.clamp_min(1).to(dt))
        if inter_irrel_values is not None:
            inter_irrel_values.append(irrel)
        return y


def _gather_checking_targets(module, values, masks, targets, valid):
    """``values[masks]`` with the targets check folded into the one host
    synchronisation that the gather needs anyway (its size): a bad target
    raises here, after a step that counted nothing and with ``count`` put back."""
    bad = ~valid
    first = (
        torch.argmax(bad.to(torch.int8))
        if targets.numel()
        else torch.zeros((), dtype=torch.int64, device=targets.device)
    )
    info = torch.stack([masks.sum(), bad.any().to(torch.int64), first, targets[first] if targets.numel() else first])
    n, any_bad, index, value = info.tolist()
    if any_bad:
        if module.training:
            module._step(-1)
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
        """The data-parallel exchange of this step's counts, or None."""
        if not (self.training and self._sums_over_ranks() and _dist.exchanges_now(self)):
            return None
        k = self.num_classes

        def exchange(v, logits, targets):
            valid = (targets >= 0) & (targets < k)
            update = self._count % self.update_interval == 0
            counted = (_first_argmax(logits) == targets) & update & valid.all()
            return _dist.global_increments(v, targets.clamp(0, k - 1), counted, k, self.distributed_scheme)

        return exchange

    def forward(self, x, targets=None):
        self._check(x, targets)
        pool, c, tau = self.global_pool, self.num_features, self.tau._tau
        if targets is None:
            self.last = None
            if self.training:
                self._step()
            y, _ = _ops.threshold(x, tau, pool, c)
            return y
        if self.training:
            self._begin_training_forward()
            self._step()
        counts = self.counters
        try:
            y, _, _, logits, ce, _, mask, s, n = _ops.Fused.apply(
                x,
                self.decision_weights,
                targets,
                counts.activation_counts,
                counts.inhibition_counts,
                counts.total_counts,
                self._count,
                self.update_interval,
                self.training,
                tau,
                pool,
                self._exchange(),
            )
        except Exception:
            if self.training:
                self._step(-1)
            raise
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


def synchronize(device) -> None:
    """Waits for the device and raises the first bad device-side target seen
    by the fused kernels since the last call (CUDA)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        probe = torch.empty(0, device=dev)
        _ops.backend(probe).synchronize()
