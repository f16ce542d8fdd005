"""Read HF checkpoints tensor by tensor from safetensors (single file or sharded), never whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file  # noqa: F401  (re-exported for callers that want whole files)
from torch import Tensor

from deltaguard.errors import FormatError, ModelLoadError
from deltaguard.models import resolve_model_dir


class CheckpointReader:
    """Lazy name → tensor access over a model directory's safetensors files."""

    def __init__(self, spec: str | Path) -> None:
        self.model_dir = resolve_model_dir(spec)
        self.config: dict[str, Any] = _read_config(self.model_dir)
        self._file_of: dict[str, Path] = {}
        index = self.model_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise FormatError(f"{index} is not a valid safetensors index ({exc})") from None
            self._file_of = {name: self.model_dir / fname for name, fname in weight_map.items()}
        else:
            for path in sorted(self.model_dir.glob("*.safetensors")):
                for name in self._keys(path):
                    self._file_of[name] = path
        self._handles: dict[Path, Any] = {}

    @staticmethod
    def _keys(path: Path) -> list[str]:
        try:
            with safe_open(path, framework="pt") as handle:
                return list(handle.keys())
        except Exception as exc:  # safetensors raises several types for truncated/corrupt headers
            raise FormatError(f"{path} is not a readable safetensors file ({exc})") from None

    def _handle(self, path: Path) -> Any:
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(path, framework="pt")
            except Exception as exc:
                raise FormatError(f"{path} is not a readable safetensors file ({exc})") from None
        return self._handles[path]

    def names(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(self._file_of[name]).get_slice(name).get_shape())

    def get(self, name: str) -> Tensor:
        try:
            return self._handle(self._file_of[name]).get_tensor(name)
        except KeyError:
            raise FormatError(f"{self.model_dir} has no tensor {name!r}") from None
        except Exception as exc:
            raise FormatError(f"tensor {name!r} in {self._file_of[name]} could not be read ({exc})") from None

    @property
    def is_tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{model_dir}/config.json is unreadable ({exc})") from None
    # transformers 5 nests text settings for some families; a flat dict is all we need here.
    return config


def tensors_equal_dtype(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def iter_pairs(base: CheckpointReader, finetuned: CheckpointReader) -> Iterator[tuple[str, Tensor | None, Tensor]]:
    """Yield (name, base tensor or None, fine-tuned tensor) one pair at a time."""
    for name in finetuned.names():
        base_name = name if name in base else None
        yield name, base.get(base_name) if base_name else None, finetuned.get(name)
