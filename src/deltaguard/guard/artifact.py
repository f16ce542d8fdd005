"""The built guard on disk, and the loader that runs it.

A guard directory is self-describing and holds no pickle:

- ``model.safetensors`` — packed INT4 weights (``*.qweight`` uint8, two codes a byte) and their float16
  group scales (float32 in format 1, which still loads), the float norms, and the pruned output head (only the rows of the tokens it emits);
- ``config.json`` — the pruned architecture (``guard_head_token_ids`` names the head's rows);
- the tokenizer files;
- ``manifest.json`` — format and version, the quantisation settings, the verdict tokens, a fingerprint
  of the tokenizer's vocabulary, the sha256 of every other file, and the build record (label sources,
  data and split hashes, stage records, the decision thresholds and the measured metrics).

A guard carries two operating points chosen on its validation examples at build time (``guard.points``).

``load_guard`` verifies every file before reading it and refuses one-line: a missing or edited file, an
unknown format, or a tokenizer that is not the one the guard was built with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from deltaguard.errors import ConfigError, FormatError
from deltaguard.guard.format import VerdictTokens, verdict_tokens
from deltaguard.guard.points import COMPUTE_DTYPES, check_operating_points, operating_threshold
from deltaguard.io import atomic_dir, read_json, sha256_file, write_json

FORMAT = "deltaguard-guard"
FORMAT_VERSION = 2           # 2: float16 group scales; 1: float32 (read as they are)
READABLE_VERSIONS = (1, 2)
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
# dtype="int8": what the rest (attention, norms, residuals) computes in beside the INT8 matmuls; see load_guard
INT8_REST_DTYPE = torch.bfloat16


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the vocabulary (token → id): two tokenizers that agree on it tokenise identically enough
    for the guard's verdict tokens and prefix to mean the same thing."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]


def save_guard(model: nn.Module, tokenizer: Any, out_dir: str | Path, *, group_size: int, act_int8: bool,
               tokens: VerdictTokens, record: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a converted (INT4, head-pruned) guard atomically: the directory appears only when complete."""
    from safetensors.torch import save_file

    from deltaguard.guard.quant import packed_state

    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.config.save_pretrained(tmp)
        save_file(packed_state(model), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        tokenizer.save_pretrained(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / MANIFEST, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "group_size": group_size, "act_int8": act_int8,
            "verdict_tokens": tokens.to_dict(), "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "files": files, **record,
        })
    return out_dir


@dataclass
class Guard:
    """A loaded guard: ``score(items)`` gives P(unsafe) per (prompt, response or None)."""

    model: nn.Module
    tokenizer: Any
    manifest: dict[str, Any]
    path: Path
    encoder: Any = field(repr=False)
    tokens: VerdictTokens = field(repr=False)

    @property
    def threshold(self) -> float:
        """P(unsafe) at or above which the guard says unsafe (chosen on the validation split, max F1)."""
        return operating_threshold(self.manifest, "max_f1", self.path)

    def threshold_at(self, point: str) -> float:
        """The threshold of one of ``OPERATING_POINTS`` (chosen on the validation split at build time)."""
        return operating_threshold(self.manifest, point, self.path)

    @property
    def head_token_ids(self) -> Any:
        return getattr(self.model.lm_head, "token_ids", None)

    def score(self, items: Sequence[tuple[str, str | None]], *, batch_size: int = 16, progress: bool = False) -> list[float]:
        from deltaguard.guard.train import score

        return score(self.model, self.encoder, items, self.tokens, batch_size=batch_size,
                     head_token_ids=self.head_token_ids, progress=progress, label="guard")


