"""Put a compressed delta to use: merged into weights, or applied on the fly from its compressed form.

* ``apply_delta_`` merges base + decompressed delta into a loaded model, in place;
* ``merge`` does that to a fresh copy of the base and saves a Hugging Face directory;
* ``attach_delta_`` keeps each base weight as it is (shareable) and wraps the targeted linears in
  ``DeltaLinear``, which adds ``x·Δᵀ`` computed from the packed parts at every forward.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deltaguard.delta.methods import DENSE, compressors
from deltaguard.delta.store import CompressedDelta, PackedTensor, check_base, load_delta
from deltaguard.errors import ConfigError, IncompatibleBaseError
from deltaguard.models import load_model, load_tokenizer, resolve_model_dir, save_model
from deltaguard.modules import get_module, replace_module


def _as_delta(delta: CompressedDelta | str | Path) -> CompressedDelta:
    return delta if isinstance(delta, CompressedDelta) else load_delta(delta)


def _prepare(model: Any, delta: CompressedDelta | str | Path, *, check: bool) -> CompressedDelta:
    """Load the delta if needed, verify the base, and shape vocabulary and head like the fine-tune's."""
    delta = _as_delta(delta)
    if check:
        check_base(delta, model, where="delta")
    _prepare_vocab_and_head(model, delta)
    return delta


def _prepare_vocab_and_head(model: Any, delta: CompressedDelta) -> None:
    """Grow the vocabulary and untie the head when the fine-tune did."""
    new_vocab = delta.model_config.get("vocab_size")
    current = model.get_input_embeddings().weight.shape[0]
    if new_vocab and new_vocab > current:
        model.resize_token_embeddings(new_vocab, mean_resizing=False)
    wants_tied = bool(delta.model_config.get("tie_word_embeddings", False))
    head = model.get_output_embeddings()
    if head is not None and not wants_tied and head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False


def _add_dense_(param: Tensor, packed: PackedTensor) -> None:
    rows = packed.base_shape[0] if packed.base_shape else None
    delta = packed.parts["delta"].to(param.device, param.dtype)
    if packed.shape != packed.base_shape:
        param[:rows] += delta
        param[rows:] = packed.parts["extra_rows"].to(param.device, param.dtype)
    else:
        param += delta


def apply_delta_(model: Any, delta: CompressedDelta | str | Path, *, check: bool = True) -> Any:
    """Merge the delta into ``model``'s weights in place (checks the base fingerprint first)."""
    delta = _prepare(model, delta, check=check)
    with torch.no_grad():
        for name, packed in delta.tensors.items():
            param = _parameter(model, name)
            if packed.encoding == DENSE:
                _add_dense_(param, packed)
            else:
                param += delta.decompress(name).to(param.device, param.dtype)
    return model


def apply_delta(model: Any, delta: CompressedDelta | str | Path, *, check: bool = True) -> Any:
    """A merged copy of ``model``; the original is left untouched."""
    return apply_delta_(copy.deepcopy(model), delta, check=check)


def merge(base: str | Path, delta: CompressedDelta | str | Path, out_dir: str | Path, *,
          dtype: str = "float32", overwrite: bool = False) -> Path:
    """base + decompressed delta → a Hugging Face directory that ``transformers`` loads."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir} already exists (choose another output or pass --force)")
    delta = _as_delta(delta)
    model = load_model(base, dtype=dtype)
    apply_delta_(model, delta)
    save_model(model, _merge_tokenizer(delta, base), out_dir, overwrite=overwrite)
    return out_dir


def _merge_tokenizer(delta: CompressedDelta, base: str | Path) -> Any:
    """The fine-tune's tokenizer kept in the delta, else the base's, else none (weights only)."""
    for source in (delta.tokenizer_dir, resolve_model_dir(base)):
        if source is not None and (Path(source) / "tokenizer_config.json").is_file():
            return load_tokenizer(source)
    return None


def _parameter(model: Any, name: str) -> Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        raise IncompatibleBaseError(f"the model has no parameter {name!r} that the delta changes") from None


class DeltaLinear(nn.Module):
    """``base(x) + x·Δᵀ`` with Δ kept in its compressed parts; the base weight is shared, not copied."""

    def __init__(self, base: nn.Linear, packed: PackedTensor, delta: CompressedDelta) -> None:
        super().__init__()
        self.base = base
        self.compressor = compressors.get(packed.encoding)()
        self.config = delta.config
        self.shape = packed.base_shape
        for part, tensor in packed.parts.items():
            self.register_buffer(part.replace(".", "__"), tensor, persistent=False)
        self._part_names = list(packed.parts)

    @property
    def parts(self) -> dict[str, Tensor]:
        return {p: getattr(self, p.replace(".", "__")) for p in self._part_names}

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.compressor.delta_matmul(x, self.parts, self.shape, self.config)


def attach_delta_(model: Any, delta: CompressedDelta | str | Path, *, check: bool = True) -> Any:
    """Apply the delta on the fly: targeted linears become ``DeltaLinear``; 16-bit deltas are merged."""
    delta = _prepare(model, delta, check=check)
    with torch.no_grad():
        for name, packed in delta.tensors.items():
            if packed.encoding == DENSE:
                _add_dense_(_parameter(model, name), packed)
                continue
            module_name = name.removesuffix(".weight")
            linear = get_module(model, module_name)
            if not isinstance(linear, nn.Linear):
                raise IncompatibleBaseError(f"{module_name} is a {type(linear).__name__}, not a Linear layer")
            replace_module(model, module_name, DeltaLinear(linear, packed, delta))
    return model


def detach_delta_(model: Any) -> Any:
    """Undo ``attach_delta_`` for the linear layers (16-bit merges stay)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, DeltaLinear):
            replace_module(model, name, module.base)
    return model

