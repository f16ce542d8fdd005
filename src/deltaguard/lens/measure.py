"""Measurements on decoded logits: top-k, token-set probability and rank, refusal margin, CIs.

Small pure functions over tensors and arrays so each can be checked on hand-made inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Measures:
    """Per decoded row: top-k tokens and, per token set, log p(set) and the set's rank."""

    top_ids: Tensor  # [rows, k]
    top_log_probs: Tensor  # [rows, k]
    set_log_probs: dict[str, Tensor]  # name → [rows]
    set_ranks: dict[str, Tensor]  # name → [rows]


def set_log_prob(log_probs: Tensor, token_ids: Tensor) -> Tensor:
    """log p(set) = log Σ_t p(t) over the set's tokens. log_probs: [rows, vocab] → [rows]."""
    return torch.logsumexp(log_probs[:, token_ids], dim=-1)


def set_rank(logits: Tensor, token_ids: Tensor) -> Tensor:
    """1 + number of vocabulary tokens scoring strictly above the set's best token. [rows, vocab] → [rows]."""
    best = logits[:, token_ids].max(dim=-1).values
    return torch.count_nonzero(logits > best[:, None], dim=-1) + 1


def measure_logits(logits: Tensor, token_sets: dict[str, Tensor], top_k: int) -> Measures:
    """All per-row measurements of one block of decoded logits [rows, vocab] (fp32)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    top = torch.topk(log_probs, k=min(top_k, log_probs.shape[-1]), dim=-1)
    set_lp = {name: set_log_prob(log_probs, ids) for name, ids in token_sets.items()}
    ranks = {name: set_rank(logits, ids) for name, ids in token_sets.items()}
    return Measures(top.indices, top.values, set_lp, ranks)


def refusal_margin(log_p_refusal: Tensor | np.ndarray | float, log_p_compliance: Tensor | np.ndarray | float):
    """log p(refusal set) − log p(compliance set): positive when refusal is the likelier start."""
    return log_p_refusal - log_p_compliance


def first_positive(margins: Sequence[float]) -> int | None:
    """Index of the first layer (in depth order) where the margin is > 0, or None."""
    for index, value in enumerate(margins):
        if value > 0:
            return index
    return None


def settled_positive(margins: Sequence[float]) -> int | None:
    """Index from which the margin stays > 0 through the last layer, or None if the last is ≤ 0."""
    index = None
    for position in range(len(margins) - 1, -1, -1):
        if margins[position] > 0:
            index = position
        else:
            break
    return index


def bootstrap_indices(n_items: int, *, n_boot: int, seed: int) -> np.ndarray:
    """Resampling indices [n_boot, n_items]; the same seed gives the same resamples (paired CIs)."""
    return np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))


def bootstrap_mean_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over items and a percentile bootstrap CI, per column.

    values: [items, columns] → (mean, low, high), each [columns]. Items are resampled as whole rows,
    so columns (layers) of one item stay together.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.shape[0] == 0:
        raise ValueError("bootstrap over zero items")
    mean = values.mean(axis=0)
    if values.shape[0] == 1 or n_boot == 0:
        return mean, mean.copy(), mean.copy()
    index = bootstrap_indices(values.shape[0], n_boot=n_boot, seed=seed)
    boot = values[index].mean(axis=1)  # [n_boot, columns]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail], axis=0)
    return mean, low, high
