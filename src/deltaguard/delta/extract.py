"""Pair a base and a fine-tuned checkpoint and stream their per-tensor deltas.

``extract_delta`` checks that the two checkpoints are the same architecture from their configs and
safetensors headers alone (no weights read), and returns a ``Delta`` handle. Its ``iter_tensors``
reads one tensor pair at a time, so compressing a delta never holds two whole models in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from deltaguard.delta.checkpoint import CheckpointReader
from deltaguard.errors import IncompatibleBaseError

# Config fields that must agree for a delta to make sense (vocab_size may grow).
_ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim")
_TIED_HEAD = "lm_head.weight"
_EMBED_SUFFIX = "embed_tokens.weight"


@dataclass(frozen=True)
class DeltaEntry:
    """One fine-tuned tensor and the base tensor it is compared with."""

    name: str
    base_name: str
    shape: tuple[int, ...]
    base_shape: tuple[int, ...]

    @property
    def n_extra_rows(self) -> int:
        """Rows the fine-tune added (a grown vocabulary); they are stored in full."""
        return self.shape[0] - self.base_shape[0] if self.shape != self.base_shape else 0


@dataclass(frozen=True)
class DeltaPair:
    entry: DeltaEntry
    base: Tensor       # fp32, base shape
    finetuned: Tensor  # fp32, fine-tuned shape

    @property
    def delta(self) -> Tensor:
        """finetuned − base over the rows both have."""
        shared = self.finetuned[: self.entry.base_shape[0]] if self.entry.n_extra_rows else self.finetuned
        return shared - self.base


@dataclass(frozen=True)
class Delta:
    """A base/fine-tune pair whose per-tensor differences are read lazily, one pair at a time."""

    base_dir: Path
    finetuned_dir: Path
    base_config: dict[str, Any]
    finetuned_config: dict[str, Any]
    entries: tuple[DeltaEntry, ...]
    base_tensor_names: tuple[str, ...]
    n_finetuned_params: int

    def iter_pairs(self) -> Iterator[DeltaPair]:
        """Yield each tensor pair in fp32; peak memory is one pair."""
        with CheckpointReader(self.base_dir) as base, CheckpointReader(self.finetuned_dir) as finetuned:
            for entry in self.entries:
                yield DeltaPair(entry, base.get(entry.base_name).to(torch.float32),
                                finetuned.get(entry.name).to(torch.float32))

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def extract_delta(base: str | Path, finetuned: str | Path) -> Delta:
    """Check the pair is compatible (headers only) and return a streaming ``Delta``."""
    base_reader, ft_reader = CheckpointReader(base), CheckpointReader(finetuned)
    with base_reader, ft_reader:
        _check_configs(base_reader, ft_reader)
        entries = []
        n_params = 0
        for name in ft_reader.names():
            shape = ft_reader.shape(name)
            n = 1
            for dim in shape:
                n *= dim
            n_params += n
            base_name = name
            if name not in base_reader:
                if name == _TIED_HEAD and base_reader.is_tied:
                    base_name = _embedding_name(base_reader)  # base shares its head with the embedding
                else:
                    raise IncompatibleBaseError(
                        f"architecture mismatch: fine-tune tensor {name!r} does not exist in base {base_reader.model_dir}"
                    )
            base_shape = base_reader.shape(base_name)
            if shape != base_shape and not _is_grown_vocab(name, shape, base_shape):
                raise IncompatibleBaseError(
                    f"architecture mismatch: {name} is {list(shape)} in the fine-tune but {list(base_shape)} in the base"
                )
            entries.append(DeltaEntry(name, base_name, tuple(shape), tuple(base_shape)))
        missing = set(base_reader.names()) - set(ft_reader.names())
        if ft_reader.is_tied:
            missing.discard(_TIED_HEAD)
        if missing:
            raise IncompatibleBaseError(
                f"architecture mismatch: the fine-tune lacks base tensor(s) {', '.join(sorted(missing)[:3])}"
            )
        return Delta(base_reader.model_dir, ft_reader.model_dir, base_reader.config, ft_reader.config,
                     tuple(entries), tuple(base_reader.names()), n_params)


def _check_configs(base: CheckpointReader, finetuned: CheckpointReader) -> None:
    for field in _ARCH_FIELDS:
        a, b = base.config.get(field), finetuned.config.get(field)
        if a != b:
            raise IncompatibleBaseError(
                f"architecture mismatch: {field} is {a!r} in base {base.model_dir} but {b!r} in fine-tune {finetuned.model_dir}"
            )


def _embedding_name(reader: CheckpointReader) -> str:
    for name in reader.names():
        if name.endswith(_EMBED_SUFFIX):
            return name
    raise IncompatibleBaseError(f"base {reader.model_dir} is tied but has no embedding tensor")


def _is_grown_vocab(name: str, shape: tuple[int, ...], base_shape: tuple[int, ...]) -> bool:
    is_vocab_tensor = name.endswith(_EMBED_SUFFIX) or name == _TIED_HEAD
    return is_vocab_tensor and len(shape) == 2 and shape[1:] == base_shape[1:] and shape[0] > base_shape[0]
