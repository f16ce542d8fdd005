"""Whole-model transforms (quantization, pruning, realignment), one file each, registered in ``transforms``."""

from deltaguard.transforms import precision as _precision  # noqa: F401  (registers "precision")
from deltaguard.transforms import quantize as _quantize  # noqa: F401  (registers "rtn", "omniquant", "qrealign")
from deltaguard.transforms import gptq as _gptq  # noqa: F401  (registers "gptq")
from deltaguard.transforms import awq as _awq  # noqa: F401  (registers "awq")
from deltaguard.transforms import prune as _prune  # noqa: F401  (registers "magnitude", "wanda", "sparsegpt")
from deltaguard.transforms.base import Transform, TransformConfig, is_transform_spec, transform_from_spec, transforms
from deltaguard.transforms.precision import Precision, PrecisionConfig

__all__ = ["Precision", "PrecisionConfig", "Transform", "TransformConfig", "is_transform_spec",
           "transform_from_spec", "transforms"]
