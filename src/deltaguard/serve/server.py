"""The serving process: one base model, the tenants' deltas, the engine, access control, moderation, metrics.

``Server`` wires the pieces and owns the runtime tenant operations (add = verify the delta against
the base fingerprint, attach it, register its keys and policy; remove = the reverse). ``build_server``
makes one from a base model spec and a tenants file; ``app.serve`` runs it under uvicorn.
"""

from __future__ import annotations

import logging
import os
import re
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


class ChatEncodingError(ConfigError):
    """Message content that this tokenizer cannot encode as plain text (the HTTP API answers 400)."""


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
        admin_delta_root: the directory that deltas added through the admin API must lie in; a relative
            ``delta`` in ``POST /admin/tenants`` starts there, and its real path (``..`` and symlinks
            followed) must stay inside. None (default): the directory of the tenants file, or ``./deltas``
            under the working directory when the server has no tenants file. Resolved once, at startup,
            to an absolute real path (a relative setting is relative to the working directory then).
            ``/`` admits any path the server can read: a deliberate opt-out, not for shared hosts.
            Tenants of the tenants file are not limited by it (their paths are relative to the file).
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
        if self.admin_delta_root is not None and not self.admin_delta_root.strip():
            raise ConfigError("serve.admin_delta_root is empty; give a directory, or leave it unset for the "
                              "tenants file's directory")
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
        self.admin_delta_root = resolve_admin_delta_root(config.admin_delta_root, self.tenants_path)
        log.info("admin API deltas must lie in %s", self.admin_delta_root)
        self._control_tokens = control_tokens_pattern(tokenizer)
        self.moderators: dict[str, Moderator] = {}
        self._pool = ModeratorPool()
        self._judges = judges or {}   # judge name → preloaded instance (tests; heavy guards shared by name)
        self._admin_lock = threading.Lock()
        self.metrics = Metrics()
        self.metrics.gauge("deltaguard_tenants", "Tenants loaded.", lambda: len(self.registry.names()))
        self.metrics.gauge("deltaguard_active_sequences", "Sequences in the running batch.", lambda: self.engine.n_active)
        self.metrics.gauge("deltaguard_waiting_requests", "Requests waiting for a batch slot.", lambda: self.engine.n_waiting)
        self.metrics.counter("deltaguard_decode_steps_total", "Decode forward passes run.", lambda: self.engine.n_steps)
        self._chat_templates: dict[str, tuple[str, re.Pattern[str] | None]] = {}  # tenant → (template, control)
        for spec in (tenants.tenants if tenants else ()):
            self.add_tenant(spec, persist=False)

    def add_tenant(self, spec: TenantSpec, *, persist: bool = True) -> None:
        """Verify the delta (format, checksums, base fingerprint), attach it, then accept the tenant's keys."""
        with self._admin_lock:
            if spec.name in self.registry:
                raise ConfigError(f"tenant {spec.name!r} already exists")
            template = None
            if spec.chat_template is not None:
                template = (spec.chat_template, self.check_chat_template(spec.chat_template, tenant=spec.name))
            moderator = None
            if spec.moderation is not None:
                moderator = self._pool.moderator(spec.moderation, judge=self._judges.get(spec.moderation.judge))
            delta = load_tenant_delta(spec, fingerprint=self.fingerprint)
            self.engine.add_tenant(spec.name, delta)
            self.registry.add(spec)
            if moderator is not None:
                self.moderators[spec.name] = moderator
            if template is not None:
                self._chat_templates[spec.name] = template
            footprint = self.mt.footprint(spec.name)
            log.info("tenant added", extra={"tenant": spec.name, "delta_bytes": footprint.n_bytes,
                                            "encodings": list(footprint.encodings)})
            if persist:
                self._persist()

    def remove_tenant(self, name: str, *, persist: bool = True) -> None:
        with self._admin_lock:
            self.registry.remove(name)
            self.moderators.pop(name, None)
            self._chat_templates.pop(name, None)
            self.engine.remove_tenant(name)
            log.info("tenant removed", extra={"tenant": name})
            if persist:
                self._persist()

    def _persist(self) -> None:
        if self.config.persist_tenants and self.tenants_path is not None:
            write_tenants_file(self.tenants_path, self.registry.specs(), self.registry.admin_key_hash)

    def admin_delta_path(self, delta: str) -> Path:
        """The real path of a delta named through the admin API, refused unless it lies in ``admin_delta_root``.

        The caller loads exactly this path: resolving once, here, leaves no gap between check and use in
        which ``..`` or a symlink could be re-read differently.
        """
        root = self.admin_delta_root
        try:
            real = Path(os.path.realpath(root / delta))  # an absolute delta replaces the root
        except (OSError, ValueError) as exc:  # a NUL byte, an unencodable name
            raise ConfigError(f"delta {delta!r} is not a usable path ({exc}); name a directory inside {root}") from None
        if not real.is_relative_to(root):
            raise ConfigError(f"delta {delta!r} resolves to {real}, outside the admin delta directory {root}; "
                              f"put the delta inside it or set serve.admin_delta_root")
        return real

    def check_chat_template(self, template: str, *, tenant: str) -> re.Pattern[str] | None:
        """Render a sample conversation with a tenant's chat template (ConfigError, one line, if it cannot);
        returns the control-token pattern for that template."""
        sample = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, how can I help?"},
                  {"role": "user", "content": "What is 12 plus 7?"}]
        try:
            text = self.tokenizer.apply_chat_template(sample, chat_template=template, tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as exc:  # jinja errors, raise_exception(), undefined attributes: any failure is the template's
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"tenant {tenant!r} chat_template does not render a sample conversation "
                              f"({type(exc).__name__}: {detail})") from None
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"tenant {tenant!r} chat_template renders a sample conversation as empty text")
        return control_tokens_pattern(self.tokenizer, template)

    def chat_template_of(self, tenant: str) -> str | None:
        """The tenant's own chat template, or None when it uses the base tokenizer's."""
        entry = self._chat_templates.get(tenant)
        return entry[0] if entry else None

    def encode_chat(self, messages: list[dict[str, str]], tenant: str | None = None) -> list[int]:
        """Token ids of a conversation with the chat template (the tenant's own if it has one, else the base
        tokenizer's) and the generation prompt.

        Message content is text: special-token text typed in it (``<|im_end|>``, ``<|im_start|>system``)
        is encoded as the characters it spells, never as the token, so only the template's own markers
        delimit turns and a user cannot forge a system or assistant turn.
        """
        tok = self.tokenizer
        own = self._chat_templates.get(tenant) if tenant is not None else None
        template, control = own if own is not None else (None, self._control_tokens)
        if template is None and not getattr(tok, "chat_template", None):
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return tok(text, split_special_tokens=True)["input_ids"]  # this format writes no special tokens itself
        if control is None or not any(control.search(m["content"]) for m in messages):
            text = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]  # nothing to escape: the plain encoding
        marked = [{**m, "content": _mark_control_tokens(m["content"], control)} for m in messages]
        text = tok.apply_chat_template(marked, chat_template=template, tokenize=False, add_generation_prompt=True)
        return _encode_marked_chat(tok, text, control)

    def encode_text(self, prompt: str) -> list[int]:
        """Token ids of a raw text prompt (``/v1/completions``): no chat template; the tokenizer's own special
        tokens (a BOS) are added and special-token text in the prompt is read as those tokens, as a
        completion API's caller writes the whole prompt, template included."""
        return self.tokenizer(prompt)["input_ids"]


