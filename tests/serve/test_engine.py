"""Continuous batching: mixed-tenant batches, staggered joins and leaves, stops, cancellation, removal."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from deltaguard.delta import apply_delta
from deltaguard.errors import ConfigError
from deltaguard.sampling import pick_token
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
                # the shared sampler (tested on its own in tests/unit/test_sampling.py)
                token = pick_token(logits, temperature=params.temperature, top_p=params.top_p, generator=generator)
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


# -- fault isolation: one tenant's request can never fail another's ---------------------------------------

def _solo(engine_factory, tenant, prompt, params):
    return engine_factory().generate(tenant, prompt, params).token_ids


@pytest.mark.parametrize("temperature,top_p", [(1e-30, 1.0), (1e-30, 1e-30), (2.0, 1e-300), (1e-7, 0.5)])
def test_extreme_sampling_values_are_safe_and_harm_no_one(engine_factory, temperature, top_p):
    """Settings that overflowed float32 logits (temperature 1e-30) or masked every token used to crash
    the shared decode step; now they sample validly and the other tenants' outputs are unchanged."""
    engine = engine_factory()
    greedy = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    hostile = engine.submit("alpha", [5, 6], SamplingParams(max_new_tokens=6, temperature=temperature, top_p=top_p,
                                                            seed=1, ignore_eos=True))
    victims = {t: engine.submit(t, [7, 8, 9], greedy) for t in ("beta", "gamma")}
    engine.run_until_idle()
    assert hostile.is_finished and all(h.is_finished for h in victims.values())
    assert list(hostile.events())[-1].kind == "done"
    for tenant, handle in victims.items():
        assert list(handle.events())[-1].finish_reason == "length"
        assert handle.token_ids == _solo(engine_factory, tenant, [7, 8, 9], greedy)


def _poison_rows_of(engine, tenant: str, *, at_prefill: bool):
    """Make the model's logits NaN in ``tenant``'s rows (as a delta holding NaN would), in decode steps or at prefill."""
    forward = engine.mt.forward

    def poisoned(tenants, **kwargs):
        out = forward(tenants, **kwargs)
        is_prefill = kwargs["input_ids"].shape[1] > 1
        if is_prefill == at_prefill:
            rows = [i for i, t in enumerate(tenants) if t == tenant]
            out.logits[rows] = float("nan")
        return out

    engine.mt = type("Poisoned", (), {"__call__": staticmethod(poisoned), "__contains__": engine.mt.__contains__})()


@pytest.mark.parametrize("at_prefill", [True, False])
def test_non_finite_logits_fail_that_sequence_alone(engine_factory, at_prefill):
    engine = engine_factory()
    _poison_rows_of(engine, "gamma", at_prefill=at_prefill)
    params = SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)
    bad = engine.submit("gamma", [5, 6], params)
    good = {t: engine.submit(t, [5, 6], params) for t in ("alpha", "beta")}
    engine.run_until_idle()
    assert bad.is_finished and all(h.is_finished for h in good.values())  # nothing left hanging
    events = list(bad.events())
    assert events[-1].kind == "error" and events[-1].error_kind == "bad_output"
    assert "non-finite logits" in events[-1].error
    assert [e.kind for e in events].count("error") == 1
    for tenant, handle in good.items():
        assert list(handle.events())[-1].finish_reason == "length"
        assert handle.token_ids == _solo(engine_factory, tenant, [5, 6], params)


def test_a_prefill_that_raises_fails_only_the_request_that_breaks_it(engine_factory):
    """Batched prefill fails → each request is retried alone → only the culprit gets an error event."""
    engine = engine_factory(max_prefills_per_step=4)
    forward = engine.mt.forward

    def breaks_on_long_prompts(tenants, **kwargs):
        if kwargs["input_ids"].shape[1] > 10:
            raise RuntimeError("simulated kernel failure")
        return forward(tenants, **kwargs)

    engine.mt = type("Fragile", (), {"__call__": staticmethod(breaks_on_long_prompts),
                                     "__contains__": engine.mt.__contains__})()
    params = SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True)
    culprit = engine.submit("alpha", list(range(5, 20)), params)
    others = {t: engine.submit(t, [5, 6], params) for t in ("beta", "gamma", "delta")}
    engine.run_until_idle()
    assert culprit.is_finished and all(h.is_finished for h in others.values())  # nothing left hanging
    end = list(culprit.events())[-1]
    assert end.kind == "error" and "simulated kernel failure" in end.error
    for tenant, handle in others.items():
        assert list(handle.events())[-1].finish_reason == "length"
        assert handle.token_ids == _solo(engine_factory, tenant, [5, 6], params)


def test_a_failed_decode_step_still_ends_every_request(engine_factory):
    """A decode forward that raises cannot be traced to a row: the running batch fails, each with one
    terminal event, and the engine serves the next request normally."""
    engine = engine_factory()
    forward = engine.mt.forward
    calls = {"n": 0}

    def fails_once_in_decode(tenants, **kwargs):
        if kwargs["input_ids"].shape[1] == 1 and calls["n"] == 0:
            calls["n"] += 1
            raise RuntimeError("simulated device error")
        return forward(tenants, **kwargs)

    engine.mt = type("Flaky", (), {"__call__": staticmethod(fails_once_in_decode),
                                   "__contains__": engine.mt.__contains__})()
    params = SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True)
    handles = [engine.submit(t, [5, 6], params) for t in ("alpha", "beta")]
    engine.run_until_idle()
    for handle in handles:
        assert handle.is_finished
        events = list(handle.events())
        assert [e.kind for e in events if e.kind in ("done", "error")] == ["error"]
    after = engine.generate("alpha", [5, 6], params)
    assert after.token_ids == _solo(engine_factory, "alpha", [5, 6], params)


def test_shutdown_ends_waiting_and_running_requests_and_refuses_new_ones(engine_factory):
    from deltaguard.serve.requests import EngineClosedError

    engine = engine_factory(max_batch_size=1)
    engine.start()
    params = SamplingParams(max_new_tokens=200, temperature=0, ignore_eos=True)
    handles = [engine.submit(t, [5, 6], params) for t in ("alpha", "beta")]
    engine.stop()
    for handle in handles:  # 200 tokens cannot finish before stop(): both end with "shutdown"
        assert list(handle.events())[-1].error_kind == "shutdown"
    with pytest.raises(EngineClosedError):
        engine.submit("alpha", [5], params)
