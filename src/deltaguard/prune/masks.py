"""Pruning masks from importance scores, and SparseGPT's pruning with error compensation.

Patterns: ``unstructured`` at a sparsity (the lowest-scoring share of each output row, as Wanda compares
weights within a row; magnitude pruning does the same so the two differ only in the score), and ``N:M``
(exactly ``N`` of every ``M`` consecutive input weights of a row are zero — the 2:4 pattern sparse tensor
cores run).

Scores: magnitude ``|W|``; Wanda ``|W| · ‖X_j‖₂`` (the weight times the norm of its input feature over
the calibration tokens). SparseGPT (Frantar & Alistarh, 2023) instead prunes column by column and moves the
remaining weights to compensate, like GPTQ with "round to zero" for the pruned entries; its mask is chosen
per block of columns by ``w² / [H⁻¹]ⱼⱼ²``.

Why hand-written: the reference implementations are research scripts bound to their model loaders;
llm-compressor's SparseGPT needs its own model wrapping and a GPU for real sizes. The routines are short,
and the tests check the pattern invariants and that SparseGPT's layer error is below magnitude pruning's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from deltaguard.errors import ConfigError


@dataclass(frozen=True)
class Pattern:
    """``n``:``m`` when ``m`` > 0, else unstructured at ``sparsity``."""

    sparsity: float = 0.5
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if self.m:
            if not 0 < self.n < self.m:
                raise ConfigError(f"N:M pattern {self.n}:{self.m} needs 0 < N < M")
        elif not 0 < self.sparsity < 1:
            raise ConfigError(f"sparsity {self.sparsity} must be in (0, 1)")

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}" if self.m else f"{round(self.sparsity * 100)}"

    @property
    def density_removed(self) -> float:
        return self.n / self.m if self.m else self.sparsity

    def check_fits(self, in_features: int) -> None:
        if self.m and in_features % self.m:
            raise ConfigError(f"{self.label} pruning needs the input dim ({in_features}) to be a multiple of {self.m}")


def mask_from_scores(scores: Tensor, pattern: Pattern) -> Tensor:
    """Boolean mask ``[out, in]``, True where the weight is pruned (the lowest scores)."""
    out_features, in_features = scores.shape
    pattern.check_fits(in_features)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if pattern.m:
        groups = scores.reshape(out_features, in_features // pattern.m, pattern.m)
        lowest = torch.topk(groups, pattern.n, dim=-1, largest=False).indices
        mask.view(out_features, -1, pattern.m).scatter_(-1, lowest, True)
        return mask
    k = int(in_features * pattern.sparsity)
    if k:
        lowest = torch.topk(scores, k, dim=1, largest=False).indices
        mask.scatter_(1, lowest, True)
    return mask


def sparsegpt_prune(weight: Tensor, hessian: Tensor, pattern: Pattern, *, damp: float = 0.01,
                    block_size: int = 128) -> Tensor:
    """The pruned weight (zeros where pruned), the rest updated to compensate on the calibration inputs."""
    pattern.check_fits(weight.shape[1])
    w = weight.detach().double().clone()
    n_cols = w.shape[1]
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(n_cols, dtype=h.dtype)
    try:
        upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:
        raise ConfigError("sparsegpt: the calibration Hessian is not positive definite even after damping") from None
    step = pattern.m if pattern.m else block_size
    block_size = max(step, block_size - block_size % step)
    for start in range(0, n_cols, block_size):
        stop = min(start + block_size, n_cols)
        block = w[:, start:stop].clone()
        errors = torch.zeros_like(block)
        inverse = upper[start:stop, start:stop]
        diag = torch.diag(inverse)
        if pattern.m:
            mask = torch.zeros_like(block, dtype=torch.bool)
        else:   # the block's lowest w²/d² across all rows, so rows may differ (adaptive, as in the paper)
            scores = block.pow(2) / diag.pow(2)[None, :]
            k = int(scores.numel() * pattern.sparsity)
            threshold = torch.sort(scores.flatten())[0][k - 1] if k else -torch.inf
            mask = scores <= threshold
        for i in range(stop - start):
            if pattern.m and i % pattern.m == 0:
                scores = block[:, i:i + pattern.m].pow(2) / diag[i:i + pattern.m].pow(2)[None, :]
                mask.scatter_(1, i + torch.topk(scores, pattern.n, dim=1, largest=False).indices, True)
            column = block[:, i]
            pruned = torch.where(mask[:, i], torch.zeros_like(column), column)
            error = (column - pruned) / inverse[i, i]
            block[:, i:] -= error[:, None] * inverse[i, i:][None, :]
            block[:, i] = pruned
            errors[:, i] = error
        w[:, start:stop] = block
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    return w.to(weight.dtype)


__all__ = ["Pattern", "mask_from_scores", "sparsegpt_prune"]
