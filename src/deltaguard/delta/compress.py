"""``compress``: stream a delta through a registered method into a ``CompressedDelta``."""

from __future__ import annotations

import difflib
import logging
from typing import Any

import torch

from deltaguard.delta.extract import Delta
from deltaguard.delta.fingerprint import combine, tensor_digest
from deltaguard.delta.methods import CompressorConfig, compressors
from deltaguard.delta.methods.base import DENSE, Calibration, parts_n_bytes, to_16bit
from deltaguard.delta.report import TensorStats, fidelity
from deltaguard.delta.store import CompressedDelta, PackedTensor
from deltaguard.errors import ConfigError
from deltaguard.progress import progress_bar

log = logging.getLogger("deltaguard.delta")


def compress(delta: Delta, config: CompressorConfig, *, calib: Calibration | list[str] | None = None,
             progress: bool = True) -> CompressedDelta:
    """Compress every changed tensor: targeted linear weights with the method, the rest as 16-bit deltas.

    Methods whose config ``needs_calibration`` then run their ``calibrate`` step on ``calib`` (a
    ``Calibration``, or a list of texts); without calibration text they raise instead of silently
    skipping the step.
    """
    compressor = compressors.get(config.name)()
    calibration = Calibration.of(calib)
    if config.needs_calibration and (calibration is None or not calibration.texts):
        raise ConfigError(f"{config.label} needs calibration text (--calib SET_OR_FILE), or switch its calibration "
                          "off (--no-calibrate)")
    digests, tensors, n_unchanged = _pack_all(delta, compressor, config, progress=progress)
    missing = set(delta.base_tensor_names) - set(digests)
    # base tensors with no fine-tune counterpart cannot exist after extract_delta's checks (an invariant)
    assert not missing, f"base tensors {sorted(missing)[:3]} were not fingerprinted"
    meta = {
        "base": {"source": str(delta.base_dir), "model_type": delta.base_config.get("model_type")},
        "finetuned": {"source": str(delta.finetuned_dir)},
        "n_model_params": delta.n_finetuned_params,
        "n_unchanged_tensors": n_unchanged,
        "tie_word_embeddings": bool(delta.finetuned_config.get("tie_word_embeddings", False)),
    }
    packed = CompressedDelta(config, combine(digests.values()), tensors, delta.finetuned_config, meta,
                             _tokenizer_dir(delta))
    if tensors and not any(t.kind == "linear" for t in tensors.values()):
        log.warning(nothing_compressed_message(config))
    if config.needs_calibration:
        assert calibration is not None
        packed = compressor.calibrate(packed, calibration, progress=progress)
    return packed



def _pack_all(delta: Delta, compressor: Any, config: CompressorConfig, *, progress: bool
              ) -> tuple[dict[str, tuple[str, tuple[int, ...], str]], dict[str, PackedTensor], int]:
    """(base digests, packed tensors, unchanged count) over every tensor pair.

    A function of its own so that the last pair read dies with it: its tensors view the checkpoints'
    memory maps, and a live one kept both models' pages (~1 GB at 135M) resident through calibration.
    """
    digests: dict[str, tuple[str, tuple[int, ...], str]] = {}
    tensors: dict[str, PackedTensor] = {}
    n_unchanged = 0
    with progress_bar(f"compress ({config.label})", len(delta.entries), enabled=progress) as bar:
        for pair in delta.iter_pairs():
            entry = pair.entry
            if entry.base_name not in digests:
                digests[entry.base_name] = (entry.base_name, entry.base_shape, tensor_digest(pair.base))
            diff = pair.delta
            if not entry.n_extra_rows and not torch.any(diff):
                n_unchanged += 1
                bar.advance()
                continue
            tensors[entry.name] = _pack_one(compressor, config, pair, diff)
            bar.advance()
    return digests, tensors, n_unchanged

