"""The HTTP boundary: OpenAI-compatible request models, validation, the error shape, keys and body limits.

Every client error is ``{"error": {"type": ..., "message": ...}}`` with a 4xx status; messages are
one line naming the field, the value and what is allowed. Parameters the server does not implement
(tools, logprobs, n > 1, JSON mode) are refused rather than silently ignored; harmless ones that only
tune sampling in ways this server does not (presence/frequency penalties at 0, ``user``) are ignored.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from fastapi import Request

    from deltaguard.serve.server import Server


class ApiError(Exception):
    """An error answered to the client as ``{"error": {"type", "message"}}``."""

    def __init__(self, status: int, error_type: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, error_type, message, headers

    def body(self) -> dict[str, Any]:
        return error_body(self.type, self.message)


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request this server implements."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=128)
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

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
        """Refuse parameters that would change the answer in ways this server does not implement."""
        if self.n not in (None, 1):
            raise ApiError(400, "invalid_request_error", f"n={self.n} is not supported; only n=1")
        if self.tools or self.functions:
            raise ApiError(400, "invalid_request_error", "tools/functions are not supported by this server")
        if self.logprobs:
            raise ApiError(400, "invalid_request_error", "logprobs are not supported by this server")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ApiError(400, "invalid_request_error",
                           f"response_format type {self.response_format.get('type')!r} is not supported; only 'text'")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value not in (None, 0, 0.0):
                raise ApiError(400, "invalid_request_error", f"{name}={value} is not supported; only 0")
        if self.messages[-1].role == "assistant":
            raise ApiError(400, "invalid_request_error", "the last message must not be an assistant message")

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class AddTenantRequest(BaseModel):
    """``POST /admin/tenants``: without ``key_sha256`` a new key is made and returned once.

    ``delta`` is relative to the server's ``admin_delta_root`` and must resolve inside it.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    delta: str
    key_sha256: str | list[str] | None = None
    moderation: dict[str, Any] | None = None


def validation_message(exc: ValidationError | Any) -> str:
    """One line from a pydantic validation error: the first problem, with its field path."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return "the request body is not valid"
    first = errors[0]
    location = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body",))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    extra = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{location or 'body'}: {message}{extra}"


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
        raise ApiError(401, "authentication_error", "missing API key: send 'Authorization: Bearer <key>'")
    reachable = server.registry.tenants_for_key(key)
    if not reachable:
        if server.registry.is_admin(key):
            raise ApiError(403, "permission_error", "the admin key only reaches /admin and /metrics; use a tenant key")
        raise ApiError(401, "authentication_error", "invalid API key")
    return reachable


def require_admin(server: Server, request: Request) -> None:
    if server.registry.admin_key_hash is None:
        raise ApiError(403, "permission_error", "the admin API is disabled: no admin key is configured")
    key = bearer(request)
    if key is None:
        raise ApiError(401, "authentication_error", "missing admin key: send 'Authorization: Bearer <admin key>'")
    if not server.registry.is_admin(key):
        if server.registry.tenants_for_key(key):
            raise ApiError(403, "permission_error", "this endpoint needs the admin key, not a tenant key")
        raise ApiError(401, "authentication_error", "invalid admin key")


async def read_json(server: Server, request: Request) -> Any:
    """The body as JSON, refusing bodies over the limit before reading them whole."""
    limit = server.config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, "request_too_large", f"request body is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "request_too_large", f"request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_request_error", f"request body is not valid JSON ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ApiError(400, "invalid_request_error", "request body is nested too deeply to be a request") from None
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
                raise ApiError(400, "invalid_request_error", f"{where or 'body'}: holds a lone UTF-16 surrogate "
                               f"(\\ud800-\\udfff), which is not Unicode text; send valid UTF-8 or surrogate pairs")
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):  # the key itself is never echoed: it could not be encoded
                    raise ApiError(400, "invalid_request_error", f"{where or 'body'}: a field name holds a lone "
                                   f"UTF-16 surrogate (\\ud800-\\udfff); send valid UTF-8 or surrogate pairs")
                stack.append((f"{where}.{key}" if where else key, item))
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}" if where else str(i), item) for i, item in enumerate(value))


def model_not_found(model: str) -> ApiError:
    shown = model if len(model) <= 64 else model[:64] + "…"
    return ApiError(404, "not_found_error", f"model {shown!r} does not exist or this key cannot use it")
