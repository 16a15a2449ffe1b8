"""Data-parallel AIEC: what the ranks of a ``torch.distributed`` process group
exchange so that every rank holds the counters (and so the gate masks) one
process would hold with the whole batch.

The published module under ``DistributedDataParallel`` (default
``broadcast_buffers=True``) loses the counts of ranks 1..N-1: at every forward
rank 0's buffers are copied over everyone's. Modes (``AIEC(distributed=...)``):

* ``"sum"`` (default): on every update step, the ranks' counts are summed before
  the mask is built, in one collective per layer. The masked values a layer
  returns are the published values of the rank's own samples; the gate loss is
  made exact across ranks by ``aiec.torch.gate_loss`` (the drop-in) or
  ``aiec.torch.losses`` (the fused path), which normalise by the masked count of
  all ranks and layers, so that the ranks' gradients, which DDP averages, are
  those of the whole batch. Under DDP the buffer broadcast then changes nothing:
  every rank holds the same counters.
* ``"local"``: each rank counts and normalises alone.
* ``"rank0"``: the published behaviour, reproduced with or without DDP: at every
  forward rank 0's counters are copied over the others'.

The counts of one update step are exchanged in whichever of two exact forms is
smaller for the shape (both need the same local batch size ``B`` on every rank,
as ``DistributedSampler`` gives):

* ``increments``: an all-reduce of the step's increments ``act, inh [K, C]``,
  ``total [K]`` in the smallest integer type that holds ``world * B`` (uint8,
  else int32; gloo and NCCL have no int16);
* ``bits``: an all-gather of each counted sample's class and two bit planes
  (``v > 0``, ``v == 0``) of its ``C`` channels, ``4 + 2 * ceil(C / 8)`` bytes a
  sample, from which every rank adds up the same increments.

At the ViT-B preset (``K = 1000``, ``C = 3072``) with 8 ranks of ``B = 256``: the
increments are 24.6 MB of int32 per layer and update step (a rank sends 43.0 MB
in a ring all-reduce), the bits 198 KB per rank (a rank sends 1.38 MB in a ring
all-gather): ``auto`` takes the bits. With 2 ranks of ``B = 32``: 6.1 MB of
uint8 increments against 24.7 KB of bits. ``bytes_per_rank`` gives these.
"""

from __future__ import annotations

import math

import torch

from ._counting import increments, is_compiling

MODES = ("sum", "local", "rank0")
SCHEMES = ("auto", "increments", "bits")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"aiec: distributed={mode!r}; expected one of {', '.join(MODES)}")


def active(group=None) -> bool:
    d = torch.distributed
    return d.is_available() and d.is_initialized() and d.get_world_size(group) > 1


def bytes_per_rank(scheme: str, world: int, batch: int, channels: int, classes: int) -> int:
    """What one rank sends per layer and update step (ring algorithms: an
    all-reduce sends about ``2 (W - 1) / W`` of the buffer, an all-gather
    ``(W - 1)`` chunks)."""
    if scheme == "bits":
        return (world - 1) * batch * (4 + 2 * math.ceil(channels / 8))
    size = 1 if world * batch <= 255 else 4
    return int(2 * (world - 1) / world * (2 * classes * channels + classes) * size)


def choose(scheme: str, world: int, batch: int, channels: int, classes: int) -> str:
    if scheme != "auto":
        return scheme
    inc = bytes_per_rank("increments", world, batch, channels, classes)
    bits = bytes_per_rank("bits", world, batch, channels, classes)
    return "bits" if bits < inc else "increments"


def _pack_bits(m: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` bool -> ``[N, ceil(C / 8)]`` uint8, bit ``j`` of byte ``i`` = channel ``8 i + j``."""
    n, c = m.shape
    pad = (-c) % 8
    if pad:
        m = torch.cat([m, m.new_zeros((n, pad))], 1)
    w = (1 << torch.arange(8, device=m.device, dtype=torch.int32)).view(1, 1, 8)
    return (m.view(n, -1, 8).to(torch.int32) * w).sum(-1).to(torch.uint8)


def _unpack_bits(b: torch.Tensor, c: int) -> torch.Tensor:
    shifts = torch.arange(8, device=b.device, dtype=torch.int32)
    return ((b.to(torch.int32).unsqueeze(-1) >> shifts) & 1).bool().view(b.shape[0], -1)[:, :c]


@torch.no_grad()
def global_increments(v, targets, counted, classes: int, scheme: str = "auto", group=None):
    """This update step's increments over all ranks: ``(act, inh, total)``
    summed as one process with the concatenated batch would count them.
    ``counted [B]``: the samples this rank counts (correct, on an update step)."""
    d = torch.distributed
    world = d.get_world_size(group)
    b, c = v.shape
    pos = (v > 0) & counted[:, None]
    zero = (v == 0) & counted[:, None]
    how = choose(scheme, world, b, c, classes)
    if how == "bits":
        t = torch.where(counted, targets, torch.full_like(targets, -1)).to(torch.int32)
        record = torch.cat([t.view(b, 1).view(torch.uint8).view(b, 4), _pack_bits(pos), _pack_bits(zero)], 1)
        every = torch.empty((world * b, record.shape[1]), dtype=torch.uint8, device=v.device)
        d.all_gather_into_tensor(every, record.contiguous(), group=group)
        tg = every[:, :4].contiguous().view(torch.int32).view(-1).to(torch.int64)
        ok = tg >= 0
        cb = (c + 7) // 8
        gpos = _unpack_bits(every[:, 4 : 4 + cb], c) & ok[:, None]
        gzero = _unpack_bits(every[:, 4 + cb :], c) & ok[:, None]
        return increments(tg.clamp_min(0), gpos, gzero, ok, classes)
    act, inh, total = increments(targets, pos, zero, counted, classes)
    small = torch.uint8 if world * b <= 255 else torch.int32
    flat = torch.cat([act.view(-1), inh.view(-1), total]).to(small)
    d.all_reduce(flat, group=group)
    flat = flat.to(torch.int64)
    kc = classes * c
    return flat[:kc].view(classes, c), flat[kc : 2 * kc].view(classes, c), flat[2 * kc :]


def exchanges_now(module) -> bool:
    """Whether this training forward, which will be step ``_host_steps + 1``,
    exchanges counts: on update steps, which the host knows from its own copy
    of the step counter (under torch.compile every training step exchanges:
    the increments of other steps are zero)."""
    if is_compiling():
        return True
    return (module._host_steps + 1) % module.update_interval == 0


@torch.no_grad()
def broadcast_from_rank0(module) -> None:
    """The published behaviour under DDP: rank 0's counters over everyone's."""
    c = module.counters
    for t in (c.activation_counts, c.inhibition_counts, c.total_counts):
        torch.distributed.broadcast(t, src=0)


def global_count(n_local: torch.Tensor) -> torch.Tensor:
    """The masked count over all ranks (a scalar all-reduce)."""
    n = n_local.detach().to(torch.int64).clone()
    torch.distributed.all_reduce(n)
    return n