# Private-use characters wrapped around special-token text found in message content, so that the rendered
# chat still tells it apart from the template's own tokens (content loses these two characters, nothing else).
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"


def control_tokens_pattern(tokenizer: Any, template: str | None = None) -> re.Pattern[str] | None:
    """A regex matching the tokenizer's control tokens, longest first (None when it has none).

    Control tokens are the special added tokens, plus added tokens the chat template (``template``, or
    the tokenizer's own) writes (some tokenizers do not flag their role markers special); whitespace
    tokens are ordinary text.
    """
    if template is None:
        template = getattr(tokenizer, "chat_template", None)
    template_text = template if isinstance(template, str) else str(template or "")
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens = {t.content for t in added.values() if t.content and (t.special or (
        t.content in template_text and not t.content.isspace()))}
    tokens |= {t for t in getattr(tokenizer, "all_special_tokens", ()) if t}
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def _mark_control_tokens(content: str, control: re.Pattern[str]) -> str:
    content = content.replace(_MARK_START, "").replace(_MARK_END, "")  # no marker can be forged
    return control.sub(lambda m: _MARK_START + m.group(0) + _MARK_END, content)


def _encode_marked_chat(tok: Any, text: str, control: re.Pattern[str]) -> list[int]:
    """Encode a chat rendered from marked content: marked tokens as plain text, everything else normally.

    A template that cuts content apart (``split``, slicing) may separate a marker from its token: lone
    markers are dropped, and still break the text, so the pieces on either side cannot join into a token.
    """
    pieces = re.split(f"{_MARK_START}({control.pattern}){_MARK_END}|[{_MARK_START}{_MARK_END}]", text)
    newline_ids = tok("\n", add_special_tokens=False)["input_ids"]
    ids = tok(pieces[0], add_special_tokens=False)["input_ids"]
    for i, piece in enumerate(pieces[1:], start=1):
        if not piece:
            continue
        is_literal = i % 2 == 1  # split() puts each captured token at an odd index
        piece_ids = _encode_piece(tok, piece, newline_ids, is_literal=is_literal)
        if is_literal and tok.convert_tokens_to_ids(piece) in piece_ids:
            raise ChatEncodingError(f"message content holds {piece!r}, which this model's tokenizer cannot "
                                    f"encode as plain text; remove it from the message")
        ids += piece_ids
    return ids


