"""``precision``: store every floating-point weight in a 16-bit format and read it back.

The simplest whole-model compression (2× smaller than fp32) and the baseline every quantizer is compared
with: what does keeping the deployed model in bfloat16 (7 mantissa bits) or float16 (10) do to its
behaviour? Labels: ``bf16``, ``fp16``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from deltaguard.config import check_choice
from deltaguard.transforms.base import Transform, TransformConfig, transforms

_LABELS = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True, kw_only=True)
class PrecisionConfig(TransformConfig):
    """Round every floating-point parameter and buffer to ``dtype`` (then compute in the model's dtype).

    Args:
        dtype: ``bfloat16`` or ``float16``.
    """

    name: ClassVar[str] = "precision"
    version: ClassVar[int] = 1
    dtype: Literal["bfloat16", "float16"] = "bfloat16"

    def __post_init__(self) -> None:
        check_choice("precision.dtype", self.dtype, ("bfloat16", "float16"))

    @property
    def label(self) -> str:
        return {v: k for k, v in _LABELS.items()}[self.dtype]

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        if label == cls.name:
            return {}
        return {"dtype": _LABELS[label]} if label in _LABELS else None


@transforms.register("precision")
class Precision(Transform[PrecisionConfig]):
    """Weights stored in bfloat16 or float16 (the baseline of whole-model compression)."""

    config_cls = PrecisionConfig

    @torch.no_grad()
    def apply_(self, model: Any, config: PrecisionConfig, *, calib: list[str] | None = None, tokenizer: Any = None,
               reference: Any = None, workdir: Any = None) -> Any:
        dtype = getattr(torch, config.dtype)
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point() and tensor.dtype != dtype:
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))
        return model

    def record(self, config: PrecisionConfig) -> dict[str, Any]:
        return {"method": config.to_dict(), "bits_per_param": float(torch.finfo(getattr(torch, config.dtype)).bits)}
