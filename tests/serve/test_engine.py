"""Continuous batching: mixed-tenant batches, staggered joins and leaves, stops, cancellation, removal."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from deltaguard.delta import apply_delta
from deltaguard.errors import ConfigError
from deltaguard.serve import Engine, EngineConfig, MultiTenantModel, SamplingParams
from deltaguard.serve.requests import EngineBusyError


@pytest.fixture
def engine_factory(base_model, deltas, tokenizer):
    def make(**config) -> Engine:
        mt = MultiTenantModel(copy.deepcopy(base_model))
        for name, delta in deltas.items():
            mt.add_tenant(name, delta)
        return Engine(mt, tokenizer, EngineConfig(**config))
    return make


def reference_tokens(model, prompt: list[int], params: SamplingParams, stop_ids: frozenset[int]) -> list[int]:
    """One sequence alone on the tenant's merged model, no cache: the same sampling rule as the engine."""
    generator = None
    if params.temperature > 0:
        generator = torch.Generator().manual_seed(params.seed)
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(params.max_new_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            if generator is None:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / params.temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            if token in stop_ids:
                break
            out.append(token)
            ids.append(token)
    return out


@pytest.mark.parametrize("prefills", [1, 3])
def test_staggered_mixed_tenant_batch_equals_each_tenant_alone(engine_factory, base_model, deltas, prefills):
    """5 requests of 4 tenants, prompts of different lengths, at most 3 running and ``prefills``
    admitted (prefilled together, left-padded) per step: sequences join a running batch (left
    padding on either side) and leave it at different times."""
    engine = engine_factory(max_batch_size=3, max_prefills_per_step=prefills)
    g = torch.Generator().manual_seed(5)
    requests = [("alpha", 5, 6), ("beta", 2, 9), ("gamma", 11, 4), ("delta", 1, 7), ("alpha", 3, 8)]
    handles = []
    for i, (tenant, n_prompt, n_new) in enumerate(requests):
        prompt = torch.randint(4, 300, (n_prompt,), generator=g).tolist()
        params = SamplingParams(max_new_tokens=n_new, temperature=1.0, seed=100 + i, ignore_eos=True)
        handles.append((engine.submit(tenant, prompt, params), tenant, prompt, params))
    engine.run_until_idle()
    assert engine.n_steps < sum(n for _, _, n in requests)  # decode steps were shared
    for handle, tenant, prompt, params in handles:
        events = list(handle.events())
        assert events[-1].kind == "done" and events[-1].finish_reason == "length"
        assert events[-1].n_completion_tokens == params.max_new_tokens
        expected = reference_tokens(apply_delta(base_model, deltas[tenant]), prompt, params, frozenset())
        assert handle.token_ids == expected, tenant


def test_greedy_stops_at_eos_and_streams_text(engine_factory, tokenizer):
    engine = engine_factory()
    eos = tokenizer.eos_token_id
    engine.stop_ids = frozenset({eos})
    prompt = tokenizer("<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n<|im_start|>assistant\n",
                       add_special_tokens=False)["input_ids"]
    completion = engine.generate("beta", prompt, SamplingParams(max_new_tokens=12, temperature=0))
    assert completion.finish_reason in ("stop", "length")
    assert eos not in completion.token_ids
    assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)


def test_stop_string_truncates_and_finishes(engine_factory, tokenizer):
    engine = engine_factory()
    prompt = [5, 6, 7]
    params = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True)
    full = engine.generate("alpha", prompt, params)
    assert len(full.text) >= 3
    stop = full.text[2:4]
    cut = engine.generate("alpha", prompt, SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.find(stop)]


def test_cancelled_request_leaves_the_batch(engine_factory):
    engine = engine_factory()
    keep = engine.submit("alpha", [5, 6], SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True))
    gone = engine.submit("beta", [7, 8], SamplingParams(max_new_tokens=50, temperature=0, ignore_eos=True))
    engine.step()
    engine.step()
    gone.cancel()
    engine.run_until_idle()
    assert list(gone.events())[-1].finish_reason == "cancelled"
    assert len(gone.token_ids) < 50
    assert list(keep.events())[-1].n_completion_tokens == 6


def test_removing_a_tenant_fails_its_requests_only(engine_factory):
    engine = engine_factory()
    other = engine.submit("alpha", [5, 6], SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True))
    victim = engine.submit("gamma", [7, 8], SamplingParams(max_new_tokens=50, temperature=0, ignore_eos=True))
    queued = engine.submit("gamma", [9], SamplingParams(max_new_tokens=5, temperature=0))
    engine.step()
    engine.remove_tenant("gamma")
    engine.run_until_idle()
    assert list(victim.events())[-1].error_kind == "removed"
    assert list(queued.events())[-1].error_kind == "removed"
    assert list(other.events())[-1].finish_reason == "length"
    with pytest.raises(ConfigError, match="not loaded"):
        engine.submit("gamma", [5], SamplingParams(max_new_tokens=2))


def test_limits_at_submit(engine_factory):
    engine = engine_factory(max_queue=1)
    with pytest.raises(ConfigError, match="zero tokens"):
        engine.submit("alpha", [], SamplingParams(max_new_tokens=2))
    with pytest.raises(ConfigError, match="context"):
        engine.submit("alpha", [5] * 200, SamplingParams(max_new_tokens=100))
    engine.submit("alpha", [5], SamplingParams(max_new_tokens=2))
    with pytest.raises(EngineBusyError, match="busy"):
        engine.submit("alpha", [5], SamplingParams(max_new_tokens=2))


def test_background_thread_serves_concurrent_submitters(engine_factory):
    engine = engine_factory(max_batch_size=4)
    engine.start()
    results: dict[int, list[int]] = {}
    try:
        def client(i: int) -> None:
            tenant = ["alpha", "beta", "gamma", "delta"][i % 4]
            handle = engine.submit(tenant, [5 + i, 6], SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))
            list(handle.events())
            results[i] = handle.token_ids
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        engine.stop()
    assert sorted(results) == list(range(8)) and all(len(v) == 4 for v in results.values())
    alone = engine_factory()
    for i in (0, 5):
        tenant = ["alpha", "beta", "gamma", "delta"][i % 4]
        expected = alone.generate(tenant, [5 + i, 6], SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))
        assert results[i] == expected.token_ids


def test_running_batch_keeps_each_tenants_rows_together(engine_factory):
    """Rows are kept in tenant order across joins, so the layers see each tenant as one slice."""
    engine = engine_factory(max_batch_size=8, max_prefills_per_step=2)
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    for tenant in ("gamma", "alpha", "beta", "alpha", "gamma", "beta"):
        engine.submit(tenant, [5, 6, 7], params)
    for _ in range(3):   # three admissions of two requests each, joining a running batch
        engine.step()
        tenants = [seq.handle.tenant for seq in engine._active]
        assert tenants == sorted(tenants)
    assert len(engine._active) == 6
    engine.run_until_idle()
