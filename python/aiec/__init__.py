"""aiec: fused CUDA kernels for AIEC (Activation with Intrinsic-Extrinsic
Consensus, ICML 2026), with the crate's CPU reference and simulator.

``aiec.torch`` holds the PyTorch module (a drop-in for the published ``AIEC``)
and the fused path; importing ``aiec`` alone does not import torch.
"""

from ._aiec import HAS_SIM, Backend, Config, __version__

__all__ = ["Backend", "Config", "HAS_SIM", "__version__"]