def _verify(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise FormatError(f"{path} is not a guard directory (build one: deltaguard guard build -o DIR)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FormatError(f"{path} has no {MANIFEST}; it is not a built guard")
    manifest = read_json(manifest_path, what="guard manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError(f"{manifest_path} is not a {FORMAT} manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise FormatError(f"{path}: guard format version {manifest.get('format_version')!r} is not supported "
                          f"(this deltaguard reads {', '.join(map(str, READABLE_VERSIONS))})")
    files = manifest.get("files")
    group_size = manifest.get("group_size")
    if not isinstance(files, dict) or WEIGHTS not in files or not isinstance(group_size, int) or group_size < 1:
        raise FormatError(f"{manifest_path} lacks its file list, {WEIGHTS} or a valid group_size")
    present = {p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST}
    if present - set(files):
        raise FormatError(f"{path} holds files its manifest does not list: {sorted(present - set(files))[:3]}")
    for name, digest in files.items():
        if not (path / name).is_file():
            raise FormatError(f"{path} is missing {name}")
        if sha256_file(path / name) != digest:
            raise FormatError(f"{path / name} does not match its checksum (edited or damaged); rebuild the guard")
    return manifest


def load_guard(path: str | Path, *, device: str = "cpu", dtype: str = "float32") -> Guard:
    """Verify and load a guard directory written by ``save_guard``; ``dtype`` is its arithmetic: ``float32``, the
    precision its thresholds were chosen in; ``bfloat16``, faster on CPUs with bf16 units (``quant.set_compute_dtype``);
    or ``int8``, INT8 integer matmuls in every linear layer and bfloat16 elsewhere, on the CPU only
    (``quant.set_int8_matmuls``)."""
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"guard dtype {dtype!r} must be one of {', '.join(COMPUTE_DTYPES)}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from deltaguard.guard.prune import HEAD_IDS_KEY, VerdictHead
    from deltaguard.guard.quant import load_packed_state, set_compute_dtype, set_int8_matmuls
    from deltaguard.guard.train import GuardEncoder
    from deltaguard.models import load_tokenizer, resolve_device
    from deltaguard.modules import get_module, replace_module

    path = Path(path)
    manifest = _verify(path)
    tokenizer = load_tokenizer(str(path))
    if tokenizer_fingerprint(tokenizer) != manifest.get("tokenizer_fingerprint"):
        raise FormatError(f"{path}: the tokenizer is not the one this guard was built for")
    tokens = verdict_tokens(tokenizer)
    if tokens.to_dict() != manifest.get("verdict_tokens"):
        raise FormatError(f"{path}: the tokenizer's verdict tokens differ from the guard's (built for another tokenizer)")
    try:
        config = AutoConfig.from_pretrained(path)
        ids = list(getattr(config, HEAD_IDS_KEY, None) or [])
        if not ids:
            raise FormatError(f"{path}/config.json has no {HEAD_IDS_KEY}: not a head-pruned guard")
        model = AutoModelForCausalLM.from_config(config)
        head = get_module(model, "lm_head")
        replace_module(model, "lm_head", VerdictHead(head.in_features, ids, bias=head.bias is not None))
        tensors = load_file(str(path / WEIGHTS))
    except (OSError, ValueError, SafetensorError) as exc:
        raise FormatError(f"{path} could not be read ({str(exc).splitlines()[0]})") from None
    load_packed_state(model, tensors, manifest["group_size"], bool(manifest.get("act_int8", True)))
    check_operating_points(manifest, path)   # a damaged threshold fails here, not mid-judging
    encoder = GuardEncoder(tokenizer, **manifest.get("encoder", {}))
    model = model.to(resolve_device(device)).eval()
    if dtype == "int8":
        set_int8_matmuls(model)              # first: a GPU or a guard without INT8 activations is refused here
        set_compute_dtype(model, INT8_REST_DTYPE)
    elif dtype != "float32":
        set_compute_dtype(model, getattr(torch, dtype))
    return Guard(model=model, tokenizer=tokenizer, manifest=manifest, path=path, encoder=encoder, tokens=tokens)


def size_on_disk(path: str | Path) -> int:
    """Bytes of every file in a model or guard directory."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


__all__ = ["FORMAT", "FORMAT_VERSION", "Guard", "load_guard", "save_guard", "size_on_disk",
           "tokenizer_fingerprint"]
