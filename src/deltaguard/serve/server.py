"""The serving process: one base model, the tenants' deltas, the engine, access control, moderation, metrics.

``Server`` wires the pieces and owns the runtime tenant operations (add = verify the delta against
the base fingerprint, attach it, register its keys and policy; remove = the reverse). ``build_server``
makes one from a base model spec and a tenants file; ``app.serve`` runs it under uvicorn.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from deltaguard.config import Config, check_choice, check_range
from deltaguard.delta.fingerprint import fingerprint_model
from deltaguard.errors import ConfigError
from deltaguard.serve.engine import Engine, EngineConfig
from deltaguard.serve.layers import MultiTenantModel
from deltaguard.serve.metrics import Metrics
from deltaguard.serve.moderation import Moderator, ModeratorPool
from deltaguard.serve.tenants import (
    TenantRegistry, TenantSpec, TenantsFile, load_tenant_delta, load_tenants_file, write_tenants_file,
)

log = logging.getLogger("deltaguard.serve")


@dataclass(frozen=True, kw_only=True)
class ServeConfig(Config):
    """Server settings and limits.

    Args:
        host: interface to bind (loopback by default; put a TLS proxy in front for anything else).
        port: TCP port (0 picks a free one).
        device: where the base model and the deltas live: cpu, cuda, cuda:N or auto.
        dtype: weights and activations: float32 or bfloat16.
        max_body_bytes: largest request body; larger ones get 413.
        max_prompt_tokens: longest prompt after the chat template; longer ones get 400.
        max_new_tokens: most tokens one request may ask for; more gets 400.
        default_new_tokens: tokens generated when a request does not say (capped by max_new_tokens).
        max_batch_size: sequences decoded together in one forward pass.
        max_queue: requests waiting for a batch slot; more get 429.
        request_timeout_seconds: a non-streaming request that takes longer is cancelled (504).
        kernel: 1-bit delta kernel: auto (Triton on CUDA when installed; on CPU the C++ kernel when it
            builds here, else torch), torch, cpp or triton.
        is_metrics_public: serve /metrics without the admin key (it names tenants).
        persist_tenants: rewrite the tenants file when admin endpoints add or remove tenants.
        admin_delta_root: if set, deltas added through the admin API must lie inside this directory.
        n_threads: CPU threads for torch (None: torch's default). On CPUs shared with other work, 1 is
            often much faster: idle OpenMP threads spin-wait and the many small per-tenant ops stall.
    """

    name: ClassVar[str] = "serve"
    version: ClassVar[int] = 1
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    default_new_tokens: int = 256
    max_batch_size: int = 16
    max_queue: int = 256
    request_timeout_seconds: float = 300.0
    kernel: Literal["auto", "torch", "cpp", "triton"] = "auto"
    is_metrics_public: bool = False
    persist_tenants: bool = False
    admin_delta_root: str | None = None
    n_threads: int | None = None

    def __post_init__(self) -> None:
        check_range("serve.port", self.port, 0, 65535)
        from deltaguard.models import resolve_device

        resolve_device(self.device)  # a missing GPU is a config error, before the model loads
        check_choice("serve.dtype", self.dtype, ("float32", "bfloat16"))
        check_range("serve.max_body_bytes", self.max_body_bytes, 256)
        check_range("serve.max_prompt_tokens", self.max_prompt_tokens, 1)
        check_range("serve.max_new_tokens", self.max_new_tokens, 1)
        check_range("serve.default_new_tokens", self.default_new_tokens, 1)
        check_range("serve.request_timeout_seconds", self.request_timeout_seconds, 0.0, low_inclusive=False)
        check_choice("serve.kernel", self.kernel, ("auto", "torch", "cpp", "triton"))
        if self.n_threads is not None:
            check_range("serve.n_threads", self.n_threads, 1)
        EngineConfig(max_batch_size=self.max_batch_size, max_queue=self.max_queue)  # same checks as the engine

    @property
    def engine(self) -> EngineConfig:
        return EngineConfig(max_batch_size=self.max_batch_size, max_queue=self.max_queue)


class Server:
    """Everything one serving process holds; safe to use from the HTTP threads and the event loop."""

    def __init__(self, model: Any, tokenizer: Any, config: ServeConfig = ServeConfig(), *,
                 tenants: TenantsFile | None = None, judges: dict[str, Any] | None = None) -> None:
        self.config, self.tokenizer = config, tokenizer
        self.fingerprint = fingerprint_model(model)
        self.mt = MultiTenantModel(model, fingerprint=self.fingerprint, backend=config.kernel)  # checks the kernel
        log.info("1-bit delta kernel: %s", self.mt.kernel)
        self.engine = Engine(self.mt, tokenizer, config.engine)
        self.registry = TenantRegistry(admin_key_hash=tenants.admin_key_hash if tenants else None)
        self.tenants_path = tenants.path if tenants else None
        self.moderators: dict[str, Moderator] = {}
        self._pool = ModeratorPool()
        self._judges = judges or {}   # judge name → preloaded instance (tests; heavy guards shared by name)
        self._admin_lock = threading.Lock()
        self.metrics = Metrics()
        self.metrics.gauge("deltaguard_tenants", "Tenants loaded.", lambda: len(self.registry.names()))
        self.metrics.gauge("deltaguard_active_sequences", "Sequences in the running batch.", lambda: self.engine.n_active)
        self.metrics.gauge("deltaguard_waiting_requests", "Requests waiting for a batch slot.", lambda: self.engine.n_waiting)
        self.metrics.gauge("deltaguard_decode_steps_total", "Decode forward passes run.", lambda: self.engine.n_steps)
        for spec in (tenants.tenants if tenants else ()):
            self.add_tenant(spec, persist=False)

    def add_tenant(self, spec: TenantSpec, *, persist: bool = True) -> None:
        """Verify the delta (format, checksums, base fingerprint), attach it, then accept the tenant's keys."""
        with self._admin_lock:
            if spec.name in self.registry:
                raise ConfigError(f"tenant {spec.name!r} already exists")
            moderator = None
            if spec.moderation is not None:
                moderator = self._pool.moderator(spec.moderation, judge=self._judges.get(spec.moderation.judge))
            delta = load_tenant_delta(spec, fingerprint=self.fingerprint)
            self.engine.add_tenant(spec.name, delta)
            self.registry.add(spec)
            if moderator is not None:
                self.moderators[spec.name] = moderator
            footprint = self.mt.footprint(spec.name)
            log.info("tenant added", extra={"tenant": spec.name, "delta_bytes": footprint.n_bytes,
                                            "encodings": list(footprint.encodings)})
            if persist:
                self._persist()

    def remove_tenant(self, name: str, *, persist: bool = True) -> None:
        with self._admin_lock:
            self.registry.remove(name)
            self.moderators.pop(name, None)
            self.engine.remove_tenant(name)
            log.info("tenant removed", extra={"tenant": name})
            if persist:
                self._persist()

    def _persist(self) -> None:
        if self.config.persist_tenants and self.tenants_path is not None:
            write_tenants_file(self.tenants_path, self.registry.specs(), self.registry.admin_key_hash)

    def check_admin_delta_path(self, path: Path) -> None:
        root = self.config.admin_delta_root
        if root is not None and not path.resolve().is_relative_to(Path(root).resolve()):
            raise ConfigError(f"delta {path} is outside the allowed directory {root}")

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation with the base tokenizer's chat template and the generation prompt."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return tok(text)["input_ids"]


def build_server(base: str | Path, tenants_path: str | Path | None, config: ServeConfig = ServeConfig()) -> Server:
    """Load the base model and tokenizer once, then every tenant of the file (each verified)."""
    from deltaguard.models import load_model, load_tokenizer, set_threads

    set_threads(config.n_threads)
    tenants = load_tenants_file(tenants_path) if tenants_path is not None else None
    model = load_model(base, dtype=config.dtype, device=config.device)
    tokenizer = load_tokenizer(base)
    return Server(model, tokenizer, config, tenants=tenants)
