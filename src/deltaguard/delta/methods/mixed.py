"""Delta-CoMe-style mixed precision: singular vectors quantised at fewer bits the smaller their σ.

``Δ = U·diag(S)·Vᵀ``; the first ``ranks[0]`` singular vector pairs are stored at ``bits[0]`` bits,
the next ``ranks[1]`` at ``bits[1]``, and the remaining ones (up to ``max_rank`` if set) at
``rest_bits``. Each vector has its own fp16 step and offset; singular values stay fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from deltaguard.config import check_choice, check_range
from deltaguard.errors import ConfigError
from deltaguard.delta.methods.base import Compressor, CompressorConfig, Parts, compressors
from deltaguard.delta.methods.quant import dequantize_groups, quantize_groups


@dataclass(frozen=True, kw_only=True)
class MixedConfig(CompressorConfig):
    """Mixed-precision SVD of the delta (Delta-CoMe style).

    Args:
        ranks: sizes of the leading bands of singular vectors (default: 2, then 32).
        bits: bits per element for each leading band (default: 8, then 3).
        rest_bits: bits for every remaining singular vector (default 2; 0 drops them).
        max_rank: cap on the total number of kept singular vectors (0: no cap).
    """

    name: ClassVar[str] = "mixed"
    version: ClassVar[int] = 1
    ranks: tuple[int, ...] = (2, 32)
    bits: tuple[int, ...] = (8, 3)
    rest_bits: int = 2
    max_rank: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.ranks) != len(self.bits):
            raise ConfigError(f"mixed.ranks {self.ranks} and mixed.bits {self.bits} must have the same length")
        for width in (*self.bits, *( [self.rest_bits] if self.rest_bits else [])):
            check_choice("mixed.bits", width, (2, 3, 4, 8))
        for rank in self.ranks:
            check_range("mixed.ranks", rank, 1)
        check_range("mixed.max_rank", self.max_rank, 0)

    def bands(self, full_rank: int) -> list[tuple[int, int, int]]:
        """``(start, stop, bits)`` of each band for a matrix of rank ``full_rank``."""
        limit = min(full_rank, self.max_rank) if self.max_rank else full_rank
        bands, start = [], 0
        for rank, width in zip(self.ranks, self.bits):
            stop = min(start + rank, limit)
            if stop > start:
                bands.append((start, stop, width))
            start = stop
        if self.rest_bits and start < limit:
            bands.append((start, limit, self.rest_bits))
        return bands


@compressors.register("mixed")
class Mixed(Compressor[MixedConfig]):
    """SVD with singular vectors quantised at decreasing bit widths by rank (8/3/2 bits)."""

    config_cls = MixedConfig
    default_labels = ("mixed",)

    def compress_tensor(self, delta: Tensor, config: MixedConfig, *, name: str) -> Parts:
        u, s, vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)
        parts: Parts = {}
        bands = config.bands(s.numel())
        parts["s"] = s[: bands[-1][1] if bands else 0].contiguous()
        for index, (start, stop, width) in enumerate(bands):
            for side, vectors in (("u", u[:, start:stop].T), ("v", vh[start:stop])):
                quantised = quantize_groups(vectors.contiguous(), width, vectors.shape[1])
                for key, value in quantised.items():
                    parts[f"b{index}.{side}.{key}"] = value
        return parts

    def decompress_tensor(self, parts: Parts, shape: tuple[int, ...], config: MixedConfig) -> Tensor:
        out_dim, in_dim = shape
        out = torch.zeros(shape, dtype=torch.float32)
        for index, (start, stop, _width) in enumerate(config.bands(min(shape))):
            u = self._vectors(parts, index, "u", stop - start, out_dim)
            v = self._vectors(parts, index, "v", stop - start, in_dim)
            out += (u.T * parts["s"][start:stop]) @ v
        return out

    @staticmethod
    def _vectors(parts: Parts, index: int, side: str, count: int, length: int) -> Tensor:
        prefix = f"b{index}.{side}."
        band = {key[len(prefix):]: value for key, value in parts.items() if key.startswith(prefix)}
        return dequantize_groups(band, count * length, length).reshape(count, length)
