"""Continuous batching over one shared base: sequences of different tenants decode in one forward pass.

Each ``step`` (1) admits waiting requests — prefilled together in one forward (left-padded, each
row with its own tenant's delta) — and they join the running batch; (2) runs ONE decode forward for every
running sequence, whatever its tenant; (3) retires sequences that hit EOS, a stop string, their
token budget, or were cancelled. The KV cache is one batched ``DynamicCache`` with left padding:
when sequences join, the shorter side is padded on the left (masked out) and the rows are ordered by
tenant, so each tenant's rows are one contiguous slice for the delta kernels; when sequences leave,
their rows are dropped and all-padding columns trimmed. Positions are tracked per row, so a row's
result does not depend on the padding or on which other tenants share the batch.

``start()`` runs the loop on a background thread that sleeps while there is nothing to do;
``run_until_idle()`` drives it from the calling thread (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from deltaguard.config import Config, check_range
from deltaguard.errors import ConfigError, DeltaguardError
from deltaguard.generation import left_pad, stop_token_ids
from deltaguard.models import cache_kwargs, output_cache
from deltaguard.sampling import pick_token, row_is_sampleable
from deltaguard.serve.layers import MultiTenantModel
from deltaguard.serve.requests import (
    Completion, EngineBusyError, EngineClosedError, Event, RequestHandle, SamplingParams,
)

log = logging.getLogger("deltaguard.serve.engine")


@dataclass(frozen=True, kw_only=True)
class EngineConfig(Config):
    """How the engine batches.

    Args:
        max_batch_size: sequences decoded together in one forward pass.
        max_queue: requests waiting for a batch slot; more are refused (HTTP 429).
        max_prefills_per_step: waiting requests admitted between two decode steps (bounds the
            pause new arrivals cause to running streams).
    """

    name: ClassVar[str] = "engine"
    version: ClassVar[int] = 1
    max_batch_size: int = 16
    max_queue: int = 256
    max_prefills_per_step: int = 4

    def __post_init__(self) -> None:
        check_range("engine.max_batch_size", self.max_batch_size, 1, 4096)
        check_range("engine.max_queue", self.max_queue, 1)
        check_range("engine.max_prefills_per_step", self.max_prefills_per_step, 1)


@dataclass
class _Sequence:
    handle: RequestHandle
    next_token: int                 # sampled, not yet fed to the model
    position: int                   # tokens of this sequence in the cache
    generator: torch.Generator | None
    emitted: int = 0                # characters of text already sent
    text: str = ""
    finish_reason: str | None = None
    stop_ids: frozenset[int] = field(default_factory=frozenset)
    error: str = ""                 # why it failed (finish_reason "failed")


class Engine:
    """Continuous-batching decode over a ``MultiTenantModel``; thread-safe ``submit``."""

    def __init__(self, model: MultiTenantModel, tokenizer: Any, config: EngineConfig = EngineConfig()) -> None:
        self.mt, self.tokenizer, self.config = model, tokenizer, config
        self.device = next(model.model.parameters()).device
        self.max_positions = int(getattr(model.model.config, "max_position_embeddings", 0) or 0)
        self.stop_ids = frozenset(stop_token_ids(model.model, tokenizer))
        self.vocab_size = _vocab_size(model.model)   # the width of a row of logits
        self._pending: list[RequestHandle] = []
        self._active: list[_Sequence] = []
        self._cache: Any = None
        self._mask: Tensor | None = None          # [B, L] 1 = real token
        self._cond = threading.Condition()
        self._step_lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._running = False
        self._is_closing = False
        self._ids = itertools.count(1)
        self.n_steps = 0
        self.n_decoded_tokens = 0

    # -- public API ------------------------------------------------------------------------------

    def submit(self, tenant: str, prompt_ids: list[int], params: SamplingParams, *,
               loop: asyncio.AbstractEventLoop | None = None, request_id: str | None = None) -> RequestHandle:
        if tenant not in self.mt:
            raise ConfigError(f"tenant {tenant!r} is not loaded")
        if not prompt_ids:
            raise ConfigError("the prompt encodes to zero tokens")
        if params.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={params.max_new_tokens} must be >= 1")
        if any(not 0 <= token < self.vocab_size for token in prompt_ids):
            raise ConfigError(f"the prompt holds a token id outside the vocabulary (0..{self.vocab_size - 1})")
        if any(not 0 <= token < self.vocab_size or not math.isfinite(bias) for token, bias in params.logit_bias):
            raise ConfigError(f"logit_bias needs token ids in 0..{self.vocab_size - 1} and finite biases")
        if self.max_positions and len(prompt_ids) + params.max_new_tokens > self.max_positions:
            raise ConfigError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) "
                              f"exceeds the model's context of {self.max_positions} tokens")
        handle = RequestHandle(request_id or f"req-{next(self._ids)}", tenant, list(prompt_ids), params, loop)
        with self._cond:
            if self._is_closing:
                raise EngineClosedError("the server is shutting down; retry on another replica or later")
            if len(self._pending) >= self.config.max_queue:
                raise EngineBusyError(f"the server is busy ({len(self._pending)} requests waiting); retry later")
            self._pending.append(handle)
            self._cond.notify()
        return handle

    def generate(self, tenant: str, prompt_ids: list[int], params: SamplingParams) -> Completion:
        """Submit and wait (drives the loop itself when no background thread runs)."""
        handle = self.submit(tenant, prompt_ids, params)
        if self._thread is None:
            self.run_until_idle()
        return _collect(handle)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running, self._is_closing = True, False
        self._thread = threading.Thread(target=self._loop, name="deltaguard-engine", daemon=True)
        self._thread.start()

    def begin_shutdown(self) -> None:
        """Ask the loop to stop after its current step (it then fails every waiting and running request
        with a ``shutdown`` event, which ends their HTTP responses); returns at once."""
        with self._cond:
            self._running = False
            self._is_closing = self._thread is not None
            self._cond.notify_all()

    def stop(self) -> None:
        self.begin_shutdown()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def run_until_idle(self) -> None:
        while self.has_work():
            self.step()

    def has_work(self) -> bool:
        with self._cond:
            return bool(self._pending or self._active)

    @property
    def n_active(self) -> int:
        return len(self._active)

    @property
    def n_waiting(self) -> int:
        return len(self._pending)

    def add_tenant(self, name: str, delta: Any) -> None:
        with self._step_lock:
            self.mt.add_tenant(name, delta)

    def remove_tenant(self, name: str) -> None:
        """Fail the tenant's queued and running requests, then drop its delta from every layer."""
        with self._step_lock:
            with self._cond:
                for handle in [h for h in self._pending if h.tenant == name]:
                    self._pending.remove(handle)
                    handle._emit(Event("error", error=f"tenant {name!r} was removed", error_kind="removed"))
            for seq in self._active:
                if seq.handle.tenant == name:
                    seq.finish_reason = "removed"
            self._retire()
            self.mt.remove_tenant(name)

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not (self._pending or self._active):
                    self._cond.wait()
                if not self._running:
                    break
            self.step()
        with self._cond:
            pending, self._pending = self._pending, []
        for handle in [*pending, *(seq.handle for seq in self._active)]:
            handle._emit(Event("error", error="the server is shutting down", error_kind="shutdown"))
        self._active, self._cache, self._mask = [], None, None

    def step(self) -> None:
        """Admit waiting requests, decode one token for every running sequence, retire finished ones.

        One tenant's request must never fail another's, so failures are contained as narrowly as they
        can be attributed: a row whose logits cannot be sampled (NaN/inf, e.g. from a corrupt delta) fails
        that sequence alone; a prefill forward that raises is retried one request at a time, so only the
        request that breaks it fails. A decode forward that raises cannot be traced to a row: it fails the
        running batch, and the server goes on. Whatever happens, every admitted request gets exactly one
        terminal event (``done`` or ``error``).
        """
        with self._step_lock, torch.inference_mode():
            try:
                self._admit()
                if self._active:
                    self._decode()
                self._retire()
            except Exception as exc:  # a failed forward must not kill the server: fail the batch, go on
                log.exception("engine step failed")
                for seq in self._active:
                    seq.handle._emit(Event("error", error=f"generation failed: {_one_line(exc)}", error_kind="failed"))
                self._active, self._cache, self._mask = [], None, None

    def _admit(self) -> None:
        with self._cond:
            room = min(self.config.max_prefills_per_step, self.config.max_batch_size - len(self._active))
            admitted, self._pending = self._pending[:max(room, 0)], self._pending[max(room, 0):]
        ready = []
        for handle in admitted:
            if handle.is_cancelled:
                handle._emit(Event("done", finish_reason="cancelled", n_prompt_tokens=len(handle.prompt_ids)))
            elif handle.tenant not in self.mt:
                handle._emit(Event("error", error=f"tenant {handle.tenant!r} was removed", error_kind="removed"))
            else:
                ready.append(handle)
        if ready:
            self._prefill_isolated(ready)

    def _prefill_isolated(self, handles: list[RequestHandle]) -> None:
        """Prefill together; if that raises, retry one request at a time so that only the culprit fails."""
        try:
            self._prefill(handles)
        except Exception as exc:
            if len(handles) == 1:
                log.exception("prefill failed", extra={"request_id": handles[0].id, "tenant": handles[0].tenant})
                handles[0]._emit(Event("error", error=f"generation failed: {_one_line(exc)}", error_kind="failed"))
                return
            log.warning("batched prefill of %d requests failed (%s); retrying them one at a time", len(handles),
                        _one_line(exc))
            for handle in handles:
                self._prefill_isolated([handle])

    def _prefill(self, handles: list[RequestHandle]) -> None:
        """One forward over the new prompts (left-padded, each row with its own tenant), then join the batch."""
        from transformers import DynamicCache

        handles = sorted(handles, key=lambda h: h.tenant)  # a tenant's rows contiguous: slices, not gathers
        ids, mask = (t.to(self.device) for t in left_pad([h.prompt_ids for h in handles], pad_id=0))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.mt(tenants=[h.tenant for h in handles], input_ids=ids, attention_mask=mask, position_ids=positions,
                      **cache_kwargs(getattr(self.mt, "model", self.mt), DynamicCache()), use_cache=True, logits_to_keep=1)
        generators: list[torch.Generator | None] = []
        for handle in handles:
            generator = None
            if handle.params.temperature > 0:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(handle.params.seed if handle.params.seed is not None else torch.seed())
            generators.append(generator)
        tokens = _sample(out.logits[:, -1, :], [h.params for h in handles], generators)
        joining = [_Sequence(handle, token if token is not None else 0, len(handle.prompt_ids), generator,
                             stop_ids=frozenset() if handle.params.ignore_eos else self.stop_ids)
                   for handle, token, generator in zip(handles, tokens, generators)]
        self._join(joining, _cache_tensors(output_cache(out)), mask)
        # Only once the rows have joined are tokens streamed: a failure above leaves nothing half-sent.
        for seq, token in zip(joining, tokens):
            self._accept(seq, token)

    def _join(self, joining: list[_Sequence], layers: list[tuple[Tensor, Tensor]], new_mask: Tensor) -> None:
        """Add new sequences (their cache ``[n, heads, P, dim]`` and mask ``[n, P]``) to the running batch.

        The shorter side is left-padded, and the rows are put in tenant order (stable), so every
        tenant's rows stay one contiguous block in the decode batch.
        """
        from transformers import DynamicCache

        if self._cache is None or self._mask is None:
            self._active, self._cache, self._mask = joining, DynamicCache(ddp_cache_data=layers), new_mask
            return
        current = _cache_tensors(self._cache)
        length = new_mask.shape[1]
        width = max(self._mask.shape[1], length)
        pad_old, pad_new = width - self._mask.shape[1], width - length
        everyone = self._active + joining
        order = sorted(range(len(everyone)), key=lambda row: everyone[row].handle.tenant)
        index = torch.tensor(order, dtype=torch.long, device=self.device)

        def merge(old: Tensor, new: Tensor) -> Tensor:
            return torch.cat([_left_pad(old, pad_old), _left_pad(new, pad_new)]).index_select(0, index)

        self._cache = DynamicCache(ddp_cache_data=[(merge(k, nk), merge(v, nv))
                                                   for (k, v), (nk, nv) in zip(current, layers)])
        self._mask = torch.cat([F.pad(self._mask, (pad_old, 0)), F.pad(new_mask, (pad_new, 0))]).index_select(0, index)
        self._active = [everyone[row] for row in order]

    def _decode(self) -> None:
        assert self._mask is not None
        live = [s for s in self._active if s.finish_reason is None]
        if len(live) != len(self._active):
            self._retire()
            if not self._active:
                return
        batch = self._active
        input_ids = torch.tensor([[s.next_token] for s in batch], dtype=torch.long, device=self.device)
        positions = torch.tensor([[s.position] for s in batch], dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        out = self.mt(tenants=[s.handle.tenant for s in batch], input_ids=input_ids, attention_mask=self._mask,
                      position_ids=positions, **cache_kwargs(getattr(self.mt, "model", self.mt), self._cache), use_cache=True)
        self._cache = output_cache(out)
        tokens = _sample(out.logits[:, -1, :], [s.handle.params for s in batch], [s.generator for s in batch])
        self.n_steps += 1
        self.n_decoded_tokens += len(batch)
        for seq, token in zip(batch, tokens):
            seq.position += 1
            seq.next_token = token if token is not None else 0
            self._accept(seq, token)

    def _accept(self, seq: _Sequence, token: int | None) -> None:
        """Record a sampled token: stop on EOS / stop string / budget, else stream the new text.

        ``None`` means the row's logits could not be sampled: the sequence fails, alone.
        """
        handle = seq.handle
        if token is None:
            seq.finish_reason = "failed"
            seq.error = ("generation failed: the model produced non-finite logits for this request "
                         "(the tenant's delta or the base weights may be corrupt)")
            log.error("non-finite logits", extra={"request_id": handle.id, "tenant": handle.tenant})
            return
        if handle.first_token_at is None:
            handle.first_token_at = time.perf_counter()
        if handle.is_cancelled:
            seq.finish_reason = "cancelled"
            return
        if token in seq.stop_ids:
            seq.finish_reason = "stop"
            return
        handle.token_ids.append(token)
        seq.text = self.tokenizer.decode(handle.token_ids, skip_special_tokens=True)
        stops = handle.params.stop
        if stops:
            hits = [i for i in (seq.text.find(s) for s in stops) if i >= 0]
            if hits:
                seq.text = seq.text[:min(hits)]
                seq.finish_reason = "stop"
                return
        if len(handle.token_ids) >= handle.params.max_new_tokens:
            seq.finish_reason = "length"
            return
        hold = max((len(s) for s in stops), default=1) - 1  # a stop string may still be completing
        ready = len(seq.text) - hold
        if seq.text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            ready = min(ready, len(seq.text.rstrip("\ufffd")))
        if ready > seq.emitted:
            handle._emit(Event("text", text=seq.text[seq.emitted:ready]))
            seq.emitted = ready

    def _retire(self) -> None:
        keep = []
        for row, seq in enumerate(self._active):
            if seq.finish_reason is None:
                keep.append(row)
                continue
            handle = seq.handle
            if seq.finish_reason == "removed":
                handle._emit(Event("error", error=f"tenant {handle.tenant!r} was removed", error_kind="removed"))
                continue
            if seq.finish_reason == "failed":
                handle._emit(Event("error", error=seq.error, error_kind="bad_output"))
                continue
            rest = seq.text[seq.emitted:].rstrip("\ufffd")
            if rest and seq.finish_reason != "cancelled":
                handle._emit(Event("text", text=rest))
            handle._emit(Event("done", finish_reason=seq.finish_reason, n_prompt_tokens=len(handle.prompt_ids),
                               n_completion_tokens=len(handle.token_ids)))
        if len(keep) == len(self._active):
            return
        self._active = [self._active[i] for i in keep]
        if not keep or self._mask is None:
            self._active, self._cache, self._mask = [], None, None
            return
        from transformers import DynamicCache

        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = self._mask.index_select(0, index)
        first = int((mask.sum(0) > 0).nonzero()[0])  # leading columns that are padding in every row
        self._mask = mask[:, first:]
        self._cache = DynamicCache(ddp_cache_data=[(k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:])
                                                   for k, v in _cache_tensors(self._cache)])


