"""Learning-rate schedules shared by every trainer (SFT, scale distillation, and later QAT and the guard)."""

from __future__ import annotations

import math
from typing import Literal

import torch

Schedule = Literal["linear", "cosine", "constant"]
SCHEDULES: tuple[str, ...] = ("linear", "cosine", "constant")


def lr_factor(step: int, n_steps: int, n_warmup: int = 0, schedule: str = "linear") -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warm-up from 0 over ``n_warmup`` steps, then ``linear`` decay to 0 at ``n_steps``,
    ``cosine`` decay to 0, or ``constant``.
    """
    if n_warmup and step < n_warmup:
        return (step + 1) / n_warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - n_warmup) / max(1, n_steps - n_warmup))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduler(optimizer: torch.optim.Optimizer, n_steps: int, *, n_warmup: int = 0,
              schedule: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following ``lr_factor`` (call ``.step()`` after each optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, n_steps, n_warmup, schedule))


__all__ = ["SCHEDULES", "Schedule", "lr_factor", "scheduler"]
