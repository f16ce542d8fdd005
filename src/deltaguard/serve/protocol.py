"""The HTTP boundary: OpenAI-compatible request models, validation, the error shape, keys and body limits.

Every error is OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: ``param`` names the
request field at fault (``null`` when no single field is), ``code`` is a short machine-readable reason or
``null``; messages are one line naming the field, the value and what is allowed. Every request field this
server accepts is either honoured or refused with a 400 naming it: parameters it does not implement
(tools, logprobs, n > 1, JSON mode, penalties other than 0, unknown fields) are refused, never silently
ignored. The only fields accepted without effect are bookkeeping ones that cannot change an answer
(``user``, ``metadata``, ``service_tier``, ``parallel_tool_calls``, ``store: false``).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from fastapi import Request

    from deltaguard.serve.server import Server

MAX_LOGIT_BIAS_ENTRIES = 300   # as OpenAI
LOGIT_BIAS_LIMIT = 100.0       # |bias| <= 100, as OpenAI
MAX_PROMPTS = 32               # strings (or token arrays) in one /v1/completions request


class ApiError(Exception):
    """An error answered to the client as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, error_type: str, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, error_type, message, headers
        self.param, self.code = param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.type, self.message, param=self.param, code=self.code)


def error_body(error_type: str, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def invalid(message: str, param: str | None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, "invalid_request_error", message, param=param, code=code)


def unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message, param=param, code="unsupported_parameter")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """A chat message. Fields OpenAI's clients echo back on assistant messages (``tool_calls``, ``refusal``,
    ``audio``, ...) are accepted when empty and refused otherwise; ``name`` is refused."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any = None
    audio: Any = None
    refusal: str | None = None
    annotations: list[Any] | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """What chat and text completion requests share: the tenant, the budget and the sampling settings."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # bookkeeping that cannot change an answer
    user: str | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    store: bool | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings of at most 64 characters")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def check_supported(self) -> None:
        """Refuse settings that would change the answer in ways this server does not implement."""
        if self.n not in (None, 1):
            raise unsupported("n", f"n={self.n} is not supported; only n=1")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value not in (None, 0, 0.0):
                raise unsupported(name, f"{name}={value} is not supported; only 0")
        if self.store:
            raise unsupported("store", "store=true is not supported: this server does not store completions")

    def logit_bias_pairs(self, vocab_size: int) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as (token id, bias) pairs: ids are integers in [0, vocab_size), biases finite in [-100, 100]."""
        if not self.logit_bias:
            return ()
        if len(self.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise invalid(f"logit_bias has {len(self.logit_bias)} entries; at most {MAX_LOGIT_BIAS_ENTRIES}",
                          "logit_bias")
        pairs: dict[int, float] = {}
        for key, bias in self.logit_bias.items():
            shown = key if len(key) <= 24 else key[:24] + "…"
            if not re.fullmatch(r"\s*\d{1,12}\s*", key):
                raise invalid(f"logit_bias key {shown!r} is not a token id (a non-negative integer)", "logit_bias")
            token = int(key)
            if token >= vocab_size:
                raise invalid(f"logit_bias token id {token} is outside this model's vocabulary (0..{vocab_size - 1})",
                              "logit_bias")
            if not math.isfinite(bias) or abs(bias) > LOGIT_BIAS_LIMIT:
                raise invalid(f"logit_bias[{token}]={bias} must be a number in [-100, 100]", "logit_bias")
            if token in pairs:
                raise invalid(f"logit_bias names token id {token} twice", "logit_bias")
            pairs[token] = float(bias)
        return tuple(sorted(pairs.items()))


class ChatCompletionRequest(_GenerationRequest):
    """The subset of OpenAI's chat completion request this server implements."""

    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None    # only means something with tools, which are refused
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools or self.functions:
            raise unsupported("tools" if self.tools else "functions", "tools/functions are not supported by this server")
        for name in ("tool_choice", "function_call"):
            value = getattr(self, name)
            if value not in (None, "none", "auto"):
                raise unsupported(name, f"{name}={json.dumps(value)[:60]} is not supported: this server has no tools")
        if self.logprobs:
            raise unsupported("logprobs", "logprobs are not supported by this server")
        if self.top_logprobs is not None:
            raise unsupported("top_logprobs", "top_logprobs is not supported by this server (it needs logprobs)")
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise invalid(f"max_tokens={self.max_tokens} and max_completion_tokens={self.max_completion_tokens} "
                          "disagree; send one of them", "max_tokens")
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options is only allowed when stream is true", "stream_options")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise unsupported("response_format", f"response_format type {self.response_format.get('type')!r} "
                              "is not supported; only 'text'")
        for i, message in enumerate(self.messages):
            if message.name is not None:
                raise unsupported(f"messages.{i}.name", f"messages.{i}.name is not supported by this server; "
                                  "put the speaker's name in the content")
            for field in ("tool_calls", "tool_call_id", "function_call", "audio", "refusal", "annotations"):
                if getattr(message, field):
                    raise unsupported(f"messages.{i}.{field}", f"messages.{i}.{field} is not supported by this server")
        if self.messages[-1].role == "assistant":
            raise invalid("the last message must not be an assistant message", "messages")

    def budget(self) -> tuple[int | None, str]:
        """The requested token budget and the field that set it."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions`` (legacy text completions): a raw prompt, no chat template."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.stream:
            raise unsupported("stream", "stream=true is not supported on /v1/completions; "
                              "use stream=false or /v1/chat/completions")
        if self.stream_options is not None:
            raise unsupported("stream_options", "stream_options is not supported on /v1/completions (no streaming)")
        if self.echo:
            raise unsupported("echo", "echo=true is not supported; only false")
        if self.logprobs is not None:
            raise unsupported("logprobs", "logprobs is not supported; only null")
        if self.best_of not in (None, 1):
            raise unsupported("best_of", f"best_of={self.best_of} is not supported; only 1")
        if self.suffix is not None:
            raise unsupported("suffix", "suffix (insertion) is not supported; only null")

    def budget(self) -> tuple[int | None, str]:
        return self.max_tokens, "max_tokens"

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            items: list[str | list[int]] = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            items = [list(prompt)]  # type: ignore[arg-type]
        else:
            items = list(prompt)  # type: ignore[arg-type]
        if not items:
            raise invalid("prompt is an empty list; give a string, a list of strings or a list of token ids", "prompt")
        if len(items) > MAX_PROMPTS:
            raise invalid(f"prompt holds {len(items)} prompts; at most {MAX_PROMPTS} per request", "prompt")
        return items


class AddTenantRequest(BaseModel):
    """``POST /admin/tenants``: without ``key_sha256`` a new key is made and returned once.

    ``delta`` is relative to the server's ``admin_delta_root`` and must resolve inside it;
    ``chat_template`` is Jinja text (not a path) used for the tenant's chat requests.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    delta: str
    key_sha256: str | list[str] | None = None
    moderation: dict[str, Any] | None = None
    chat_template: str | None = Field(default=None, max_length=65536)


