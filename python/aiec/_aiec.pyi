"""Type stubs of the Rust extension ``aiec._aiec`` (python/src/lib.rs).

Every buffer is a ``torch.Tensor``, passed itself (never its address): the
extension reads its element type, device, contiguity, alignment and size and
checks them against the buffer's role before anything runs, and the call holds
it while it runs. The activation type (float32, float16, bfloat16; float64 on the
CPU reference) is that of ``x`` (``dy`` in the backwards); ``v``, the logits,
``W`` and the scales are float32 (float64 with float64 activations); keep bits
int32; counters, targets and the step int64; the mask and scratch uint8.
Errors: ``TypeError`` for a wrong element type or a non-tensor, ``RuntimeError``
for a missing GPU, driver or compiler, ``ValueError`` for any other bad input
(device, contiguity, length, overlap), each naming the tensor.
"""

from typing import Optional, Sequence, Tuple

from torch import Tensor

__version__: str
CRATE_VERSION: str
HAS_SIM: bool
LOSSES_FIELDS: dict[str, int]
"""Byte offset of each field of the kernels' ``AiecLosses``: ``aux``, ``gate``,
``sum_sq``, ``aux_scale``, ``gate_scale`` (float32) and ``count`` (uint64)."""
LOSSES_SIZE: int
"""Bytes of ``AiecLosses``."""
GATE_STATS_FIELDS: dict[str, int]
"""Byte offset of each field of ``AiecGateStats``: ``sum_sq`` and ``count``."""
GATE_STATS_SIZE: int
"""Bytes of ``AiecGateStats``."""

class Plan:
    """The sizes of a step on one input shape, by name."""

    batch: int
    """``B``."""
    channels: int
    """``C``."""
    positions: int
    """``P`` (1 for pooling ``none``)."""
    keep_words: int
    """int32 words of the keep bits."""
    scratch_bytes: int
    """Bytes of the forward's scratch (uint8)."""
    scratch_zero_bytes: int
    """Its first bytes, which must be zero before its first use; the rest needs no content."""

class Config:
    def __init__(self, channels: int, classes: int, tau: float, pool: str, update_interval: int) -> None: ...
    def plan(self, shape: list[int]) -> Plan:
        """The sizes of a step on an input of ``shape`` (checked against the pooling mode and ``C``)."""
    def check_targets(self, targets: Tensor, batch: int) -> None: ...

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
    def dv_scratch_len(self, config: Config, shape: Sequence[int]) -> int: ...
    def synchronize(self) -> None: ...

def fwd_x(backend: Backend, config: Config, x: Tensor, y: Tensor, keep: Tensor, v: Optional[Tensor] = None) -> None: ...
def bwd_x(backend: Backend, config: Config, keep: Tensor, dv: Optional[Tensor], dy: Tensor, dx: Tensor) -> None: ...
def fwd_x_logits(
    backend: Backend,
    config: Config,
    x: Tensor,
    w: Tensor,
    targets: Tensor,
    device_targets: bool,
    counters: Tuple[Tensor, Tensor, Tensor],
    update: bool,
    step: Optional[Tensor],
    outputs: Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    scratch: Tensor,
) -> None: ...
def fwd_gate(
    backend: Backend,
    config: Config,
    shape: list[int],
    v: Tensor,
    w: Tensor,
    targets: Tensor,
    act: Tensor,
    inh: Tensor,
    mask: Tensor,
    stats: Tensor,
    scratch: Tensor,
) -> None: ...
def backward_train(
    backend: Backend,
    config: Config,
    saved: Tuple[Tensor, Tensor, Tensor, Tensor],
    w: Tensor,
    row_scale: Optional[Tensor],
    scales: Tensor,
    dy: Tensor,
    dx: Tensor,
    dw: Tensor,
    dv_scratch: Tensor,
    accumulate: bool,
) -> None: ...

# Diagnostics (``python -m aiec``; README, section Diagnostics).

def nvrtc() -> Tuple[str, int, int, str]:
    """``(path, major, minor, origin)`` of the NVRTC library in use, loading it
    if not yet loaded; ``RuntimeError`` saying where the search looked."""

def nvrtc_search_dirs() -> list[str]:
    """The directories searched after ``AIEC_NVRTC_LIB`` and the libraries
    already loaded (``sys.path`` and site-packages at import, each with its
    ``nvidia/*/lib``)."""

def cuda_driver() -> Tuple[int, list[Tuple[str, str]]]:
    """``(version, [(gpu name, "sm_90")])`` without opening a context;
    ``RuntimeError`` saying why there is no driver or GPU."""

def cache_dir() -> str:
    """Where compiled kernels are cached."""

def kernel_modules(dtypes: list[str]) -> list[Tuple[str, Optional[str]]]:
    """``(file, dtype or None)`` of every module a job may load for ``dtypes``
    (``f32``, ``f16``, ``bf16``), once each."""

def parse_arch(s: str) -> str:
    """``sm_90``, ``90`` or ``9.0`` as ``sm_90``; ``ValueError`` otherwise."""

def prepare_module(file: str, only: Optional[str], arch: str) -> Tuple[str, str, bool]:
    """Compiles one module for ``arch`` (``sm_90``) into ``cache_dir()``:
    ``(path, target, already cached)``."""
