"""medmamba: self-configuring medical image segmentation with Mamba U-Nets."""

from medmamba.errors import MedMambaError

__version__ = "0.1.0"

__all__ = ["MedMambaError", "__version__"]
