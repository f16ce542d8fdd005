"""The compressed delta in memory and on disk.

On disk a compressed delta is a directory::

    manifest.json           format, version, method config, base fingerprint, per-tensor encoding,
                            part shapes/dtypes, sizes, errors, checksums of every other file
    tensors.safetensors     the parts, keyed ``<tensor name>::<part>`` (packed sign bits, scales, ...)
    tokenizer/              the fine-tune's tokenizer files, so a merge is a complete model

Loading checks the manifest's schema, format and version, the method config (through the registry),
that the files on disk are exactly the files the manifest lists, every checksum, every part's shape and
dtype, and — when a base is given — the base fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
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
    _check_manifest(manifest, where=f"{path}/{MANIFEST_FILE}")
    method = manifest["method"]
    try:
        config_cls = compressors.get(method["method"]).config_cls
        config = config_cls.from_dict(method)
    except (ConfigError, FormatError) as exc:
        raise FormatError(f"{path}: {exc}") from None
    except TypeError as exc:  # a field of the right name but a type the config cannot compare
        raise FormatError(f"{path}/{MANIFEST_FILE}: method.fields are not valid for {method['method']} ({exc})") from None
    files, entries = manifest["files"], manifest["tensors"]
    fingerprint, model_config = manifest["base_fingerprint"], manifest["model_config"]
    _check_file_set(path, files)
    for name, entry in files.items():
        file_path = path / name
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
    has_tokenizer = any(name.startswith(f"{TOKENIZER_DIR}/") for name in files)
    tokenizer_dir = path / TOKENIZER_DIR if has_tokenizer else None
    delta = CompressedDelta(config, fingerprint, tensors, model_config, manifest.get("meta", {}), tokenizer_dir)
    if base is not None:
        check_base(delta, base, where=str(path))
    return delta


def _check_file_set(path: Path, files: dict[str, Any]) -> None:
    """Raise FormatError unless the files on disk are exactly the manifest's ``files`` (plus the manifest).

    The checksums prove only what the manifest lists: a file dropped from the list would be loaded
    unverified, so every data file must be listed and nothing unlisted may sit beside them.
    """
    on_disk = set()
    for item in sorted(path.rglob("*")):
        rel = item.relative_to(path).as_posix()
        if item.is_dir() and not item.is_symlink():
            continue
        if item.name.startswith(".") and item.name.endswith(".tmp"):
            raise FormatError(f"{path} holds {rel}, a temporary file left by an interrupted write; a completed delta "
                              "never contains one (re-create the delta, or remove the file if the rest verifies)")
        if not item.is_file():
            raise FormatError(f"{path}: {rel} is not a regular file (a delta holds only the files its manifest lists)")
        if rel != MANIFEST_FILE:
            on_disk.add(rel)
    if missing := sorted(set(files) - on_disk):
        raise FormatError(f"{path} is incomplete: {missing[0]} is missing")
    if unlisted := sorted(on_disk - set(files)):
        raise FormatError(f"{path}: {unlisted[0]} is not listed in {MANIFEST_FILE}, so it cannot be verified "
                          "(remove it, or re-create the delta)")


# The manifest's schema, checked by hand: a dozen field checks do not justify a schema library, and the
# project has none. Every field the loader (or a later reader of ``meta``) touches is checked here, so a
# malformed manifest is one FormatError naming the field instead of a KeyError deep in the loader.
_MISSING = object()
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_manifest(manifest: Any, *, where: str) -> None:
    """Raise FormatError naming the first field of ``manifest`` that has the wrong type or is missing."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError(f"{where} is not a deltaguard delta manifest")
    version = manifest.get("format_version", _MISSING)
    if _is_int(version) and version != FORMAT_VERSION:
        raise FormatError(f"{where} has delta format version {version}; this deltaguard reads version {FORMAT_VERSION}")
    _require(_is_int(version), where, "format_version", f"the integer {FORMAT_VERSION}", version)
    method = _field(manifest, "method", dict, "an object", where)
    _field(method, "method", str, "a string", where, prefix="method.")
    _require(_is_int(method.get("version", _MISSING)), where, "method.version", "an integer",
             method.get("version", _MISSING))
    _field(method, "fields", dict, "an object", where, prefix="method.")
    _field(manifest, "base_fingerprint", str, "a string", where)
    _field(manifest, "model_config", dict, "an object", where)
    if "meta" in manifest:
        meta = _field(manifest, "meta", dict, "an object", where)
        for key in ("base", "finetuned", "calibration"):
            if key in meta:
                _field(meta, key, dict, "an object", where, prefix="meta.")
        for key in ("n_model_params", "n_unchanged_tensors"):
            if key in meta:
                _require(_is_int(meta[key]), where, f"meta.{key}", "an integer", meta[key])
    if "summary" in manifest:
        _field(manifest, "summary", dict, "an object", where)
    files = _field(manifest, "files", dict, "an object of {file name: {sha256, n_bytes}}", where)
    if TENSORS_FILE not in files:
        raise FormatError(f"{where}: files must list {TENSORS_FILE} (every delta has one), got {sorted(files)}")
    for name, entry in files.items():
        parts = PurePosixPath(name).parts
        _require(bool(parts) and not name.startswith("/") and "\\" not in name and "." not in parts
                 and ".." not in parts and PurePosixPath(name).as_posix() == name and name != MANIFEST_FILE,
                 where, f"files key {json.dumps(name)}", "a relative path inside the delta directory", name)
        label = f"files[{json.dumps(name)}]"
        _require(isinstance(entry, dict), where, label, "an object {sha256, n_bytes}", entry)
        sha = entry.get("sha256", _MISSING)
        _require(isinstance(sha, str) and _SHA256.fullmatch(sha) is not None, where, f"{label}.sha256",
                 "64 lower-case hex digits", sha)
        n_bytes = entry.get("n_bytes", _MISSING)
        _require(_is_int(n_bytes) and n_bytes >= 0, where, f"{label}.n_bytes", "a non-negative integer", n_bytes)
    tensors = _field(manifest, "tensors", dict, "an object of {tensor name: entry}", where)
    for name, entry in tensors.items():
        label = f"tensors[{json.dumps(name)}]"
        _require(isinstance(entry, dict), where, label, "an object", entry)
        for key in ("kind", "encoding"):
            _field(entry, key, str, "a string", where, prefix=f"{label}.")
        for key in ("shape", "base_shape"):
            _require(_is_shape(entry.get(key, _MISSING)), where, f"{label}.{key}", "a list of non-negative integers",
                     entry.get(key, _MISSING))
        parts = _field(entry, "parts", dict, "an object of {part: {shape, dtype}}", where, prefix=f"{label}.")
        for part, spec in parts.items():
            part_label = f"{label}.parts[{json.dumps(part)}]"
            _require(isinstance(spec, dict), where, part_label, "an object {shape, dtype}", spec)
            _require(_is_shape(spec.get("shape", _MISSING)), where, f"{part_label}.shape",
                     "a list of non-negative integers", spec.get("shape", _MISSING))
            _field(spec, "dtype", str, "a string", where, prefix=f"{part_label}.")
        for key in ("n_params", "n_bytes"):
            _require(_is_int(entry.get(key, _MISSING)), where, f"{label}.{key}", "an integer", entry.get(key, _MISSING))
        for key in ("rel_error", "cosine"):
            value = entry.get(key, _MISSING)
            _require(_is_number(value), where, f"{label}.{key}", "a number", value)
        if "note" in entry:
            _field(entry, "note", str, "a string", where, prefix=f"{label}.")


def _field(obj: dict[str, Any], key: str, kind: type, wanted: str, where: str, *, prefix: str = "") -> Any:
    value = obj.get(key, _MISSING)
    _require(isinstance(value, kind), where, f"{prefix}{key}", wanted, value)
    return value


def _require(ok: bool, where: str, field_path: str, wanted: str, value: Any) -> None:
    if not ok:
        raise FormatError(f"{where}: {field_path} must be {wanted}, got {_describe(value)}")


def _describe(value: Any) -> str:
    """A short one-line rendering of a bad value and its JSON type, for error messages."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({_JSON_TYPES.get(type(value), type(value).__name__)})"


_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
               dict: "an object", type(None): "null"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(d) and d >= 0 for d in value)


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
