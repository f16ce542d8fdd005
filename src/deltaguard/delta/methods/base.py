"""The compressor interface, its config base and the registry every delta method joins.

A compressor turns one linear layer's delta ``[out, in]`` (fp32) into named parts (tensors saved in
safetensors) and back. Everything else — streaming, non-linear tensors, the format, reports, the
in-memory path — is shared, so adding a method is adding one file here and one import line.

The contract, all of it on the method's own classes (no caller ever tests a method's name):

* the config owns its short labels: ``label`` (``bitdelta-k2``) and ``parse_label`` (the reverse);
* the config says whether it calibrates (``needs_calibration``) and how to switch that off
  (``without_calibration``); the compressor's ``calibrate`` then receives a ``Calibration``;
* ``default_labels`` are the labels the method adds to the default audit sweep;
* a method whose parts are sign planes (``Δ ≈ Σ s_k·sign_k``) says so through ``sign_planes``, and
  the server runs it with the 1-bit kernels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

import torch
from torch import Tensor

from deltaguard.config import Config, check_choice
from deltaguard.errors import ConfigError
from deltaguard.modules import matches
from deltaguard.registry import Registry

Parts = dict[str, Tensor]
DENSE = "dense16"  # encoding of non-targeted tensors: the delta in 16 bits (+ grown rows in full)


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
        return matches(tensor_name[: -len(".weight")], self.targets, self.exclude)

    @property
    def label(self) -> str:
        """A short human name for tables (e.g. ``bitdelta-k2``); ``parse_label`` reads it back."""
        return self.name

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        """The fields a short label stands for (``kbit4`` → ``{"bits": 4}``), or None if it is not this method's.

        The method's registry name always parses (to its defaults); methods with settings in their
        labels override this.
        """
        return {} if label == cls.name else None

    @property
    def needs_calibration(self) -> bool:
        """Whether ``compress`` must run the compressor's ``calibrate`` step (with calibration text)."""
        return False

    def without_calibration(self) -> Self:
        """The same method with its calibration step switched off (``--no-calibrate``)."""
        raise ConfigError(f"{self.name} has no calibration step to switch off")


@dataclass(frozen=True)
class Calibration:
    """What a calibrated method receives after the per-tensor pass.

    Args:
        texts: calibration texts, already formatted as the model sees them (e.g. chat turns).
        base: the base model (loaded, or a spec); None: the source recorded in the delta.
        finetuned: the fine-tuned model (loaded, or a spec); None: the source recorded in the delta.
        device: where calibration runs (``cpu``, ``cuda``, ``cuda:N``, ``auto``).
    """

    texts: tuple[str, ...]
    base: Any = None
    finetuned: Any = None
    device: str = "cpu"

    @classmethod
    def of(cls, calib: "Calibration | list[str] | tuple[str, ...] | None", **defaults: Any) -> "Calibration | None":
        """Accept a ``Calibration`` or a plain list of texts (the older form)."""
        if calib is None or isinstance(calib, Calibration):
            return calib
        return cls(texts=tuple(calib), **defaults)


C = TypeVar("C", bound=CompressorConfig)


class Compressor(ABC, Generic[C]):
    """Compress and decompress one linear delta; optionally multiply by it without decompressing."""

    config_cls: ClassVar[type[CompressorConfig]]
    default_labels: ClassVar[tuple[str, ...]] = ()   # labels this method adds to the default audit sweep

    @abstractmethod
    def compress_tensor(self, delta: Tensor, config: C, *, name: str) -> Parts:
        """Encode one fp32 delta ``[out, in]`` into named tensors."""

    @abstractmethod
    def decompress_tensor(self, parts: Parts, shape: tuple[int, ...], config: C) -> Tensor:
        """Decode the parts back into an fp32 delta of ``shape``."""

    def delta_matmul(self, x: Tensor, parts: Parts, shape: tuple[int, ...], config: C) -> Tensor:
        """``x @ delta.T`` from the compressed parts; methods with a cheaper factored form override it."""
        return x @ self.decompress_tensor(parts, shape, config).to(x.dtype).T

    def sign_planes(self, parts: Parts) -> tuple[Tensor, Tensor] | None:
        """``(signs [k, out, ceil(in/8)] uint8, scales [k])`` when ``Δ = Σ_k scales[k]·sign_k`` exactly, so the
        server's packed 1-bit kernels can run it; None (the default) for any other encoding."""
        return None

    def calibrate(self, packed: Any, calib: Calibration, *, progress: bool = True) -> Any:
        """Return a copy of ``packed`` improved on calibration data (methods with ``needs_calibration``)."""
        raise ConfigError(f"{self.config_cls.name} has no calibration step")


compressors: Registry[type[Compressor[Any]]] = Registry("compressor")


def parts_n_bytes(parts: Parts) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


def to_16bit(delta: Tensor) -> Tensor:
    """fp16 keeps small deltas better than bf16 (10 vs 7 mantissa bits); fall back when out of range."""
    if delta.numel() and delta.abs().max() > 60000:
        return delta.to(torch.float32)
    return delta.to(torch.float16)
