"""The one next-token sampler: greedy, or temperature + nucleus (top-p) sampling, safe for any setting.

Offline generation and the server both pick tokens here. It is written so that no request setting can
produce an invalid distribution — a request reaching the server could otherwise break the decode step
that every tenant's sequences share:

* logits are shifted by their row maximum *before* dividing by the temperature, so the scaled values are
  ``<= 0`` and the most likely token always has weight ``exp(0) = 1`` (dividing raw float32 logits by a
  temperature of 1e-30 overflows to ``inf``, and softmax then gives NaN);
* temperatures below ``GREEDY_TEMPERATURE`` are greedy (the distribution is a point mass anyway, and
  greedy breaks ties deterministically);
* top-p always keeps the most likely token, however small ``top_p`` is;
* a row whose logits hold a NaN or ``+inf``, or no finite value at all, cannot be sampled: it is reported
  per row (``row_is_sampleable``) so the caller fails that sequence alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Below this temperature sampling is greedy: exp(-Δ/T) for a logit gap Δ ≥ 1e-3 is < e^-100 already.
GREEDY_TEMPERATURE = 1e-5


def row_is_sampleable(logits: Tensor) -> Tensor:
    """``[batch]`` bools: the row has no NaN, no ``+inf`` and at least one finite logit."""
    return ~torch.isnan(logits).any(-1) & ~torch.isposinf(logits).any(-1) & torch.isfinite(logits).any(-1)


def nucleus_probs(logits: Tensor, temperature: Tensor | float, top_p: Tensor | float) -> Tensor:
    """``[batch, vocab]`` probabilities after temperature and top-p; each row sums to 1.

    ``temperature`` and ``top_p`` are scalars or ``[batch]`` tensors (per-row settings). Rows must be
    sampleable (``row_is_sampleable``); temperatures must be ``>= GREEDY_TEMPERATURE``.
    """
    logits = logits.float()
    temperature = torch.as_tensor(temperature, dtype=torch.float32, device=logits.device).reshape(-1, 1)
    top_p = torch.as_tensor(top_p, dtype=torch.float32, device=logits.device).reshape(-1, 1)
    shifted = logits - logits.max(dim=-1, keepdim=True).values   # <= 0; -inf stays -inf (masked tokens)
    probs = torch.softmax(shifted / temperature, dim=-1)          # the top token's term is exp(0) = 1
    if bool((top_p < 1.0).any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs       # mass of strictly more likely tokens
        drop = before >= top_p
        drop[:, 0] = False                                        # the most likely token is always kept
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def pick_token(logits: Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token from one sampleable row ``[vocab]``: greedy when ``temperature`` is tiny or no generator."""
    if generator is None or temperature < GREEDY_TEMPERATURE:
        return int(logits.argmax())
    probs = nucleus_probs(logits[None], temperature, top_p)[0]
    return int(torch.multinomial(probs, 1, generator=generator))


def pick_tokens(logits: Tensor, *, temperature: float, top_p: float,
                generators: list[torch.Generator] | None) -> Tensor:
    """``[batch]`` tokens with one setting for every row (offline generation); ``generators=None`` is greedy.

    Every row must be sampleable; callers check ``row_is_sampleable`` first.
    """
    if generators is None or temperature < GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)
    probs = nucleus_probs(logits, temperature, top_p)
    picks = [torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(generators)]
    return torch.cat(picks)


__all__ = ["GREEDY_TEMPERATURE", "nucleus_probs", "pick_token", "pick_tokens", "row_is_sampleable"]
