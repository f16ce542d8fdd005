"""The compressed delta in memory and on disk.

On disk a compressed delta is a directory::

    manifest.json           format, version, method config, base fingerprint, per-tensor encoding,
                            part shapes/dtypes, sizes, errors, checksums of every other file
    tensors.safetensors     the parts, keyed ``<tensor name>::<part>`` (packed sign bits, scales, ...)
    tokenizer/              the fine-tune's tokenizer files, so a merge is a complete model

Loading checks the format and version, the method config (through the registry), every checksum,
every part's shape and dtype, and — when a base is given — the base fingerprint.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from deltaguard.delta.fingerprint import fingerprint_model
from deltaguard.delta.methods import CompressorConfig, compressors
from deltaguard.delta.methods.base import DENSE
from deltaguard.delta.report import CompressionReport, TensorStats
from deltaguard.errors import ConfigError, FormatError, IncompatibleBaseError
from deltaguard.io import atomic_dir, read_json, sha256_file, write_json

FORMAT = "deltaguard-delta"
FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")


@dataclass(frozen=True)
class PackedTensor:
    """One tensor's delta in its stored form."""

    name: str
    kind: str                      # "linear" (compressed by the method) or "dense" (16-bit delta)
    encoding: str                  # the method name or "dense16"
    shape: tuple[int, ...]         # shape in the fine-tune
    base_shape: tuple[int, ...]    # shape in the base (differs only for a grown vocabulary)
    parts: dict[str, Tensor]
    stats: TensorStats

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "encoding": self.encoding, "shape": list(self.shape), "base_shape": list(self.base_shape),
            "parts": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in self.parts.items()},
            **self.stats.to_dict(),
        }


@dataclass(frozen=True)
class CompressedDelta:
    """A fine-tune stored as a compressed delta over one specific base."""

    config: CompressorConfig
    base_fingerprint: str
    tensors: dict[str, PackedTensor]
    model_config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    tokenizer_dir: Path | None = None

    @property
    def report(self) -> CompressionReport:
        rows = tuple((t.name, t.kind, t.encoding, t.stats) for t in self.tensors.values())
        return CompressionReport(self.config.label, rows, int(self.meta.get("n_model_params", 0)),
                                 int(self.meta.get("n_unchanged_tensors", 0)), "calibration" in self.meta)

    def decompress(self, name: str) -> Tensor:
        """The fp32 delta of one tensor over the base rows (grown rows are in ``parts['extra_rows']``)."""
        packed = self.tensors[name]
        if packed.encoding == DENSE:
            return packed.parts["delta"].to(torch.float32)
        compressor = compressors.get(packed.encoding)()
        return compressor.decompress_tensor(packed.parts, packed.base_shape, self.config)

    def with_parts(self, updates: dict[str, dict[str, Tensor]], meta: dict[str, Any]) -> "CompressedDelta":
        """A copy with some tensors' parts replaced (used by calibration); stats are kept."""
        tensors = {name: dataclasses.replace(t, parts={**t.parts, **updates.get(name, {})}) for name, t in self.tensors.items()}
        return dataclasses.replace(self, tensors=tensors, meta={**self.meta, **meta})

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the directory atomically; an existing one is replaced only with ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} already exists (pass overwrite / --force, or choose another output)")
        check_finite(self.tensors, where=f"delta for {path}")  # never write what load_delta would refuse
        with atomic_dir(path, overwrite=overwrite) as tmp:
            flat = {f"{name}::{part}": tensor.contiguous() for name, t in self.tensors.items() for part, tensor in t.parts.items()}
            save_file(flat, str(tmp / TENSORS_FILE), metadata={"format": FORMAT})
            files = {TENSORS_FILE: _file_entry(tmp / TENSORS_FILE)}
            if self.tokenizer_dir is not None:
                for name in TOKENIZER_FILES:
                    source = self.tokenizer_dir / name
                    if source.is_file():
                        (tmp / TOKENIZER_DIR).mkdir(exist_ok=True)
                        shutil.copyfile(source, tmp / TOKENIZER_DIR / name)
                        files[f"{TOKENIZER_DIR}/{name}"] = _file_entry(tmp / TOKENIZER_DIR / name)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "tool_version": _tool_version(),
                "method": self.config.to_dict(),
                "base_fingerprint": self.base_fingerprint,
                "model_config": self.model_config,
                "meta": self.meta,
                "summary": self.report.summary(),
                "tensors": {name: t.manifest_entry() for name, t in self.tensors.items()},
                "files": files,
            }
            write_json(tmp / MANIFEST_FILE, manifest)
        return path


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "n_bytes": path.stat().st_size}


def _tool_version() -> str:
    from deltaguard import __version__

    return __version__


