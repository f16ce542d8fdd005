"""What gets evaluated: a ``Variant`` is a label, a way to obtain the model, and its compression record.

Sources of a model, each with a ``key`` that identifies its weights for the caches (so a model that
changed is never served stale generations) and a ``load``:

* ``ModelDir``     — a model on disk or an embedded/hub name; key: ``models.model_identity``;
* ``InMemory``     — an already loaded model; key: its weight fingerprint (or one the caller gives);
* ``BasePlusDelta``— a base with a compressed delta merged in memory; key: base key + the delta's
  manifest hash (which covers every tensor's checksum);
* ``Transformed``  — a whole-model transform of another source; key: source key + transform config;
* ``Endpoint``     — a model behind an OpenAI-compatible endpoint (``eval --endpoint URL --model NAME``);
  key: the endpoint URL without credentials + the served model name. Deltaguard cannot fingerprint
  weights it does not hold, so the caches trust the endpoint to keep serving the same weights under
  that name: after the server swaps the model, use a new run directory (or ``--force``).

One sweep can therefore hold delta compressors and whole-model transforms side by side. A source
without weights (``has_weights`` False: an endpoint) generates over HTTP only; suites skip what needs
logits or weights (perplexity, forced choice) with a note, and nothing can be merged into or
transformed from it.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from deltaguard.io import content_key, sha256_file


class ModelSource(ABC):
    """How to obtain one model and its tokenizer."""

    @property
    def has_weights(self) -> bool:
        """Whether ``load`` gives a model in this process (False: replies come over HTTP only)."""
        return True

    @property
    @abstractmethod
    def key(self) -> str:
        """Identity of the weights (cache key component)."""

    @abstractmethod
    def load(self, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
        """``(model, tokenizer)``, the model in eval mode on ``device``."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """A JSON description for results files."""


class ModelDir(ModelSource):
    """A model directory, ``.gguf`` file, embedded name or hub id."""

    def __init__(self, spec: str | Path, *, key: str | None = None) -> None:
        self.spec = spec
        self._key = key

    @cached_property
    def key(self) -> str:  # type: ignore[override]
        from deltaguard.models import model_identity

        return self._key or model_identity(self.spec)

    def load(self, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
        from deltaguard.models import load_model, load_tokenizer

        return load_model(self.spec, device=device, dtype=dtype), load_tokenizer(self.spec)

    def describe(self) -> dict[str, Any]:
        return {"kind": "model", "spec": str(self.spec), "key": self.key}


class InMemory(ModelSource):
    """A model already loaded (tests, notebooks); ``load`` returns it as is."""

    def __init__(self, model: Any, tokenizer: Any, *, key: str | None = None) -> None:
        self.model, self.tokenizer, self._key = model, tokenizer, key

    @cached_property
    def key(self) -> str:  # type: ignore[override]
        from deltaguard.delta.fingerprint import fingerprint_model

        return self._key or content_key("model", {"fingerprint": fingerprint_model(self.model)})

    def load(self, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
        return self.model, self.tokenizer

    def describe(self) -> dict[str, Any]:
        return {"kind": "in-memory", "key": self.key}


class BasePlusDelta(ModelSource):
    """A base model with a compressed delta merged into a copy of its weights."""

    def __init__(self, base: ModelSource | str | Path, delta_dir: str | Path, *, key: str | None = None) -> None:
        self.base = base if isinstance(base, ModelSource) else ModelDir(base)
        _check_has_weights(self.base, "a delta cannot be merged into")
        self.delta_dir = Path(delta_dir)
        self._key = key

    @cached_property
    def key(self) -> str:  # type: ignore[override]
        if self._key:
            return self._key
        from deltaguard.errors import FormatError

        manifest = self.delta_dir / "manifest.json"
        if not manifest.is_file():
            raise FormatError(f"{self.delta_dir} is not a compressed delta directory (no manifest.json)")
        return content_key("variant", {"base": self.base.key, "delta": sha256_file(manifest)})

    def load(self, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
        from deltaguard.delta import apply_delta_, load_delta

        model, tokenizer = self.base.load(device=device, dtype=dtype)
        if isinstance(self.base, InMemory):
            model = copy.deepcopy(model)  # never merge into a model the caller still holds
        return apply_delta_(model, load_delta(self.delta_dir)), tokenizer

    def describe(self) -> dict[str, Any]:
        return {"kind": "base+delta", "base": self.base.describe(), "delta": str(self.delta_dir), "key": self.key}


class Transformed(ModelSource):
    """A whole-model transform (``deltaguard.transforms``) applied to another source; ``reference`` is the
    second model a transform may need (Q-realign's aligned model)."""

    def __init__(self, source: ModelSource | str | Path, config: Any, *, calib: list[str] | None = None,
                 reference: ModelSource | str | Path | None = None, workdir: Path | None = None) -> None:
        self.workdir = workdir   # resumable state of a long transform (not part of the identity)
        self.source = source if isinstance(source, ModelSource) else ModelDir(source)
        _check_has_weights(self.source, "a whole-model transform cannot be applied to")
        self.config = config
        self.calib = calib
        self.reference = reference if reference is None or isinstance(reference, ModelSource) else ModelDir(reference)

    @cached_property
    def key(self) -> str:  # type: ignore[override]
        calib = content_key("calib", self.calib) if self.calib else None
        reference = {"reference": self.reference.key} if self.reference is not None else {}
        return content_key("transform", {"model": self.source.key, "transform": self.config.to_dict(), "calib": calib,
                                         **reference})

    def load(self, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
        from deltaguard.errors import ConfigError
        from deltaguard.transforms import transforms

        reference = None
        if getattr(self.config, "needs_reference", False):
            if self.reference is None:
                raise ConfigError(f"transform {self.config.label} needs a reference model")
            reference, _ = self.reference.load(device=device, dtype=dtype)
        model, tokenizer = self.source.load(device=device, dtype=dtype)
        if isinstance(self.source, InMemory):
            model = copy.deepcopy(model)
        transform = transforms.get(self.config.name)()
        return transform.apply_(model, self.config, calib=self.calib, tokenizer=tokenizer, reference=reference,
                                workdir=self.workdir), tokenizer

    def describe(self) -> dict[str, Any]:
        described = {"kind": "transform", "model": self.source.describe(), "transform": self.config.to_dict(), "key": self.key}
        if self.reference is not None:
            described["reference"] = self.reference.describe()
        return described


class Endpoint(ModelSource):
    """A model served behind an OpenAI-compatible endpoint: replies come from ``POST {base_url}/chat/completions``.

    ``load`` returns an ``openai_http.EndpointClient`` (no torch model) and tokenizer None; the Runner
    generates through the ``openai`` backend whatever the generation config names. The key is
    ``content_key`` of the URL without credentials, query or fragment and the model name: the caches
    trust the endpoint to keep serving the same weights under that name. The bearer key is read from
    ``DELTAGUARD_ENDPOINT_API_KEY`` at each request and appears in no key, description or file.

    Args:
        base_url: http(s) URL before ``/chat/completions`` (e.g. ``http://127.0.0.1:8000/v1``).
        model_name: the served model's name (the request's ``model`` field).
        concurrency: requests in flight at once.
        timeout_seconds: per-request timeout.
        max_retries: retries after a timeout, dropped connection, 429 or 5xx.
        backoff_seconds: first retry delay; doubles each retry (a longer ``Retry-After`` wins, up to 60 s).
    """

    def __init__(self, base_url: str, model_name: str, *, concurrency: int = 4, timeout_seconds: float = 120.0,
                 max_retries: int = 5, backoff_seconds: float = 1.0) -> None:
        from deltaguard.errors import ConfigError
        from deltaguard.openai_http import EndpointClient, RetryPolicy

        if not timeout_seconds > 0 or not 0 <= max_retries <= 20 or not 0 <= backoff_seconds <= 600:
            raise ConfigError("endpoint timeout_seconds must be > 0, max_retries 0-20 and backoff_seconds 0-600")
        self.client = EndpointClient(base_url, model_name, concurrency=concurrency,
                                     retry=RetryPolicy(timeout_seconds=timeout_seconds, max_retries=max_retries,
                                                       backoff_seconds=backoff_seconds))
        self.base_url, self.model_name = self.client.public_url, model_name

    @property
    def has_weights(self) -> bool:
        return False

    @cached_property
    def key(self) -> str:  # type: ignore[override]
        return content_key("endpoint", {"base_url": self.base_url, "model": self.model_name})

    def load(self, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
        return self.client, None

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "base_url": self.base_url, "model": self.model_name, "key": self.key}


def _check_has_weights(source: ModelSource, action: str) -> None:
    if not source.has_weights:
        from deltaguard.errors import ConfigError

        raise ConfigError(f"{action} a model behind an endpoint: deltaguard does not hold its weights")


@dataclass(frozen=True)
class Variant:
    """One evaluated model: a label for tables, its source, and what compression made it.

    Args:
        label: row name (``base``, ``finetuned``, a method label).
        role: ``base``, ``finetuned``, ``compressed`` (a delta), ``transformed`` (a whole-model
            transform) or ``model`` (anything else).
        source: how to obtain the model.
        record: compression record (bits per parameter, ratios, method config, calibration).
    """

    label: str
    role: str
    source: ModelSource
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.source.key

    @classmethod
    def of(cls, model: "Variant | ModelSource | str | Path", *, label: str | None = None, role: str = "model") -> "Variant":
        """A variant from a variant, a source or a model spec."""
        if isinstance(model, Variant):
            return model
        source = model if isinstance(model, ModelSource) else ModelDir(model)
        return cls(label or str(getattr(source, "spec", "model")), role, source)


__all__ = ["BasePlusDelta", "Endpoint", "InMemory", "ModelDir", "ModelSource", "Transformed", "Variant"]
