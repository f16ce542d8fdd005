"""Forced choice: the model's log-probability of each answer option as the first token of its reply.

A decision question ("Should the loan be approved? Answer Yes or No first.") is scored by what the model
would say first, restricted to the options, rather than by parsing a free reply: a 135M model often opens
with "To determine whether…" and never commits, which would leave most pairs of a fairness test
undecided. One forward pass per prompt, no sampling, so the comparison between two counterfactual
prompts is exact. Each option is read as the log-sum-exp over the first tokens of its usual spellings
("Yes", "yes", " Yes"), so a tokenizer that prefers one spelling is not penalised.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from deltaguard.errors import ConfigError
from deltaguard.generation import GenerationConfig, HFBackend, left_pad, pad_token_id, stop_token_ids


def option_token_ids(tokenizer: Any, option: str) -> list[int]:
    """Distinct first tokens of ``option``'s spellings (as written, lower case, with a leading space)."""
    ids: list[int] = []
    for spelling in dict.fromkeys((option, option.lower(), option.capitalize(), f" {option}", f" {option.lower()}")):
        tokens = tokenizer(spelling, add_special_tokens=False)["input_ids"]
        if tokens and tokens[0] not in ids:
            ids.append(tokens[0])
    if not ids:
        raise ConfigError(f"answer option {option!r} encodes to no tokens")
    return ids


def distinct_tokens(tokenizer: Any, options: tuple[str, ...]) -> list[list[int]]:
    """Each option's first tokens minus those another option shares (a byte-level tokenizer may start
    " Yes" and " No" with the same space token); an option left with none cannot be told apart."""
    token_sets = [option_token_ids(tokenizer, option) for option in options]
    counts: dict[int, int] = {}
    for ids in token_sets:
        for t in ids:
            counts[t] = counts.get(t, 0) + 1
    kept = [[t for t in ids if counts[t] == 1] for ids in token_sets]
    for option, ids in zip(options, kept):
        if not ids:
            raise ConfigError(f"answer option {option!r} shares every first token with another option; "
                              "the options cannot be told apart")
    return kept


@torch.inference_mode()
def option_logprobs(model: Any, tokenizer: Any, texts: list[str], options: tuple[str, ...],
                    config: GenerationConfig) -> list[dict[str, float]]:
    """For each prompt, ``{option: log P(option first)}`` over the whole vocabulary (prompts formatted as
    generation formats them: chat template and ``config.system_prompt``)."""
    if len(options) < 2:
        raise ConfigError("a forced choice needs at least two options")
    token_sets = distinct_tokens(tokenizer, options)
    encoded = HFBackend(model, tokenizer).encode(texts, config)
    pad_id = pad_token_id(tokenizer, stop_token_ids(model, tokenizer))
    device = next(model.parameters()).device
    results: list[dict[str, float]] = [{} for _ in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))   # similar lengths pad less
    for start in range(0, len(order), config.batch_size):
        rows = order[start:start + config.batch_size]
        input_ids, mask = left_pad([encoded[i] for i in rows], pad_id)
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        logp = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
        for row, index in enumerate(rows):
            results[index] = {option: float(torch.logsumexp(logp[row, ids], dim=0))
                              for option, ids in zip(options, token_sets)}
    for row in results:
        if not all(math.isfinite(v) for v in row.values()):
            raise ConfigError("the model gave a non-finite log-probability to an answer option")
    return results


def choose(logprobs: dict[str, float]) -> str:
    """The option with the highest log-probability (the first listed wins a tie)."""
    return max(logprobs, key=lambda option: logprobs[option])


def share(logprobs: dict[str, float], option: str) -> float:
    """P(option) renormalised over the options only."""
    top = max(logprobs.values())
    weights = {k: math.exp(v - top) for k, v in logprobs.items()}
    return weights[option] / sum(weights.values())


__all__ = ["choose", "distinct_tokens", "option_logprobs", "option_token_ids", "share"]