def load_delta(path: str | Path, *, base: Any = None) -> CompressedDelta:
    """Read and verify a compressed delta; with ``base`` (a model or model spec) check the fingerprint."""
    path = Path(path)
    if not path.is_dir():
        raise FormatError(f"{path} is not a compressed delta directory (it does not exist or is a file)")
    manifest = read_json(path / MANIFEST_FILE, what="delta manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError(f"{path}/{MANIFEST_FILE} is not a deltaguard delta manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FormatError(
            f"{path} has delta format version {manifest.get('format_version')}; this deltaguard reads version {FORMAT_VERSION}"
        )
    try:
        method = manifest["method"]
        config_cls = compressors.get(method["method"]).config_cls
        config = config_cls.from_dict(method)
        files, entries = manifest["files"], manifest["tensors"]
        fingerprint, model_config = manifest["base_fingerprint"], manifest["model_config"]
    except ConfigError as exc:
        raise FormatError(f"{path}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise FormatError(f"{path}/{MANIFEST_FILE} is missing field {exc}") from None
    for name, entry in files.items():
        file_path = path / name
        if not file_path.is_file():
            raise FormatError(f"{path} is incomplete: {name} is missing")
        if file_path.stat().st_size != entry["n_bytes"] or sha256_file(file_path) != entry["sha256"]:
            raise FormatError(f"{file_path} is corrupted or truncated (checksum mismatch)")
    try:
        flat = load_file(str(path / TENSORS_FILE))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise FormatError(f"{path / TENSORS_FILE} is not readable ({exc})") from None
    tensors = {}
    expected_keys = set()
    for name, entry in entries.items():
        parts = {}
        for part, spec in entry["parts"].items():
            key = f"{name}::{part}"
            expected_keys.add(key)
            if key not in flat:
                raise FormatError(f"{path} lacks tensor {key}")
            tensor = flat[key]
            if list(tensor.shape) != spec["shape"] or str(tensor.dtype).removeprefix("torch.") != spec["dtype"]:
                raise FormatError(
                    f"{path}: {key} is {list(tensor.shape)} {tensor.dtype}, manifest says {spec['shape']} {spec['dtype']}"
                )
            parts[part] = tensor
        stats = TensorStats(entry["n_params"], entry["n_bytes"], entry["rel_error"], entry["cosine"], entry.get("note", ""))
        tensors[name] = PackedTensor(name, entry["kind"], entry["encoding"], tuple(entry["shape"]),
                                     tuple(entry["base_shape"]), parts, stats)
    if extra := set(flat) - expected_keys:
        raise FormatError(f"{path} holds tensors the manifest does not list: {', '.join(sorted(extra)[:3])}")
    check_finite(tensors, where=str(path))
    tokenizer_dir = path / TOKENIZER_DIR if (path / TOKENIZER_DIR).is_dir() else None
    delta = CompressedDelta(config, fingerprint, tensors, model_config, manifest.get("meta", {}), tokenizer_dir)
    if base is not None:
        check_base(delta, base, where=str(path))
    return delta


def check_finite(tensors: dict[str, PackedTensor], *, where: str) -> None:
    """Raise FormatError if any floating-point part holds NaN or ±inf.

    A checksum only proves the file is the one written; a delta written with NaN scales would still load,
    merge and — served — make every sampled token NaN. Integer parts (packed bits, codes) cannot be
    non-finite.
    """
    for name, packed in tensors.items():
        for part, tensor in packed.parts.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                n_bad = int((~torch.isfinite(tensor)).sum())
                raise FormatError(f"{where}: {name}::{part} holds {n_bad} NaN or infinite value(s); the delta is "
                                  "corrupt (re-create it from the fine-tune)")


def base_fingerprint_of(base: Any) -> str:
    """Fingerprint of an in-memory model, or of a checkpoint given by spec/path (streamed)."""
    if hasattr(base, "state_dict"):
        return fingerprint_model(base)
    from deltaguard.delta.checkpoint import CheckpointReader
    from deltaguard.delta.fingerprint import combine, tensor_digest

    with CheckpointReader(base) as reader:
        return combine((name, reader.shape(name), tensor_digest(reader.get(name))) for name in reader.names())


def check_base(delta: CompressedDelta, base: Any, *, where: str = "delta") -> None:
    """Raise IncompatibleBaseError unless ``base`` (a model or a model spec) is the model the delta was made from."""
    check_fingerprint(delta, base_fingerprint_of(base), where=where)


def check_fingerprint(delta: CompressedDelta, fingerprint: str, *, where: str = "delta",
                      base_name: str = "this base") -> None:
    """The one base check: raise IncompatibleBaseError unless the delta was made for ``fingerprint``."""
    if fingerprint != delta.base_fingerprint:
        source = delta.meta.get("base", {}).get("source", "another model")
        raise IncompatibleBaseError(
            f"{where} was made for base {source} (fingerprint {delta.base_fingerprint[12:24]}…), "
            f"not for {base_name} (fingerprint {fingerprint[12:24]}…)"
        )
