"""The per-rank side of the data-parallel tests (test_pt_distributed.py): each
rank of a gloo process group on this machine runs the scenarios on its slice
of a global batch and saves what it saw; the test compares with one process
that sees the whole batch. Also importable by the test for that one process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from aiec.torch import AIEC, AIECFused, gate_loss, losses

C, K, STEPS, INTERVAL, BATCH = 10, 4, 4, 2, 6


def batch(step):
    """The global batch of a step: ``[BATCH, 3, C]`` and targets."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(BATCH, 3, C, generator=g, dtype=torch.float64) + 0.3
    t = torch.randint(0, K, (BATCH,), generator=g)
    return x, t


def my_slice(rank, world, x, t):
    per = BATCH // world
    return x[rank * per : (rank + 1) * per], t[rank * per : (rank + 1) * per]


def make(cls, mode, scheme="auto"):
    torch.manual_seed(5)
    m = cls(C, K, update_interval=INTERVAL, global_pool="avg_token", distributed=mode).double()
    m.distributed_scheme = scheme
    return m


def counting(cls, rank, world, mode, scheme):
    """Counters and gate masks after every step (weights fixed)."""
    m = make(cls, mode, scheme)
    seen = []
    for step in range(STEPS):
        x, t = my_slice(rank, world, *batch(step))
        if cls is AIEC:
            m(x, t, [], [])
        else:
            m(x, t)
        c = m.counters
        meta = (c.activation_counts <= c.inhibition_counts) & (m.decision_weights.detach() <= 0)
        seen.append(
            {
                "act": c.activation_counts.clone(),
                "inh": c.inhibition_counts.clone(),
                "total": c.total_counts.clone(),
                "mask": meta[t].clone(),
            }
        )
    return seen


class Net(torch.nn.Module):
    """A published-style model with two AIEC layers of different pools:
    fc1 -> AIEC (token) -> fc2 -> AIEC (avg_token) -> head, and the published
    loss with its gate term as ``aiec.torch.gate_loss`` (the one-line change that
    makes it exact across ranks)."""

    def __init__(self, mode):
        super().__init__()
        torch.manual_seed(6)
        self.fc1 = torch.nn.Linear(8, C)
        self.act = AIEC(C, K, update_interval=1, global_pool="token", distributed=mode)
        self.fc2 = torch.nn.Linear(C, C)
        self.act2 = AIEC(C, K, update_interval=1, global_pool="avg_token", distributed=mode)
        self.head = torch.nn.Linear(C, K)

    def forward(self, x, t, seen=None):
        inter_logits, inter_irrel = [], []
        y = self.act(self.fc1(x), t, inter_logits, inter_irrel)
        y = self.act2(self.fc2(y), t, inter_logits, inter_irrel)
        logits = self.head(y[:, 0])
        stacked = torch.stack(inter_logits)
        aux = torch.nn.functional.cross_entropy(stacked.view(-1, K), t.repeat(stacked.shape[0]))
        if seen is not None:
            seen.append([v.detach().clone() for v in inter_irrel])
        return torch.nn.functional.cross_entropy(logits, t) + aux + 200.0 * gate_loss(inter_irrel)


def training_batch(step):
    """Inputs, and as targets the classes the initial model's AIEC unit
    predicts for them (so that many samples are counted)."""
    g = torch.Generator().manual_seed(2000 + step)
    x = torch.randn(BATCH, 5, 8, generator=g, dtype=torch.float64)
    teacher = Net("local").double()
    with torch.no_grad():
        h = teacher.fc1(x)[:, 0].clamp_min(0)
        t = (h @ teacher.act.decision_weights.T).argmax(1)
    return x, t


def training(rank, world, mode, ddp):
    """Weights, both layers' counters after every step, and the masked values
    each layer returned at every step, over STEPS SGD steps of a
    published-style model."""
    net = Net(mode).double()
    model = torch.nn.parallel.DistributedDataParallel(net) if ddp else net
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    values, counters = [], []
    for step in range(STEPS):
        x, t = my_slice(rank, world, *training_batch(step))
        opt.zero_grad()
        model(x, t, values).backward()
        opt.step()
        counters.append(
            [(m.counters.activation_counts.clone(), m.counters.total_counts.clone()) for m in (net.act, net.act2)]
        )
    return {
        "params": {k: v.detach().clone() for k, v in net.named_parameters()},
        "counters": counters,
        "values": values,
    }


def fused_training(rank, world, mode):
    """dx-free check of the fused path's gradients: dW after one step."""
    m = make(AIECFused, mode)
    x, t = my_slice(rank, world, *batch(0))
    m.count = INTERVAL - 1  # this forward updates
    x = x.requires_grad_(True)
    y = m(x, t)
    obj, _, _ = losses([m])
    (obj + y.sum()).backward()
    return {"dw": m.decision_weights.grad.clone(), "total": m.counters.total_counts.clone()}


def worker(rank, world, port, out):
    os.environ.setdefault("AIEC_TORCH_BACKEND", "reference")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        scheme = "increments" if world == 2 else "bits"
        result = {
            "dropin": counting(AIEC, rank, world, "sum", scheme),
            "fused": counting(AIECFused, rank, world, "sum", "auto"),
            "dropin_local": counting(AIEC, rank, world, "local", "auto"),
            "rank0": counting(AIEC, rank, world, "rank0", "auto"),
            "ddp": training(rank, world, "sum", ddp=True),
            "ddp_published": training(rank, world, "rank0", ddp=True),
            "fused_grad": fused_training(rank, world, "sum"),
        }
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
