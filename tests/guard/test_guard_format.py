"""The guard's prompt, answer and verdict score."""

from __future__ import annotations

import pytest
import torch

from deltaguard.errors import ConfigError
from deltaguard.guard.format import (
    GUARD_CATEGORIES, guard_input, guard_target, unsafe_probability, verdict_tokens,
)
from deltaguard.judges.llamaguard import parse_guard_output


def test_targets_parse_with_the_llamaguard_parser():
    assert parse_guard_output(guard_target(False)) == (False, ())
    assert parse_guard_output(guard_target(True, ("S1", "S10"))) == (True, ("S1", "S10"))
    assert parse_guard_output(guard_target(True)) == (True, ())


def test_input_for_responses_and_for_prompts(tiny_tokenizer):
    with_reply = guard_input(tiny_tokenizer, "How do I X?", "Like this.")
    prompt_only = guard_input(tiny_tokenizer, "How do I X?", None)
    assert "Agent: Like this." in with_reply and "'Agent' message" in with_reply
    assert "Agent:" not in prompt_only and "'User' message" in prompt_only and "last User message" in prompt_only
    assert with_reply.endswith("<|im_start|>assistant\n")
    assert all(f"{code}:" in with_reply for code in GUARD_CATEGORIES) and "S14" not in with_reply


def test_verdict_tokens_cover_every_answer(tiny_tokenizer):
    tokens = verdict_tokens(tiny_tokenizer)
    assert tokens.safe != tokens.unsafe
    for answer in (guard_target(False), guard_target(True, ("S1", "S13")), guard_target(True, GUARD_CATEGORIES)):
        assert set(tiny_tokenizer.encode(answer, add_special_tokens=False)) <= set(tokens.emitted)
    assert tiny_tokenizer.eos_token_id in tokens.emitted


def test_unsafe_probability_is_the_same_for_full_and_pruned_logits(tiny_tokenizer):
    tokens = verdict_tokens(tiny_tokenizer)
    logits = torch.randn(3, len(tiny_tokenizer))
    full = unsafe_probability(logits, tokens)
    ids = torch.tensor(tokens.emitted)
    pruned = unsafe_probability(logits[:, ids], tokens, ids)
    assert torch.equal(full, pruned)
    expected = torch.sigmoid(logits[:, tokens.unsafe] - logits[:, tokens.safe])
    assert torch.allclose(full, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="does not keep both verdict tokens"):
        unsafe_probability(logits[:, :2], tokens, torch.tensor([0, 1]))


def test_a_tokenizer_that_merges_the_verdicts_is_refused():
    class Same:
        def encode(self, text, add_special_tokens=False):
            return [5, 6]

    with pytest.raises(ConfigError, match="same token"):
        verdict_tokens(Same())
