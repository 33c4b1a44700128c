"""MP-MAE models in plain PyTorch (no MinkowskiEngine, no FFCV). Importing this needs torch (the ``[train]`` extra)."""
from .convnextv2 import VARIANTS, ConvNeXtV2Encoder, random_mask
from .mpmae import ALL_TARGETS, MPMAE, model_input, random_crop

__all__ = ["ALL_TARGETS", "MPMAE", "VARIANTS", "ConvNeXtV2Encoder", "model_input", "random_crop", "random_mask"]