def validation_error(exc: ValidationError | Any) -> ApiError:
    """A 400 from a pydantic validation error: the first problem, one line, with its field path as ``param``."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return invalid("the request body is not valid", None)
    first = errors[0]
    # a union (str | list[TextPart], the prompt's forms) names the branch in the path: keep only the fields
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "body" and not _is_branch(part))
    if first.get("type") == "extra_forbidden":
        message, code = "unrecognized request argument; this server does not implement it", "unsupported_parameter"
    else:
        message, code = str(first.get("msg", "invalid value")).removeprefix("Value error, "), "invalid_value"
    extra = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return invalid(f"{location or 'body'}: {message}{extra}", location or None, code)


def _is_branch(part: Any) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def validation_message(exc: ValidationError | Any) -> str:
    """One line from a pydantic validation error: the first problem, with its field path."""
    return validation_error(exc).message


# -- access control and the request body ------------------------------------------------------------

def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def tenant_caller(server: Server, request: Request) -> set[str]:
    """The tenants the caller's key reaches; 401 without a valid tenant key, 403 for the admin key."""
    key = bearer(request)
    if key is None:
        raise ApiError(401, "authentication_error", "missing API key: send 'Authorization: Bearer <key>'",
                       code="missing_api_key")
    reachable = server.registry.tenants_for_key(key)
    if not reachable:
        if server.registry.is_admin(key):
            raise ApiError(403, "permission_error", "the admin key only reaches /admin and /metrics; use a tenant key",
                           code="admin_key_not_allowed")
        raise ApiError(401, "authentication_error", "invalid API key", code="invalid_api_key")
    return reachable


