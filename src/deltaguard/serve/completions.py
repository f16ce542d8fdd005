"""``POST /v1/chat/completions`` and ``POST /v1/completions``: limits, prompt moderation, the engine,
response moderation, then JSON (or SSE for chat).

Both go the same way — tenant key, request model, unsupported settings refused, token budget, prompt
limit, prompt moderation, engine, response moderation — and differ only in how the prompt becomes
tokens: a chat through the tenant's (or the base tokenizer's) chat template, a text completion raw.
Every request ends with one ``_Call.finish``: Prometheus counts (by tenant and outcome), token, latency,
time-to-first-token and generated-token metrics, and one structured log line carrying the request's
``x-request-id`` — never the prompt, the response or the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any, AsyncIterator, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from deltaguard.errors import ConfigError
from deltaguard.serve.moderation import Decision
from deltaguard.serve.protocol import (
    ApiError, ChatCompletionRequest, CompletionRequest, invalid, model_not_found, read_json, request_id_of,
    tenant_caller, validation_error,
)
from deltaguard.serve.requests import EngineBusyError, EngineClosedError, Event, RequestHandle, SamplingParams
from deltaguard.serve.server import ChatEncodingError, Server

log = logging.getLogger("deltaguard.serve.http")

_Body = TypeVar("_Body", bound=BaseModel)


class _Call:
    """Bookkeeping of one completion request: metrics and one structured log line at the end."""

    def __init__(self, server: Server, request: Request, kind: str) -> None:
        self.server, self.kind, self.stream = server, kind, False
        self.request = request
        self.request_id = request_id_of(request)
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.tenant = "-"
        self.n_prompt = self.n_completion = 0
        self.decisions: list[Decision] = []
        self.is_finished = False

    def moderated(self, decision: Decision) -> None:
        if decision.is_fired:
            self.decisions.append(decision)
            self.server.metrics.inc("deltaguard_moderation_total", tenant=self.tenant, stage=decision.stage,
                                    action=decision.action)

    def saw(self, handle: RequestHandle) -> None:
        """Note when the handle's first token came (the earliest over a request's prompts)."""
        first = handle.first_token_at
        if first is not None and (self.first_token_at is None or first < self.first_token_at):
            self.first_token_at = first

    def finish(self, status: str, *, http_status: int = 200, finish_reason: str | None = None,
               error_type: str | None = None) -> None:
        if self.is_finished:
            return
        self.is_finished = True
        seconds = time.perf_counter() - self.started
        metrics, tenant = self.server.metrics, self.tenant
        metrics.inc("deltaguard_requests_total", tenant=tenant, status=status)
        if error_type is not None:
            metrics.inc("deltaguard_errors_total", tenant=tenant, type=error_type)
        if self.n_prompt or self.n_completion:
            metrics.inc("deltaguard_tokens_total", self.n_prompt, tenant=tenant, kind="prompt")
            metrics.inc("deltaguard_tokens_total", self.n_completion, tenant=tenant, kind="completion")
        if status == "ok":
            metrics.observe_latency(seconds, tenant=tenant)
            metrics.observe("deltaguard_request_generated_tokens", self.n_completion, tenant=tenant)
            if self.first_token_at is not None:
                metrics.observe("deltaguard_time_to_first_token_seconds", max(self.first_token_at - self.started, 0.0),
                                tenant=tenant)
        log.info("chat completion" if self.kind == "chat" else "text completion", extra={
            "request_id": self.request_id, "completion_id": self.id, "tenant": tenant, "status": status,
            "http_status": http_status, "stream": self.stream, "latency_ms": round(seconds * 1000, 2),
            "prompt_tokens": self.n_prompt, "completion_tokens": self.n_completion, "finish_reason": finish_reason,
            "error_type": error_type, "moderation": [d.to_dict() for d in self.decisions]})

    def refused(self, exc: ApiError) -> None:
        self.finish("blocked" if exc.type == "content_policy_violation" else "rejected", http_status=exc.status,
                    error_type=exc.type)


# -- the shared path ---------------------------------------------------------------------------------

def _parse(model: type[_Body], data: Any) -> _Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _sampling(server: Server, body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    """The request's budget and sampling settings, checked against this server's limits and vocabulary."""
    config = server.config
    requested, field = body.budget()
    max_new = requested or min(config.default_new_tokens, config.max_new_tokens)
    if max_new > config.max_new_tokens:
        raise invalid(f"{field}={max_new} exceeds this server's limit of {config.max_new_tokens}", field,
                      "max_tokens_exceeded")
    vocab = min(server.engine.vocab_size, len(server.tokenizer))
    return SamplingParams(max_new_tokens=max_new, temperature=1.0 if body.temperature is None else body.temperature,
                          top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, stop=body.stop_strings(),
                          logit_bias=body.logit_bias_pairs(vocab))


def _check_prompt_length(server: Server, n_tokens: int, param: str) -> None:
    limit = server.config.max_prompt_tokens
    if n_tokens > limit:
        raise invalid(f"the prompt is {n_tokens} tokens; this server's limit is {limit}", param,
                      "context_length_exceeded")


async def _screen_prompt(server: Server, tenant: str, prompt_text: str, call: _Call) -> None:
    moderator = server.moderators.get(tenant)
    if moderator is not None and moderator.screens("prompt"):
        decision = await asyncio.to_thread(moderator.screen, "prompt", prompt_text)
        call.moderated(decision)
        if decision.is_blocked:
            raise ApiError(400, "content_policy_violation", moderator.config.message, code="content_filter")


async def _screen_response(server: Server, tenant: str, prompt_text: str, text: str, call: _Call) -> Decision | None:
    moderator = server.moderators.get(tenant)
    if moderator is None or not moderator.screens("response"):
        return None
    decision = await asyncio.to_thread(moderator.screen, "response", prompt_text, text)
    call.moderated(decision)
    return decision


def _submit(server: Server, tenant: str, prompt_ids: list[int], params: SamplingParams, call: _Call,
            param: str) -> RequestHandle:
    try:
        return server.engine.submit(tenant, prompt_ids, params, loop=asyncio.get_running_loop(),
                                    request_id=call.request_id)
    except EngineClosedError as exc:
        raise ApiError(503, "server_error", str(exc), code="shutting_down") from None
    except EngineBusyError as exc:
        raise ApiError(429, "rate_limit_error", str(exc), code="queue_full", headers={"Retry-After": "1"}) from None
    except ConfigError as exc:
        raise invalid(str(exc), param) from None


def _engine_error(event: Event) -> ApiError:
    if event.error_kind == "removed":
        return ApiError(404, "not_found_error", event.error, param="model", code="model_not_found")
    if event.error_kind == "shutdown":
        return ApiError(503, "server_error", event.error, code="shutting_down")
    if event.error_kind == "bad_output":
        return ApiError(500, "model_error", event.error, code="non_finite_logits")
    return ApiError(500, "server_error", event.error, code="generation_failed")


DISCONNECT_POLL_SECONDS = 0.2


def _timeout_error(server: Server) -> ApiError:
    return ApiError(504, "timeout", f"generation took longer than {server.config.request_timeout_seconds:g} s",
                    code="timeout")


async def _results(server: Server, handles: list[RequestHandle], call: _Call) -> list[tuple[str, Event]]:
    """Each handle's whole text and final event; a timeout, a disconnect or an engine error ends them all."""
    async def collect(handle: RequestHandle) -> tuple[str, Event]:
        parts: list[str] = []
        final = Event("error", error="generation ended without a result", error_kind="failed")
        async for event in handle.aevents():
            if event.kind == "text":
                parts.append(event.text)
            else:
                final = event
        return "".join(parts), final

    async def client_gone() -> None:
        # A JSON (non-streaming) request is not cancelled when its client hangs up: without this watch the
        # engine would finish the generation for nobody and count it as a success.
        while not await call.request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)

    work = asyncio.ensure_future(asyncio.gather(*(collect(h) for h in handles)))
    watcher = asyncio.ensure_future(client_gone())
    try:
        async with asyncio.timeout(server.config.request_timeout_seconds):
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:   # the client went away first
            raise ApiError(499, "client_closed_request", "the client closed the connection", code="client_closed")
        results = work.result()
    except TimeoutError:
        for handle in handles:
            handle.cancel()
        error = _timeout_error(server)
        call.finish("error", http_status=504, error_type="timeout")
        raise error from None
    except ApiError:
        for handle in handles:
            handle.cancel()
        call.finish("cancelled", http_status=499)
        raise
    except asyncio.CancelledError:  # the handler itself was cancelled (server shutdown, stream closed)
        for handle in handles:
            handle.cancel()
        call.finish("cancelled", http_status=499)
        raise
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
    for handle in handles:
        call.saw(handle)
    call.n_completion = sum(final.n_completion_tokens for _, final in results)
    failed = [final for _, final in results if final.kind == "error"]
    if failed:
        error = _engine_error(failed[0])
        call.finish("error", http_status=error.status, error_type=error.type)
        raise error
    return list(results)


