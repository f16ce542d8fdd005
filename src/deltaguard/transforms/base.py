"""Whole-model transforms: the interface and registry for methods that change a whole model's weights.

Delta compressors (``deltaguard.delta``) store a fine-tune as a compressed difference from its base. A
*transform* instead rewrites a model itself: quantization, pruning, Q-realign. The audit and the
evaluation core treat both alike (a ``Variant`` is "base + compressed delta" or "a transform of a
model"), so a transform is one file with a config and an ``apply_`` method, registered in
``transforms``, and it appears in ``audit --methods`` and in ``deltaguard list transforms``.

A transform's config owns its short label and parser, as compressors' do; a transform that needs
calibration data says so (``needs_calibration``) and receives the texts; one that needs a second model (the
aligned reference Q-realign restores) says ``needs_reference`` and receives it loaded.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from deltaguard.config import Config
from deltaguard.errors import ConfigError
from deltaguard.registry import Registry


@dataclass(frozen=True, kw_only=True)
class TransformConfig(Config):
    """Settings every whole-model transform shares (none yet); subclasses add their own."""

    @property
    def label(self) -> str:
        """A short name for tables; ``parse_label`` reads it back."""
        return self.name

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        """The fields a short label stands for, or None if the label is not this transform's."""
        return {} if label == cls.name else None

    @property
    def needs_calibration(self) -> bool:
        return False

    @property
    def needs_reference(self) -> bool:
        """Whether ``apply_`` needs a reference model (Q-realign's aligned model)."""
        return False

    @property
    def saves_model(self) -> bool:
        """Whether the result is worth saving once (expensive calibration) rather than redone on each load."""
        return False


C = TypeVar("C", bound=TransformConfig)


class Transform(ABC, Generic[C]):
    """Rewrites a loaded model in place (``apply_``) and describes what it did (``record``)."""

    config_cls: ClassVar[type[TransformConfig]]

    @abstractmethod
    def apply_(self, model: Any, config: C, *, calib: list[str] | None = None, tokenizer: Any = None,
               reference: Any = None, workdir: Path | None = None) -> Any:
        """Transform ``model`` in place and return it (``reference``: a second model, when the config needs one;
        ``workdir``: where a long transform may keep state to resume from after an interruption)."""

    def record(self, config: C) -> dict[str, Any]:
        """What to report about the transformed model (bits per parameter, sparsity, ...)."""
        return {"method": config.to_dict()}


transforms: Registry[type[Transform[Any]]] = Registry("transform")


def transform_from_spec(spec: str, **overrides: Any) -> TransformConfig:
    """A transform config from its short label or registry name (e.g. ``bf16``)."""
    label = spec.strip().lower()
    for name in transforms.names():
        config_cls = transforms.get(name).config_cls
        fields = config_cls.parse_label(label)
        if fields is not None:
            return config_cls.from_fields({**fields, **overrides})
    close = difflib.get_close_matches(label, transforms.names(), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown transform {spec!r}{hint}; known: {', '.join(transforms.names())}")


def is_transform_spec(spec: str) -> bool:
    label = spec.strip().lower()
    return any(transforms.get(name).config_cls.parse_label(label) is not None for name in transforms.names())


__all__ = ["Transform", "TransformConfig", "is_transform_spec", "transform_from_spec", "transforms"]