def calibrate(packed: CompressedDelta, calib: Calibration | list[str], *, progress: bool = True) -> CompressedDelta:
    """Rerun a calibrated method's calibration step on an already compressed delta."""
    if not packed.config.needs_calibration:
        raise ConfigError(f"{packed.config.label} has no calibration step to run")
    calibration = Calibration.of(calib)
    assert calibration is not None
    return compressors.get(packed.config.name)().calibrate(packed, calibration, progress=progress)


def nothing_compressed_message(config: CompressorConfig) -> str:
    return (f"{config.label}: targets {list(config.targets)} (minus exclude {list(config.exclude)}) matched no changed "
            "2-D weight, so nothing was compressed by the method: every changed tensor is stored as a 16-bit delta")


def _pack_one(compressor: Any, config: CompressorConfig, pair: Any, diff: torch.Tensor) -> PackedTensor:
    entry = pair.entry
    note = ""
    if config.is_target(entry.name):
        problem = _incompatibility(entry, diff)
        if problem is None:
            parts = compressor.compress_tensor(diff, config, name=entry.name)
            approx = compressor.decompress_tensor(parts, entry.base_shape, config)
            error, cosine = fidelity(diff, approx)
            stats = TensorStats(diff.numel(), parts_n_bytes(parts), error, cosine)
            return PackedTensor(entry.name, "linear", config.name, entry.shape, entry.base_shape, parts, stats)
        if config.on_incompatible == "raise":
            raise ConfigError(f"{config.name} cannot compress {entry.name}: {problem} (set on_incompatible=keep to store it in 16 bits)")
        note = f"kept in 16 bits: {problem}"
    parts = {"delta": to_16bit(diff)}
    if entry.n_extra_rows:
        parts["extra_rows"] = pair.finetuned[entry.base_shape[0]:].contiguous()
    error, cosine = fidelity(diff, parts["delta"].float())
    n_params = diff.numel() + (parts["extra_rows"].numel() if entry.n_extra_rows else 0)
    stats = TensorStats(n_params, parts_n_bytes(parts), error, cosine, note)
    return PackedTensor(entry.name, "dense", DENSE, entry.shape, entry.base_shape, parts, stats)


def _incompatibility(entry: Any, diff: torch.Tensor) -> str | None:
    if diff.dim() != 2:
        return f"it is {diff.dim()}-D, not a 2-D weight"
    if entry.n_extra_rows:
        return "its vocabulary grew"
    return None


def _tokenizer_dir(delta: Delta) -> Any:
    return delta.finetuned_dir if (delta.finetuned_dir / "tokenizer_config.json").is_file() else None


def method_from_spec(spec: str, **overrides: Any) -> CompressorConfig:
    """A config from a method's short label (``bitdelta-k2``, ``kbit4``, ``lowrank16``, ``dare-p0.5``, ...)
    or its registry name; each method parses its own labels (``CompressorConfig.parse_label``)."""
    label = spec.strip().lower()
    for name in compressors.names():
        config_cls = compressors.get(name).config_cls
        fields = config_cls.parse_label(label)
        if fields is not None:
            return config_cls.from_fields({**fields, **overrides})
    known = [lbl for name in compressors.names() for lbl in (name, *compressors.get(name).default_labels)]
    close = difflib.get_close_matches(label, known, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown compressor {spec!r}{hint}; known: {', '.join(compressors.names())} "
                      "(with settings in the label, e.g. bitdelta-k2, kbit4, lowrank16, dare-p0.5, compeft-d0.05)")


def is_method_spec(spec: str) -> bool:
    """Whether some registered compressor parses ``spec`` as one of its labels."""
    label = spec.strip().lower()
    return any(compressors.get(name).config_cls.parse_label(label) is not None for name in compressors.names())


def default_methods() -> tuple[str, ...]:
    """The default audit sweep: every registered method's ``default_labels``, in registry order."""
    return tuple(label for name in compressors.names() for label in compressors.get(name).default_labels)