def _usage(call: _Call) -> dict[str, int]:
    return {"prompt_tokens": call.n_prompt, "completion_tokens": call.n_completion,
            "total_tokens": call.n_prompt + call.n_completion}


# -- POST /v1/chat/completions -----------------------------------------------------------------------

async def chat_completion(server: Server, request: Request) -> Any:
    """Answer one chat completion request (JSON, or an SSE stream when ``stream`` is true)."""
    call = _Call(server, request, "chat")
    try:
        reachable = tenant_caller(server, request)
        body = _parse(ChatCompletionRequest, await read_json(server, request))
        body.check_supported()
        if body.model not in reachable:
            raise model_not_found(body.model)
        call.tenant, call.stream = body.model, body.stream
        params = _sampling(server, body)
        messages = body.chat_messages()
        try:
            prompt_ids = server.encode_chat(messages, tenant=body.model)
        except ChatEncodingError as exc:
            raise invalid(str(exc), "messages", "unencodable_content") from None
        call.n_prompt = len(prompt_ids)
        _check_prompt_length(server, len(prompt_ids), "messages")
        prompt_text = "\n".join(m["content"] for m in messages if m["role"] != "assistant")
        await _screen_prompt(server, body.model, prompt_text, call)
        handle = _submit(server, body.model, prompt_ids, params, call, "messages")
    except ApiError as exc:
        call.refused(exc)
        raise
    except Exception:
        call.finish("error", http_status=500, error_type="server_error")
        raise
    if body.stream:
        return StreamingResponse(_stream(server, body, handle, prompt_text, call), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _complete(server, body, handle, prompt_text, call)


async def _complete(server: Server, body: ChatCompletionRequest, handle: RequestHandle, prompt_text: str,
                    call: _Call) -> JSONResponse:
    [(text, final)] = await _results(server, [handle], call)
    finish_reason = final.finish_reason
    decision = await _screen_response(server, body.model, prompt_text, text, call)
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
            yield f"data: {json.dumps(_timeout_error(server).body())}\n\n"
            return
        assert final is not None
        call.saw(handle)
        if final.kind == "error":
            error = _engine_error(final)
            call.finish("error", http_status=error.status, error_type=error.type)
            completed = True
            yield f"data: {json.dumps(error.body())}\n\n"
            return
        call.n_completion = final.n_completion_tokens
        text, finish_reason = "".join(parts), final.finish_reason
        decision = await _screen_response(server, body.model, prompt_text, text, call)
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


# -- POST /v1/completions ----------------------------------------------------------------------------

async def text_completion(server: Server, request: Request) -> JSONResponse:
    """Answer one legacy text completion request: raw prompt(s), no chat template, JSON only."""
    call = _Call(server, request, "text")
    handles: list[RequestHandle] = []
    try:
        reachable = tenant_caller(server, request)
        body = _parse(CompletionRequest, await read_json(server, request))
        body.check_supported()
        if body.model not in reachable:
            raise model_not_found(body.model)
        call.tenant = body.model
        params = _sampling(server, body)
        prompts = _encode_prompts(server, body)
        call.n_prompt = sum(len(ids) for ids, _ in prompts)
        for ids, _ in prompts:
            _check_prompt_length(server, len(ids), "prompt")
        for _, text in prompts:
            await _screen_prompt(server, body.model, text, call)
        for ids, _ in prompts:
            handles.append(_submit(server, body.model, ids, params, call, "prompt"))
    except ApiError as exc:
        for handle in handles:
            handle.cancel()
        call.refused(exc)
        raise
    except Exception:
        for handle in handles:
            handle.cancel()
        call.finish("error", http_status=500, error_type="server_error")
        raise
    results = await _results(server, handles, call)
    choices = []
    for index, ((text, final), (_, prompt_text)) in enumerate(zip(results, prompts)):
        finish_reason = final.finish_reason
        decision = await _screen_response(server, body.model, prompt_text, text, call)
        if decision is not None and decision.is_blocked:
            text, finish_reason = server.moderators[body.model].config.message, "content_filter"
        choices.append({"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason})
    response: dict[str, Any] = {"id": call.id, "object": "text_completion", "created": int(time.time()),
                                "model": body.model, "choices": choices, "usage": _usage(call)}
    if call.decisions:
        response["moderation"] = [d.to_dict() for d in call.decisions]
    call.finish("ok", finish_reason=choices[0]["finish_reason"] if len(choices) == 1 else None)
    return JSONResponse(response)


def _encode_prompts(server: Server, body: CompletionRequest) -> list[tuple[list[int], str]]:
    """(token ids, text) of each prompt: strings are tokenized raw, token arrays are checked and decoded."""
    vocab = server.engine.vocab_size
    encoded = []
    for i, prompt in enumerate(body.prompts()):
        where = "prompt" if len(body.prompts()) == 1 else f"prompt.{i}"
        if isinstance(prompt, str):
            ids, text = server.encode_text(prompt), prompt
        else:
            outside = [t for t in prompt if not 0 <= t < vocab]
            if outside:
                raise invalid(f"{where} holds token id {outside[0]}, outside this model's vocabulary "
                              f"(0..{vocab - 1})", "prompt")
            ids, text = list(prompt), server.tokenizer.decode(prompt)
        if not ids:
            raise invalid(f"{where} encodes to zero tokens; give a non-empty prompt", "prompt")
        encoded.append((ids, text))
    return encoded
