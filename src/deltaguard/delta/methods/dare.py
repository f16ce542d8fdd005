"""DARE: drop a random fraction ``p`` of delta entries and rescale the rest by ``1/(1−p)``.

The expectation of the result equals the delta. Storage is a keep-mask bit per entry plus the kept
values in fp16; the mask is drawn from a generator seeded by ``seed`` and the tensor's name, so
every matrix gets its own pattern and a rerun gives the same one.
"""

from __future__ import annotations

import zlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from deltaguard.config import check_range
from deltaguard.delta.methods.base import Compressor, CompressorConfig, Parts, compressors
from deltaguard.delta.packing import pack_bits, unpack_bits


@dataclass(frozen=True, kw_only=True)
class DareConfig(CompressorConfig):
    """Random drop-and-rescale (Yu et al., 2024).

    Args:
        p: fraction of entries dropped, in [0, 1) (default 0.9).
        seed: base seed of the drop masks.
    """

    name: ClassVar[str] = "dare"
    version: ClassVar[int] = 1
    p: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("dare.p", self.p, 0.0, 1.0, high_inclusive=False)

    @property
    def label(self) -> str:
        return f"dare-p{self.p:g}"

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        """``dare-pP``: drop fraction P."""
        match = re.fullmatch(rf"{cls.name}(?:-p(?P<p>\d+(?:\.\d*)?|\.\d+))?", label)
        return None if match is None else ({"p": float(match["p"])} if match["p"] else {})


def keep_mask(shape: tuple[int, ...], p: float, seed: int, name: str) -> Tensor:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 62))
    return torch.rand(shape, generator=generator) >= p


@compressors.register("dare")
class Dare(Compressor[DareConfig]):
    """Drop a fraction p of delta entries at random, rescale survivors by 1/(1-p); seeded."""

    config_cls = DareConfig
    default_labels = ("dare",)

    def compress_tensor(self, delta: Tensor, config: DareConfig, *, name: str) -> Parts:
        mask = keep_mask(tuple(delta.shape), config.p, config.seed, name)
        kept = (delta[mask].to(torch.float32) / (1.0 - config.p)).to(torch.float16)
        return {"mask": pack_bits(mask), "values": kept}

    def decompress_tensor(self, parts: Parts, shape: tuple[int, ...], config: DareConfig) -> Tensor:
        mask = unpack_bits(parts["mask"], shape[-1])
        out = torch.zeros(shape, dtype=torch.float32)
        out[mask] = parts["values"].float()
        return out
