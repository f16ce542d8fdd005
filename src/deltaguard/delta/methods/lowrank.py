"""Truncated SVD of the delta: ``Δ ≈ A·B`` with ``A = U_r·S_r`` and ``B = V_rᵀ``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from deltaguard.config import check_choice, check_range
from deltaguard.delta.methods.base import Compressor, CompressorConfig, Parts, compressors


@dataclass(frozen=True, kw_only=True)
class LowRankConfig(CompressorConfig):
    """Keep the top ``rank`` singular directions of each delta.

    Args:
        rank: kept singular values per matrix (capped at min(out, in)).
        dtype: storage dtype of the factors (``float16`` default; ``float32`` is exact for rank ≤ r).
    """

    name: ClassVar[str] = "lowrank"
    version: ClassVar[int] = 1
    rank: int = 16
    dtype: Literal["float16", "float32"] = "float16"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("lowrank.rank", self.rank, 1)
        check_choice("lowrank.dtype", self.dtype, ("float16", "float32"))

    @property
    def label(self) -> str:
        return f"lowrank{self.rank}"

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        """``lowrankR``: keep rank R."""
        match = re.fullmatch(rf"{cls.name}(?P<rank>\d+)?", label)
        return None if match is None else ({"rank": int(match["rank"])} if match["rank"] else {})


@compressors.register("lowrank")
class LowRank(Compressor[LowRankConfig]):
    """Truncated SVD of the delta at a fixed rank (factors in fp16)."""

    config_cls = LowRankConfig
    default_labels = ("lowrank16",)

    def compress_tensor(self, delta: Tensor, config: LowRankConfig, *, name: str) -> Parts:
        u, s, vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)
        r = min(config.rank, s.numel())
        dtype = getattr(torch, config.dtype)
        return {"a": (u[:, :r] * s[:r]).to(dtype).contiguous(), "b": vh[:r].to(dtype).contiguous()}

    def decompress_tensor(self, parts: Parts, shape: tuple[int, ...], config: LowRankConfig) -> Tensor:
        return (parts["a"].float() @ parts["b"].float()).reshape(shape)

    def delta_matmul(self, x: Tensor, parts: Parts, shape: tuple[int, ...], config: LowRankConfig) -> Tensor:
        return (x @ parts["b"].to(x.dtype).T) @ parts["a"].to(x.dtype).T
