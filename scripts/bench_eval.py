"""An evaluation forward of a ViT-S MLP block (Linear 384 -> 1536, the
activation, Linear 1536 -> 384; B = 64, T = 65) under ``torch.compile`` on CPU,
with the published module's threshold (``torch.where(x <= tau, 0, x)`` in an
autograd function, as the spec states it) against ``aiec.torch.AIEC`` in eval
mode, whose forward without targets is the same ATen ops: TorchInductor should
fuse both into the same kernels. Prints the median and minimum of 20 timed
forwards and the number of kernels inductor generated.

    python scripts/bench_eval.py
"""

import os
import time

os.environ.setdefault("AIEC_TORCH_BACKEND", "reference")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch._inductor import metrics  # noqa: E402

from aiec.torch import AIEC  # noqa: E402


class PublishedThreshold(torch.autograd.Function):
    """The published rule: ``input <= tau`` gives 0 in the forward and the backward."""

    @staticmethod
    def forward(ctx, x, tau):
        ctx.save_for_backward(x, tau)
        return torch.where(x <= tau, torch.zeros_like(x), x)

    @staticmethod
    def backward(ctx, g):
        x, tau = ctx.saved_tensors
        return torch.where(x <= tau, torch.zeros_like(g), g), None


class Published(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("tau", torch.tensor(0.0))

    def forward(self, x):
        return PublishedThreshold.apply(x, self.tau)


def main():
    x = torch.randn(64, 65, 384)
    for name, act in (("published", Published()), ("aiec", AIEC(1536, 100))):
        torch.manual_seed(0)
        block = nn.Sequential(nn.Linear(384, 1536), act, nn.Linear(1536, 384)).eval()
        torch._dynamo.reset()
        metrics.reset()
        compiled = torch.compile(block)
        with torch.no_grad():
            compiled(x)
            kernels = metrics.generated_kernel_count
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                compiled(x)
                times.append(time.perf_counter() - t0)
        times.sort()
        print(
            f"{name:10s} eval forward, compiled: median {times[10] * 1e3:.2f} ms, "
            f"min {times[0] * 1e3:.2f} ms, {kernels} inductor kernel(s)"
        )


if __name__ == "__main__":
    main()