def _encode_piece(tok: Any, piece: str, newline_ids: list[int], *, is_literal: bool) -> list[int]:
    """Ids of a piece from the middle of a chat; ``is_literal``: as plain text, matching no added token.

    Encoded after a newline that is then removed, so SentencePiece-style tokenizers do not add the
    word-start marker they put at the start of a text.
    """
    def encode(text: str) -> list[int]:
        if not is_literal:
            return tok(text, add_special_tokens=False)["input_ids"]
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:  # a Python tokenizer: skip special tokens while matching
            return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        # The backend's pipeline without its added-token matcher: no shared tokenizer setting is toggled.
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        splits = [split for split, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
        return [token.id for split in splits for token in backend.model.tokenize(split)]

    piece_ids = encode("\n" + piece)
    if piece_ids[:len(newline_ids)] == newline_ids:
        return piece_ids[len(newline_ids):]
    return encode(piece)


def resolve_admin_delta_root(setting: str | None, tenants_path: Path | None) -> Path:
    """The absolute real path of ``ServeConfig.admin_delta_root`` (see there for the default)."""
    if setting is not None:
        root = Path(setting).expanduser()
    else:
        root = Path(tenants_path).parent if tenants_path is not None else Path("deltas")
    try:
        root = Path(os.path.realpath(Path.cwd() / root))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"serve.admin_delta_root {str(root)!r} is not a usable path ({exc})") from None
    if root.exists() and not root.is_dir():
        raise ConfigError(f"serve.admin_delta_root {root} is not a directory; name the directory that holds the deltas")
    return root


def build_server(base: str | Path, tenants_path: str | Path | None, config: ServeConfig = ServeConfig()) -> Server:
    """Load the base model and tokenizer once, then every tenant of the file (each verified)."""
    from deltaguard.models import load_model, load_tokenizer, set_threads

    set_threads(config.n_threads)
    tenants = load_tenants_file(tenants_path) if tenants_path is not None else None
    model = load_model(base, dtype=config.dtype, device=config.device)
    tokenizer = load_tokenizer(base)
    return Server(model, tokenizer, config, tenants=tenants)
