"""The compressor interface, its config base and the registry every delta method joins.

A compressor turns one linear layer's delta ``[out, in]`` (fp32) into named parts (tensors saved in
safetensors) and back. Everything else — streaming, non-linear tensors, the format, reports, the
in-memory path — is shared, so adding a method is adding one file here and one import line.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from torch import Tensor

from deltaguard.config import Config, check_choice
from deltaguard.errors import ConfigError
from deltaguard.registry import Registry

Parts = dict[str, Tensor]


@dataclass(frozen=True, kw_only=True)
class CompressorConfig(Config):
    """Settings every delta compressor shares.

    Args:
        targets: globs over module names (the tensor name without ``.weight``) whose 2-D weights
            are compressed by the method; other changed tensors are stored as 16-bit deltas.
        exclude: globs removed from ``targets`` (the output head by default, as in BitDelta).
        on_incompatible: ``raise`` (default) when a targeted tensor cannot be compressed, or
            ``keep`` to store it as a 16-bit delta and list it in the report.
    """

    targets: tuple[str, ...] = ("*_proj",)
    exclude: tuple[str, ...] = ("lm_head", "*.lm_head")
    on_incompatible: Literal["raise", "keep"] = "raise"

    def __post_init__(self) -> None:
        check_choice(f"{self.name}.on_incompatible", self.on_incompatible, ("raise", "keep"))
        if not self.targets:
            raise ConfigError(f"{self.name}.targets must name at least one module glob")

    def is_target(self, tensor_name: str) -> bool:
        if not tensor_name.endswith(".weight"):
            return False
        module = tensor_name[: -len(".weight")]
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in self.exclude):
            return False
        return any(fnmatch.fnmatchcase(module, pattern) for pattern in self.targets)

    @property
    def label(self) -> str:
        """A short human name for tables (e.g. ``bitdelta-k2``)."""
        return self.name


C = TypeVar("C", bound=CompressorConfig)


class Compressor(ABC, Generic[C]):
    """Compress and decompress one linear delta; optionally multiply by it without decompressing."""

    config_cls: ClassVar[type[CompressorConfig]]

    def requires_calibration(self, config: C) -> bool:
        """Whether ``compress`` must run ``calibrate`` after the per-tensor pass."""
        return False

    @abstractmethod
    def compress_tensor(self, delta: Tensor, config: C, *, name: str) -> Parts:
        """Encode one fp32 delta ``[out, in]`` into named tensors."""

    @abstractmethod
    def decompress_tensor(self, parts: Parts, shape: tuple[int, ...], config: C) -> Tensor:
        """Decode the parts back into an fp32 delta of ``shape``."""

    def delta_matmul(self, x: Tensor, parts: Parts, shape: tuple[int, ...], config: C) -> Tensor:
        """``x @ delta.T`` from the compressed parts; methods with a cheaper factored form override it."""
        return x @ self.decompress_tensor(parts, shape, config).to(x.dtype).T

    def calibrate(self, packed: Any, calib: list[str], *, progress: bool = True) -> Any:
        raise ConfigError(f"{self.config_cls.name} has no calibration step")


compressors: Registry[type[Compressor[Any]]] = Registry("compressor")


def parts_n_bytes(parts: Parts) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


def to_16bit(delta: Tensor) -> Tensor:
    """fp16 keeps small deltas better than bf16 (10 vs 7 mantissa bits); fall back when out of range."""
    if delta.numel() and delta.abs().max() > 60000:
        return delta.to(torch.float32)
    return delta.to(torch.float16)
