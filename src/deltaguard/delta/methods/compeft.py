"""ComPEFT: keep the top-k% delta entries by magnitude and store them as ``sign × α·σ(Δ)``.

With ``alpha`` unset, the scale is the least-squares optimum for the kept signs (the mean magnitude
of the kept entries), reported as ``α = scale / σ(Δ)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from deltaguard.config import check_range
from deltaguard.delta.methods.base import Compressor, CompressorConfig, Parts, compressors
from deltaguard.delta.packing import pack_bits, unpack_bits


@dataclass(frozen=True, kw_only=True)
class ComPeftConfig(CompressorConfig):
    """Top-k sparsified sign delta with one scale (Yadav et al., 2023).

    Args:
        density: fraction of entries kept, in (0, 1] (default 0.1).
        alpha: multiplier of the delta's std; None picks the least-squares scale.
    """

    name: ClassVar[str] = "compeft"
    version: ClassVar[int] = 1
    density: float = 0.1
    alpha: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("compeft.density", self.density, 0.0, 1.0, low_inclusive=False)
        if self.alpha is not None:
            check_range("compeft.alpha", self.alpha, 0.0, low_inclusive=False)

    @property
    def label(self) -> str:
        return f"compeft-d{self.density:g}"

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        """``compeft-dD``: keep density D."""
        match = re.fullmatch(rf"{cls.name}(?:-d(?P<d>\d+(?:\.\d*)?|\.\d+))?", label)
        return None if match is None else ({"density": float(match["d"])} if match["d"] else {})


@compressors.register("compeft")
class ComPeft(Compressor[ComPeftConfig]):
    """Keep the top k% entries by magnitude, stored as sign x alpha*std(delta)."""

    config_cls = ComPeftConfig
    default_labels = ("compeft",)

    def compress_tensor(self, delta: Tensor, config: ComPeftConfig, *, name: str) -> Parts:
        flat = delta.to(torch.float32).reshape(-1)
        n_keep = max(1, round(config.density * flat.numel()))
        top = flat.abs().topk(n_keep).indices
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[top] = True
        kept = flat[mask]
        if config.alpha is None:
            scale = kept.abs().mean()
        else:
            scale = config.alpha * flat.std()
        return {
            "mask": pack_bits(mask.reshape(delta.shape)),
            "signs": pack_bits(kept >= 0),
            "scale": scale.reshape(1).to(torch.float32),
        }

    def decompress_tensor(self, parts: Parts, shape: tuple[int, ...], config: ComPeftConfig) -> Tensor:
        mask = unpack_bits(parts["mask"], shape[-1])
        n_kept = int(mask.sum())
        signs = unpack_bits(parts["signs"], n_kept).to(torch.float32) * 2 - 1
        out = torch.zeros(shape, dtype=torch.float32)
        out[mask] = signs * parts["scale"][0]
        return out
