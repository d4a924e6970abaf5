"""medmamba_kernels: GPU/CPU kernels for Mamba layers. Knows nothing of medicine.

Importing this package never imports triton; the Triton kernels load on first use.
"""

from .selective_scan import Backend, BackendUnavailableError, selective_scan, selective_scan_reference

__all__ = ["Backend", "BackendUnavailableError", "selective_scan", "selective_scan_reference"]
