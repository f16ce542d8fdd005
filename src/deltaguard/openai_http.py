"""The one HTTP client of OpenAI-compatible endpoints (``POST {base_url}/chat/completions``), through httpx.

Used by the ``llm`` judge and the ``openai`` generation backend (``deltaguard eval --endpoint``). What they
share lives here: checking a base URL, the bearer header (a key is read from an environment variable
only, so it never lands on a command line or in a results file), retries with exponential backoff on
timeouts, dropped connections, 429 (honouring a numeric ``Retry-After``) and 5xx answers, the one-line
message for the answers that must stop a run (401/403: credentials; 404: URL or model name), a bounded
thread pool, and reading the text out of a chat completion.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

from deltaguard.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

MAX_RETRY_AFTER_SECONDS = 60.0   # a server asking for a longer pause is waited on this long at most
ENV_ENDPOINT_API_KEY = "DELTAGUARD_ENDPOINT_API_KEY"   # the key of an evaluated endpoint (eval/trust --endpoint)


def check_base_url(url: str, what: str) -> str:
    """``url`` without a trailing slash, after checking it is an http(s) URL with a host; ConfigError otherwise."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{what}={url!r} must start with http:// or https://")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{what}={public_url(url)!r} is not a valid URL ({exc})") from None
    if not parts.hostname:
        raise ConfigError(f"{what}={public_url(url)!r} names no host")
    if any(c.isspace() for c in url):
        raise ConfigError(f"{what}={public_url(url)!r} contains whitespace")
    return url.rstrip("/")


