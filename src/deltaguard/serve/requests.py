"""What a client hands the engine and gets back: sampling settings, a handle, a stream of events.

A ``RequestHandle`` is filled by the engine thread and read by its consumer, either synchronously
(``events()``) or from an asyncio loop (``aevents()``, fed with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import queue
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

from deltaguard.errors import DeltaguardError


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (validated at the HTTP boundary)."""

    max_new_tokens: int
    temperature: float = 1.0        # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False        # benchmarks: always generate max_new_tokens
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, bias) added to the logits before sampling


@dataclass(frozen=True)
class Event:
    """What a request's consumer receives: text deltas, then one ``done`` (or ``error``)."""

    kind: str                       # "text" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None   # "stop" | "length" | "cancelled"
    n_prompt_tokens: int = 0
    n_completion_tokens: int = 0
    error: str = ""
    error_kind: str = ""            # "removed" (tenant removed), "shutdown", "failed", "bad_output"


class EngineBusyError(DeltaguardError):
    """The queue is full; the client should retry later (HTTP 429)."""


class EngineClosedError(DeltaguardError):
    """The engine is shutting down and takes no new requests (HTTP 503)."""


class RequestHandle:
    """A submitted request: iterate its events (sync or async), or cancel it."""

    def __init__(self, request_id: str, tenant: str, prompt_ids: list[int], params: SamplingParams,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self.id, self.tenant, self.prompt_ids, self.params = request_id, tenant, prompt_ids, params
        self.token_ids: list[int] = []
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.is_cancelled = False
        self.is_finished = False        # a terminal event ("done" or "error") was emitted
        self._loop = loop
        self._async_queue: asyncio.Queue[Event] | None = asyncio.Queue() if loop is not None else None
        self._queue: queue.Queue[Event] = queue.Queue()

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the engine drops the sequence at its next step."""
        self.is_cancelled = True

    def _emit(self, event: Event) -> None:
        """Deliver an event; after the terminal one nothing more is sent, so a consumer sees exactly one end."""
        if self.is_finished:
            return
        if event.kind in ("done", "error"):
            self.is_finished = True
        if self._loop is not None and self._async_queue is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_queue.put_nowait, event)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                self.is_cancelled = True
        else:
            self._queue.put(event)

    def events(self) -> Iterator[Event]:
        while True:
            event = self._queue.get()
            yield event
            if event.kind in ("done", "error"):
                return

    async def aevents(self) -> AsyncIterator[Event]:
        assert self._async_queue is not None, "submit(..., loop=...) to consume events asynchronously"
        while True:
            event = await self._async_queue.get()
            yield event
            if event.kind in ("done", "error"):
                return


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    token_ids: list[int]
    n_prompt_tokens: int
