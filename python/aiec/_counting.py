"""The counting unit's increments, written once: the layer's own update
(``aiec.torch``) and the data-parallel exchange (``_dist``) both add up their
samples through :func:`increments`. Also whether torch.compile is tracing, which
both ask."""

from __future__ import annotations

import torch
from torch import Tensor


def is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return False


@torch.no_grad()
def increments(targets: Tensor, pos: Tensor, zero: Tensor, counted: Tensor, classes: int):
    """``(act [K, C], inh [K, C], total [K])`` of samples of classes ``targets
    [N]``: ``pos`` (``v > 0``) and ``zero`` (``v == 0``) ``[N, C]`` bool, already
    false for samples not counted; ``counted [N]`` bool."""
    act = torch.zeros((classes, pos.shape[1]), dtype=torch.int64, device=pos.device)
    inh = torch.zeros_like(act)
    total = torch.zeros((classes,), dtype=torch.int64, device=pos.device)
    act.index_add_(0, targets, pos.to(torch.int64))
    inh.index_add_(0, targets, zero.to(torch.int64))
    total.index_add_(0, targets, counted.to(torch.int64))
    return act, inh, total