def public_url(url: str) -> str:
    """``url`` without credentials (``user:password@``), query or fragment: safe for logs, keys and results."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return url.split("@")[-1].split("?")[0].split("#")[0]
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", "")).rstrip("/")


def auth_headers(key_env: str) -> dict[str, str]:
    """JSON headers, with ``Authorization: Bearer $<key_env>`` when that variable is set and not empty."""
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get(key_env):
        headers["Authorization"] = f"Bearer {key}"
    return headers


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request is tried: a per-attempt timeout, retries after transient failures, backoff."""

    timeout_seconds: float = 60.0
    max_retries: int = 3
    backoff_seconds: float = 1.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (1, 2, ...): ``backoff · 2^(attempt-1)``, or a numeric
        ``Retry-After`` when longer (at most 60 s)."""
        delay = self.backoff_seconds * (2 ** (attempt - 1))
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER_SECONDS))
            except ValueError:
                pass  # an HTTP date: keep the exponential delay
        return delay


@dataclass(frozen=True)
class EndpointClient:
    """Where the ``openai`` generation backend sends its requests: an endpoint, a served model, and how hard to try.

    Holds no key: each request reads ``$<key_env>`` (``DELTAGUARD_ENDPOINT_API_KEY``). Credentials in the
    URL (``https://user:password@host/v1``) are sent as HTTP basic auth and never shown.

    Args:
        base_url: the URL before ``/chat/completions`` (e.g. ``http://127.0.0.1:8000/v1``).
        model_name: the ``model`` field of each request (the server's name for the model).
        concurrency: requests in flight at once.
        retry: per-request timeout, retries and backoff.
        key_env: the environment variable holding the bearer key.
    """

    base_url: str
    model_name: str
    concurrency: int = 4
    retry: RetryPolicy = RetryPolicy(timeout_seconds=120.0, max_retries=5, backoff_seconds=1.0)
    key_env: str = ENV_ENDPOINT_API_KEY

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", check_base_url(self.base_url, "endpoint"))
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise ConfigError("an endpoint needs the served model's name (--model NAME)")
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= 256:
            raise ConfigError(f"endpoint concurrency={self.concurrency!r} must be an integer from 1 to 256")

    @property
    def public_url(self) -> str:
        return public_url(self.base_url)

    def __repr__(self) -> str:   # never the URL's credentials
        return f"EndpointClient({self.public_url!r}, model={self.model_name!r}, concurrency={self.concurrency})"

    def http_client(self) -> Any:
        """An ``httpx.Client`` on the base URL with the JSON and bearer headers and the per-request timeout."""
        import httpx

        return httpx.Client(base_url=self.base_url, headers=auth_headers(self.key_env),
                            timeout=self.retry.timeout_seconds)


def post_json(client: Any, path: str, body: dict[str, Any], policy: RetryPolicy,
              *, sleep: Callable[[float], None] = time.sleep) -> tuple[Any, str]:
    """POST ``body`` to ``path`` on an ``httpx.Client``, retrying timeouts, dropped connections, 429 and 5xx.

    Returns ``(reply, last_failure)``: the first reply that is not retried (any 2xx or other 4xx, which
    the caller reads — see ``fatal_message``), or ``(None, failure)`` once every attempt failed, where
    ``failure`` says how the last one did ("timed out after 60 s", "answered HTTP 503", ...).
    """
    import httpx

    last, retry_after = "no attempt", None
    for attempt in range(policy.max_retries + 1):
        if attempt:
            sleep(policy.delay(attempt, retry_after))
            retry_after = None
        try:
            reply = client.post(path, json=body)
        except httpx.TimeoutException:
            last = f"timed out after {policy.timeout_seconds:g} s"
            continue
        except httpx.TransportError as exc:
            last = f"connection failed ({type(exc).__name__})"
            continue
        if reply.status_code == 429 or reply.status_code >= 500:
            last = f"answered HTTP {reply.status_code}"
            retry_after = reply.headers.get("retry-after") if reply.status_code == 429 else None
            continue
        return reply, last
    return None, last


def fatal_message(status: int, *, what: str, url: str, model: str, key_env: str) -> str | None:
    """The one-line reason to stop a run for an answer no retry can fix (401/403/404), else None."""
    if status in (401, 403):
        return f"{what} {public_url(url)} refused the credentials (HTTP {status}); check {key_env}"
    if status == 404:
        return f"{what} {public_url(url)}/chat/completions or model {model!r} not found (HTTP 404)"
    return None


def error_detail(reply: Any, limit: int = 200) -> str:
    """The server's own error message of a rejected request (OpenAI's ``{"error": {"message"}}``), one line."""
    try:
        data = reply.json()
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        text = str(message if message else data)
    except ValueError:
        text = reply.text
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def chat_text(data: Any) -> str:
    """The assistant text of a chat completion (``choices[0].message.content``); ValueError when it has none."""
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("response is not an OpenAI-style chat completion") from None
    if not isinstance(text, str):
        raise ValueError("chat completion has no text content")
    return text


def completion_tokens(data: Any) -> int | None:
    """``usage.completion_tokens`` of a completion, or None when the server did not report it."""
    usage = data.get("usage") if isinstance(data, dict) else None
    value = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def map_in_pool(fn: Callable[[T], R], items: Iterable[T], concurrency: int) -> list[R]:
    """``[fn(item) for item in items]`` with at most ``concurrency`` calls in flight; the first exception
    stops it (requests not yet started are dropped, not sent)."""
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def completed_in_pool(fn: Callable[[T], R], items: list[T], concurrency: int) -> Iterator[tuple[int, R]]:
    """``(index, fn(items[index]))`` in the order calls finish, with at most ``concurrency`` in flight (a call
    starts only when another has finished). The first exception is raised here, and no further call starts."""
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        queue = iter(enumerate(items))
        running: dict[Future[R], int] = {}

        def start_next() -> None:
            for index, item in queue:
                running[pool.submit(fn, item)] = index
                return

        for _ in range(concurrency):
            start_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                result = future.result()  # raises the call's exception: nothing more is started
                start_next()
                yield index, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["ENV_ENDPOINT_API_KEY", "EndpointClient", "RetryPolicy", "auth_headers", "chat_text", "check_base_url", "completed_in_pool", "completion_tokens",
           "error_detail", "fatal_message", "map_in_pool", "post_json", "public_url"]
