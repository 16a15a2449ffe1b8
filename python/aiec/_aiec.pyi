"""Type stubs of the Rust extension ``aiec._aiec`` (python/src/lib.rs).

Every buffer is ``(data_ptr, numel)`` of a contiguous tensor; shapes are lists
of ints; element types are PyTorch's names (``"float32"``, ``"float16"``,
``"bfloat16"``, ``"float64"``). Errors: ``TypeError`` for a wrong element type,
``RuntimeError`` for a missing GPU, driver or compiler, ``ValueError`` for any
other bad input, each with the crate's message.
"""

from typing import Optional, Tuple

Buf = Tuple[int, int]

__version__: str
HAS_SIM: bool

class Config:
    def __init__(self, channels: int, classes: int, tau: float, pool: str, update_interval: int) -> None: ...
    def plan(self, shape: list[int]) -> Tuple[int, int, int, int, int]:
        """``(B, C, P, keep_words, scratch_bytes)`` of an input of ``shape``."""
    def check_targets(self, targets: Buf, batch: int) -> None: ...

class Backend:
    @staticmethod
    def reference() -> Backend: ...
    @staticmethod
    def sim() -> Backend: ...
    @staticmethod
    def cuda(ordinal: int, stream: int) -> Backend: ...
    @property
    def kind(self) -> str: ...
    @property
    def label(self) -> str: ...
    def synchronize(self) -> None: ...

def activation_forward(
    backend: Backend, config: Config, dtype: str, shape: list[int], x: Buf, y: Buf, keep: Buf, v: Optional[Buf]
) -> None: ...
def activation_backward(
    backend: Backend, config: Config, dtype: str, shape: list[int], keep: Buf, dv: Optional[Buf], dy: Buf, dx: Buf
) -> None: ...
def fused_count(
    backend: Backend,
    config: Config,
    dtype: str,
    shape: list[int],
    x: Buf,
    w: Buf,
    targets: Buf,
    device_targets: bool,
    counters: Tuple[Buf, Buf, Buf],
    update: bool,
    step: Optional[Buf],
    outputs: Tuple[Buf, Buf, Buf, Buf, Buf, Buf],
    scratch: Buf,
) -> None: ...
def fused_gate(
    backend: Backend,
    config: Config,
    dtype: str,
    shape: list[int],
    v: Buf,
    w: Buf,
    targets: Buf,
    act: Buf,
    inh: Buf,
    mask: Buf,
    stats: Buf,
    scratch: Buf,
) -> None: ...
def fused_backward(
    backend: Backend,
    config: Config,
    dtype: str,
    shape: list[int],
    saved: Tuple[Buf, Buf, Buf, Buf],
    w: Buf,
    row_scale: Optional[Buf],
    scales: Buf,
    dy: Buf,
    dx: Buf,
    dw: Buf,
    dv_scratch: Buf,
    accumulate: bool,
) -> None: ...
