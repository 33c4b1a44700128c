"""MP-MAE models in plain PyTorch (no MinkowskiEngine, no FFCV). Importing this needs torch (the ``[train]`` extra)."""
from .convnextv2 import VARIANTS, ConvNeXtV2Encoder, random_mask

__all__ = ["VARIANTS", "ConvNeXtV2Encoder", "random_mask"]
