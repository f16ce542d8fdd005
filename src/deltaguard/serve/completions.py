"""``POST /v1/chat/completions``: limits, prompt moderation, the engine, response moderation, JSON or SSE.

Every request ends with one ``_Call.finish``: a Prometheus count (by tenant and outcome), token and
latency metrics, and one structured log line — never the prompt, the response or the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from deltaguard.errors import ConfigError
from deltaguard.serve.requests import EngineBusyError, EngineClosedError, Event, RequestHandle, SamplingParams
from deltaguard.serve.moderation import Decision
from deltaguard.serve.protocol import (
    ApiError, ChatCompletionRequest, error_body, model_not_found, read_json, tenant_caller, validation_message,
)
from deltaguard.serve.server import Server

log = logging.getLogger("deltaguard.serve.http")


class _Call:
    """Bookkeeping of one chat request: metrics and one structured log line at the end."""

    def __init__(self, server: Server, stream: bool = False) -> None:
        self.server, self.stream = server, stream
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.started = time.perf_counter()
        self.tenant = "-"
        self.n_prompt = self.n_completion = 0
        self.decisions: list[Decision] = []

    def moderated(self, decision: Decision) -> None:
        if decision.is_fired:
            self.decisions.append(decision)
            self.server.metrics.inc("deltaguard_moderation_total", tenant=self.tenant, stage=decision.stage,
                                    action=decision.action)

    def finish(self, status: str, *, http_status: int = 200, finish_reason: str | None = None,
               error_type: str | None = None) -> None:
        seconds = time.perf_counter() - self.started
        metrics = self.server.metrics
        metrics.inc("deltaguard_requests_total", tenant=self.tenant, status=status)
        if error_type is not None:
            metrics.inc("deltaguard_errors_total", tenant=self.tenant, type=error_type)
        if self.n_prompt or self.n_completion:
            metrics.inc("deltaguard_tokens_total", self.n_prompt, tenant=self.tenant, kind="prompt")
            metrics.inc("deltaguard_tokens_total", self.n_completion, tenant=self.tenant, kind="completion")
        if status == "ok":
            metrics.observe_latency(seconds, tenant=self.tenant)
        log.info("chat completion", extra={
            "request_id": self.id, "tenant": self.tenant, "status": status, "http_status": http_status,
            "stream": self.stream, "latency_ms": round(seconds * 1000, 2), "prompt_tokens": self.n_prompt,
            "completion_tokens": self.n_completion, "finish_reason": finish_reason, "error_type": error_type,
            "moderation": [d.to_dict() for d in self.decisions]})


async def chat_completion(server: Server, request: Request) -> Any:
    """Answer one chat completion request (JSON, or an SSE stream when ``stream`` is true)."""
    call = _Call(server)
    try:
        reachable = tenant_caller(server, request)
        try:
            body = ChatCompletionRequest.model_validate(await read_json(server, request))
        except ValidationError as exc:
            raise ApiError(400, "invalid_request_error", validation_message(exc)) from None
        body.check_supported()
        if body.model not in reachable:
            raise model_not_found(body.model)
        call.tenant, call.stream = body.model, body.stream
        handle, prompt_text = await _submit(server, body, call)
    except ApiError as exc:
        call.finish("blocked" if exc.type == "content_policy_violation" else "rejected", http_status=exc.status,
                    error_type=exc.type)
        raise
    if body.stream:
        return StreamingResponse(_stream(server, body, handle, prompt_text, call), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _complete(server, body, handle, prompt_text, call)


async def _submit(server: Server, body: ChatCompletionRequest, call: _Call) -> tuple[RequestHandle, str]:
    config = server.config
    max_new = body.max_completion_tokens or body.max_tokens or min(config.default_new_tokens, config.max_new_tokens)
    if max_new > config.max_new_tokens:
        raise ApiError(400, "invalid_request_error",
                       f"max_tokens={max_new} exceeds this server's limit of {config.max_new_tokens}")
    messages = body.chat_messages()
    prompt_ids = server.encode_chat(messages)
    call.n_prompt = len(prompt_ids)
    if len(prompt_ids) > config.max_prompt_tokens:
        raise ApiError(400, "invalid_request_error",
                       f"the prompt is {len(prompt_ids)} tokens; this server's limit is {config.max_prompt_tokens}")
    prompt_text = "\n".join(m["content"] for m in messages if m["role"] != "assistant")
    moderator = server.moderators.get(body.model)
    if moderator is not None and moderator.screens("prompt"):
        decision = await asyncio.to_thread(moderator.screen, "prompt", prompt_text)
        call.moderated(decision)
        if decision.is_blocked:
            raise ApiError(400, "content_policy_violation", moderator.config.message)
    params = SamplingParams(max_new_tokens=max_new, temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, stop=body.stop_strings())
    try:
        handle = server.engine.submit(body.model, prompt_ids, params, loop=asyncio.get_running_loop(), request_id=call.id)
    except EngineClosedError as exc:
        raise ApiError(503, "server_error", str(exc)) from None
    except EngineBusyError as exc:
        raise ApiError(429, "rate_limit_error", str(exc), headers={"Retry-After": "1"}) from None
    except ConfigError as exc:
        raise ApiError(400, "invalid_request_error", str(exc)) from None
    return handle, prompt_text


def _engine_error(event: Event) -> ApiError:
    if event.error_kind == "removed":
        return ApiError(404, "not_found_error", event.error)
    if event.error_kind == "shutdown":
        return ApiError(503, "server_error", event.error)
    if event.error_kind == "bad_output":
        return ApiError(500, "model_error", event.error)
    return ApiError(500, "server_error", event.error)


async def _screen_response(server: Server, body: ChatCompletionRequest, prompt_text: str, text: str,
                           call: _Call) -> Decision | None:
    moderator = server.moderators.get(body.model)
    if moderator is None or not moderator.screens("response"):
        return None
    decision = await asyncio.to_thread(moderator.screen, "response", prompt_text, text)
    call.moderated(decision)
    return decision


async def _complete(server: Server, body: ChatCompletionRequest, handle: RequestHandle, prompt_text: str,
                    call: _Call) -> JSONResponse:
    parts: list[str] = []
    final: Event | None = None
    try:
        async with asyncio.timeout(server.config.request_timeout_seconds):
            async for event in handle.aevents():
                if event.kind == "text":
                    parts.append(event.text)
                else:
                    final = event
    except TimeoutError:
        handle.cancel()
        call.finish("error", http_status=504, error_type="timeout")
        raise ApiError(504, "timeout", f"generation took longer than {server.config.request_timeout_seconds:g} s") from None
    except asyncio.CancelledError:  # the client went away
        handle.cancel()
        call.finish("cancelled", http_status=499)
        raise
    assert final is not None
    if final.kind == "error":
        error = _engine_error(final)
        call.finish("error", http_status=error.status, error_type=error.type)
        raise error
    call.n_completion = final.n_completion_tokens
    text, finish_reason = "".join(parts), final.finish_reason
    decision = await _screen_response(server, body, prompt_text, text, call)
    if decision is not None and decision.is_blocked:
        text, finish_reason = server.moderators[body.model].config.message, "content_filter"
    response: dict[str, Any] = {
        "id": call.id, "object": "chat.completion", "created": int(time.time()), "model": body.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": _usage(call),
    }
    if call.decisions:
        response["moderation"] = [d.to_dict() for d in call.decisions]
    call.finish("ok", finish_reason=finish_reason)
    return JSONResponse(response)


def _usage(call: _Call) -> dict[str, int]:
    return {"prompt_tokens": call.n_prompt, "completion_tokens": call.n_completion,
            "total_tokens": call.n_prompt + call.n_completion}


async def _stream(server: Server, body: ChatCompletionRequest, handle: RequestHandle, prompt_text: str,
                  call: _Call) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        payload = {"id": call.id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    moderator = server.moderators.get(body.model)
    # A response that may be withheld cannot be streamed before it is judged: buffer it.
    is_buffered = moderator is not None and moderator.screens("response") and moderator.config.action == "block"
    parts: list[str] = []
    completed = False
    timeout = server.config.request_timeout_seconds
    try:
        yield chunk({"role": "assistant", "content": ""})
        final: Event | None = None
        try:
            async with asyncio.timeout(timeout):  # a stream has a deadline too: it can never hang open
                async for event in handle.aevents():
                    if event.kind == "text":
                        parts.append(event.text)
                        if not is_buffered:
                            yield chunk({"content": event.text})
                    else:
                        final = event
        except TimeoutError:
            handle.cancel()
            call.finish("error", http_status=504, error_type="timeout")
            completed = True
            yield f"data: {json.dumps(error_body('timeout', f'generation took longer than {timeout:g} s'))}\n\n"
            return
        assert final is not None
        if final.kind == "error":
            error = _engine_error(final)
            call.finish("error", http_status=error.status, error_type=error.type)
            completed = True
            yield f"data: {json.dumps(error.body())}\n\n"
            return
        call.n_completion = final.n_completion_tokens
        text, finish_reason = "".join(parts), final.finish_reason
        decision = await _screen_response(server, body, prompt_text, text, call)
        if is_buffered:
            if decision is not None and decision.is_blocked:
                text, finish_reason = moderator.config.message, "content_filter"  # type: ignore[union-attr]
            if text:
                yield chunk({"content": text})
        extra = {"moderation": [d.to_dict() for d in call.decisions]} if call.decisions else {}
        yield chunk({}, finish_reason, **extra)
        if body.stream_options is not None and body.stream_options.include_usage:
            usage_chunk = {"id": call.id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                           "choices": [], "usage": _usage(call)}
            yield f"data: {json.dumps(usage_chunk)}\n\n"
        yield "data: [DONE]\n\n"
        call.finish("ok", finish_reason=finish_reason)
        completed = True
    finally:
        if not completed:  # the client disconnected mid-stream
            handle.cancel()
            call.finish("cancelled", http_status=499)
