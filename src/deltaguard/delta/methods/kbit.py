"""k-bit round-to-nearest quantisation of the delta with per-group scales."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from deltaguard.config import check_choice, check_range
from deltaguard.delta.methods.base import Compressor, CompressorConfig, Parts, compressors
from deltaguard.delta.methods.quant import dequantize_groups, quantize_groups


@dataclass(frozen=True, kw_only=True)
class KBitConfig(CompressorConfig):
    """Round each group of delta values to ``bits`` bits with an fp16 step and offset per group.

    Args:
        bits: 2, 3, 4 or 8 bits per value.
        group_size: consecutive values (row-major) sharing one step and offset; any size works, the
            last group of a matrix is zero-padded.
    """

    name: ClassVar[str] = "kbit"
    version: ClassVar[int] = 1
    bits: int = 4
    group_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("kbit.bits", self.bits, (2, 3, 4, 8))
        check_range("kbit.group_size", self.group_size, 8, 1 << 20)

    @property
    def label(self) -> str:
        return f"kbit{self.bits}"

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        """``kbitN``: N bits per value (2, 3, 4 or 8)."""
        match = re.fullmatch(rf"{cls.name}(?P<bits>\d+)?", label)
        return None if match is None else ({"bits": int(match["bits"])} if match["bits"] else {})


@compressors.register("kbit")
class KBit(Compressor[KBitConfig]):
    """Round-to-nearest k-bit delta (2, 3, 4, 8 bits) with per-group fp16 step and offset."""

    config_cls = KBitConfig
    default_labels = ("kbit4",)

    def compress_tensor(self, delta: Tensor, config: KBitConfig, *, name: str) -> Parts:
        return quantize_groups(delta, config.bits, config.group_size)

    def decompress_tensor(self, parts: Parts, shape: tuple[int, ...], config: KBitConfig) -> Tensor:
        n = 1
        for dim in shape:
            n *= dim
        return dequantize_groups(parts, n, config.group_size).reshape(shape)