def _collect(handle: RequestHandle) -> Completion:
    parts, reason = [], ""
    for event in handle.events():
        if event.kind == "text":
            parts.append(event.text)
        elif event.kind == "error":
            raise DeltaguardError(event.error)
        else:
            reason = event.finish_reason or ""
    return Completion("".join(parts), reason, list(handle.token_ids), len(handle.prompt_ids))


def _left_pad(tensor: Tensor, n: int) -> Tensor:
    """Pad a cache tensor ``[B, heads, L, dim]`` with ``n`` zero positions on the left."""
    return F.pad(tensor, (0, 0, n, 0)) if n else tensor


def _cache_tensors(cache: Any) -> list[tuple[Tensor, Tensor]]:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer) is not DynamicLayer for layer in layers):
        raise ConfigError("the served model must use a plain dynamic KV cache (full-attention decoder, e.g. Llama)")
    return [(layer.keys, layer.values) for layer in layers]


def _sample(logits: Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int | None]:
    """One token per row (greedy for temperature 0, else nucleus sampling with the row's generator), after
    adding the row's ``logit_bias``; ``None`` for a row whose logits cannot be sampled, which then fails alone."""
    logits = logits.float()
    is_ok = row_is_sampleable(logits).tolist()
    biased = [row for row, p in enumerate(params) if p.logit_bias and is_ok[row]]
    if biased:
        logits = logits.clone()   # never edit the model's output in place
        for row in biased:
            ids, values = zip(*params[row].logit_bias)
            logits[row, torch.tensor(ids, device=logits.device)] += torch.tensor(values, device=logits.device)
    return [pick_token(logits[row], temperature=p.temperature, top_p=p.top_p, generator=generator) if is_ok[row] else None
            for row, (p, generator) in enumerate(zip(params, generators))]


def _vocab_size(model: Any) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(getattr(head, "base", head), "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    return int(model.config.vocab_size)


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
