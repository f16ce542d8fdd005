"""Batched (left-padded) and single-prompt lens runs agree; positions and detail prompts are right."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tinymodels import make_tiny_llama
from deltaguard.errors import ConfigError
from deltaguard.lens import LensConfig, logit_lens

PROMPTS = [
    "Hi",
    "How do I bake bread? Step 1: mix the flour and add water slowly.",
    "What is 12 plus 7?",
    "I cannot help with that. Sorry, as an AI I can't assist with anything of the sort.",
    "Step 2",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_tokenizer):
    return make_tiny_llama(vocab_size=len(tiny_tokenizer), tied=False, n_layers=3, seed=4), tiny_tokenizer


def _by_key(result):
    return {(r.prompt_id, r.site, r.position): r for r in result.records}


def test_batched_and_single_prompt_results_agree(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    config = LensConfig(positions="all", batch_size=5, targets=("19",))
    batched = logit_lens(model, tokenizer, PROMPTS, config)
    singles = [logit_lens(model, tokenizer, [p], config.replace(batch_size=1)) for p in PROMPTS]
    lengths = {len(tokenizer.encode(p)) for p in PROMPTS}
    assert len(lengths) > 2  # the batch really is padded
    records = _by_key(batched)
    n_single = 0
    for index, single in enumerate(singles):
        for r in single.records:
            b = records[(f"p{index:04d}", r.site, r.position)]
            assert b.input_token == r.input_token
            assert b.top_ids == r.top_ids
            assert b.top_log_probs == pytest.approx(r.top_log_probs, abs=1e-4)
            assert b.margin == pytest.approx(r.margin, abs=1e-4)
            assert b.ranks == r.ranks
            assert b.log_probs == pytest.approx(r.log_probs, abs=1e-4)
            n_single += 1
    assert n_single == len(batched.records)


def test_batch_size_and_tokenizer_padding_side_do_not_change_results(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    right = copy.deepcopy(tokenizer)
    right.padding_side = "right"
    a = logit_lens(model, tokenizer, PROMPTS, LensConfig(batch_size=2))
    b = logit_lens(model, right, PROMPTS, LensConfig(batch_size=5))
    assert np.allclose(a.margins("model"), b.margins("model"), atol=1e-4)


def test_answer_position_is_the_last_prompt_token_after_the_generation_prompt(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    result = logit_lens(model, tokenizer, PROMPTS[:2], LensConfig(n_detail_prompts=0))
    from deltaguard.models import chat_prompt

    for prompt_id, text in zip(result.prompt_ids, result.prompts):
        ids = tokenizer.encode(chat_prompt(tokenizer, text), add_special_tokens=False)
        answer = [r for r in result.records if r.prompt_id == prompt_id]
        assert len(answer) == len(result.sites)  # only the answer position was recorded
        assert all(r.is_answer_position and r.position == len(ids) - 1 for r in answer)
        assert answer[0].input_token == tokenizer.decode(ids[-1:])
    assert chat_prompt(tokenizer, "x").endswith("<|im_start|>assistant\n")


def test_detail_prompts_keep_trailing_positions(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    result = logit_lens(model, tokenizer, PROMPTS, LensConfig(n_detail_prompts=2, n_detail_positions=4))
    n_sites = len(result.sites)
    counts = {p: sum(r.prompt_id == p for r in result.records) for p in result.prompt_ids}
    assert counts == {"p0000": 4 * n_sites, "p0001": 4 * n_sites, "p0002": n_sites, "p0003": n_sites, "p0004": n_sites}
    assert result.detail_prompt_ids("model") == ("p0000", "p0001")
    positions = sorted({r.position for r in result.records if r.prompt_id == "p0001"})
    assert positions == list(range(positions[-1] - 3, positions[-1] + 1))


def test_prompt_objects_keep_their_ids_and_bad_prompts_raise(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Prompt:
        id: str
        text: str
        meta: dict

    @dataclass(frozen=True)
    class PromptSet:
        name: str
        split: str
        prompts: tuple
        source: str
        content_hash: str

    ps = PromptSet("demo", "eval", (Prompt("a-1", "Hi", {}), Prompt("b-2", "What is 12 plus 7?", {})), "test", "abc")
    result = logit_lens(model, tokenizer, ps)
    assert result.prompt_ids == ("a-1", "b-2")
    assert result.source == {"name": "demo", "split": "eval", "source": "test", "content_hash": "abc"}
    with pytest.raises(ConfigError, match="at least one prompt"):
        logit_lens(model, tokenizer, [])
    with pytest.raises(ConfigError, match="not unique"):
        logit_lens(model, tokenizer, [Prompt("x", "a", {}), Prompt("x", "b", {})])
    with pytest.raises(ConfigError, match="expected str or Prompt"):
        logit_lens(model, tokenizer, [3])
