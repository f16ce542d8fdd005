"""Calibration text for methods that calibrate (BitDelta scale distillation, and later quantizers).

One helper for every caller (the ``compress`` verb, the audit, the study), so calibration is always drawn
the same way: from a ``.txt`` file (one text per line, used as written) or from the *calibration split*
of a prompt set, each prompt formatted as a user turn with the model's chat template — the split that is
disjoint from every training and evaluation split, by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltaguard.errors import ConfigError


def calibration_texts(spec: str, *, tokenizer: Any, limit: int, seed: int = 0) -> list[str]:
    """Up to ``limit`` calibration texts from ``spec`` (a prompt set name or a ``.txt`` file)."""
    from deltaguard.data import load_prompts
    from deltaguard.models import chat_prompt

    if limit < 1:
        raise ConfigError(f"calibration limit={limit} must be >= 1")
    path = Path(spec).expanduser()
    if path.is_dir():
        raise ConfigError(f"calibration source {spec} is a directory; give a prompt set name or a .txt file")
    if path.suffix == ".txt":
        if not path.exists():
            raise ConfigError(f"calibration file {path} does not exist")
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ConfigError(f"calibration file {path} is not UTF-8 text") from None
        if not lines:
            raise ConfigError(f"calibration file {path} holds no text")
        return lines[:limit]
    prompts = load_prompts(spec, split="calib", limit=limit, seed=seed)
    return [chat_prompt(tokenizer, p.text) for p in prompts.prompts]


__all__ = ["calibration_texts"]