def require_admin(server: Server, request: Request) -> None:
    if server.registry.admin_key_hash is None:
        raise ApiError(403, "permission_error", "the admin API is disabled: no admin key is configured",
                       code="admin_api_disabled")
    key = bearer(request)
    if key is None:
        raise ApiError(401, "authentication_error", "missing admin key: send 'Authorization: Bearer <admin key>'",
                       code="missing_api_key")
    if not server.registry.is_admin(key):
        if server.registry.tenants_for_key(key):
            raise ApiError(403, "permission_error", "this endpoint needs the admin key, not a tenant key",
                           code="admin_key_required")
        raise ApiError(401, "authentication_error", "invalid admin key", code="invalid_api_key")


async def read_json(server: Server, request: Request) -> Any:
    """The body as JSON, refusing bodies over the limit before reading them whole."""
    limit = server.config.max_body_bytes
    too_large = ApiError(413, "request_too_large", f"request body is larger than the limit of {limit} bytes",
                         code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"request body is not valid JSON ({str(exc).splitlines()[0]})", None, "invalid_json") from None
    except RecursionError:
        raise invalid("request body is nested too deeply to be a request", None, "invalid_json") from None
    check_unicode(data)
    return data


def _refuse_constant(name: str) -> Any:
    """Python's json reads NaN and Infinity, which are not JSON; a NaN setting must never reach the engine."""
    raise ValueError(f"{name} is not a valid JSON number")


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(data: Any) -> None:
    """Refuse lone UTF-16 surrogates (JSON ``"\\ud800"``) anywhere in a body, naming the field.

    JSON escapes may spell half a surrogate pair, which Python keeps as a string no UTF-8 encoder accepts:
    the tokenizer, the logs and the JSON answer would fail on it later with a server error. Iterative, so
    a deeply nested body cannot exhaust the stack.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise invalid(f"{where or 'body'}: holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                              f"Unicode text; send valid UTF-8 or surrogate pairs", where or None, "invalid_unicode")
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):  # the key itself is never echoed: it could not be encoded
                    raise invalid(f"{where or 'body'}: a field name holds a lone UTF-16 surrogate "
                                  f"(\\ud800-\\udfff); send valid UTF-8 or surrogate pairs", where or None,
                                  "invalid_unicode")
                stack.append((f"{where}.{key}" if where else key, item))
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}" if where else str(i), item) for i, item in enumerate(value))


def model_not_found(model: str) -> ApiError:
    shown = model if len(model) <= 64 else model[:64] + "…"
    return ApiError(404, "not_found_error", f"model {shown!r} does not exist or this key cannot use it",
                    param="model", code="model_not_found")


# -- request ids ------------------------------------------------------------------------------------

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")


def choose_request_id(sent: str | None) -> str:
    """The client's ``x-request-id`` when it is a sane token (<= 128 of ``A-Z a-z 0-9 . _ : / + = @ -``), else a new one."""
    if sent is not None and _SANE_REQUEST_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def request_id_of(request: Request) -> str:
    """The id the access-log middleware gave this request (a fresh one if the app runs without it)."""
    state = request.scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
    return state["request_id"]
