"""A compressor written the way a user would add one: this file plus one import (in ``conftest.py``).

Nothing else in deltaguard names it, yet the contract suite covers it and ``audit --methods toy`` runs it
(``test_toy_compressor_joins_the_audit``): the proof that adding a delta method is one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from deltaguard.config import check_range
from deltaguard.delta.methods.base import Compressor, CompressorConfig, Parts, compressors


@dataclass(frozen=True, kw_only=True)
class ToyConfig(CompressorConfig):
    """Round every delta entry to a multiple of ``step`` (uniform quantisation, int16 codes).

    Args:
        step: the quantisation step.
    """

    name: ClassVar[str] = "toy"
    version: ClassVar[int] = 1
    step: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("toy.step", self.step, 0.0, 1.0, low_inclusive=False)


@compressors.register("toy")
class Toy(Compressor[ToyConfig]):
    """Uniform rounding of the delta to a fixed step (a test member)."""

    config_cls = ToyConfig

    def compress_tensor(self, delta: Tensor, config: ToyConfig, *, name: str) -> Parts:
        return {"codes": torch.round(delta / config.step).clamp(-32768, 32767).to(torch.int16)}

    def decompress_tensor(self, parts: Parts, shape: tuple[int, ...], config: ToyConfig) -> Tensor:
        return parts["codes"].to(torch.float32).reshape(shape) * config.step
