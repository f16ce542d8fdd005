"""Calibration text for methods that calibrate (BitDelta scale distillation, and later quantizers).

One helper for every caller (the ``compress`` verb, the audit, the study), so calibration is always drawn
the same way: from a ``.txt`` file (one text per line, used as written) or from the *calibration split*
of a prompt set, each prompt formatted as a user turn with the model's chat template — the split that is
disjoint from every training and evaluation split, by construction.

Two formats (``CALIB_FORMATS``):

* ``prompt`` — each text is the user turn followed by the template's generation prompt: the model being
  calibrated never reads an assistant reply (today's behaviour, and the default);
* ``reply``  — each text is the user turn followed by a given reply inside a real assistant turn
  (``models.chat_prompt(..., assistant=reply)``). The audit passes the fine-tune's own greedy replies, so
  distillation matches the fine-tune's logits where it actually writes (see ``audit.AuditConfig.calib_format``).

A method truncates calibration texts to its own length (BitDelta's ``seq_len``): a ``reply`` text longer than
that loses its reply first, so give the method room for prompt and reply (calib-chat prompts are 70-120
tokens with SmolLM2's template).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltaguard.config import check_choice
from deltaguard.errors import ConfigError
from deltaguard.io import read_text_lines

CALIB_FORMATS = ("prompt", "reply")


def _text_lines(spec: str) -> list[str] | None:
    """A ``.txt`` source's non-empty lines; None when ``spec`` names a prompt set."""
    path = Path(spec).expanduser()
    if path.is_dir():
        raise ConfigError(f"calibration source {spec} is a directory; give a prompt set name or a .txt file")
    if path.suffix != ".txt":
        return None
    return read_text_lines(path, what="calibration file")


def calibration_prompts(spec: str, *, limit: int, seed: int = 0) -> Any:
    """Up to ``limit`` calibration prompts from ``spec`` as a ``PromptSet`` (to generate replies to): the
    ``calib`` split of a prompt set, or a ``.txt`` file's lines, each taken as one user turn."""
    from deltaguard.data import Prompt, load_prompts
    from deltaguard.data.base import make_set

    if limit < 1:
        raise ConfigError(f"calibration limit={limit} must be >= 1")
    lines = _text_lines(spec)
    if lines is None:
        return load_prompts(spec, split="calib", limit=limit, seed=seed)
    prompts = [Prompt(f"line-{i:05d}", text) for i, text in enumerate(lines[:limit])]
    return make_set(Path(spec).stem, "calib", prompts, source=str(Path(spec).expanduser()))


def reply_texts(tokenizer: Any, prompts: list[str], replies: list[str]) -> list[str]:
    """Each prompt as a user turn followed by its reply as the assistant turn (the tokenizer's chat template)."""
    from deltaguard.models import chat_prompt

    if len(prompts) != len(replies):
        raise ConfigError(f"{len(prompts)} calibration prompts but {len(replies)} replies")
    return [chat_prompt(tokenizer, prompt, assistant=reply) for prompt, reply in zip(prompts, replies, strict=True)]


def calibration_texts(spec: str, *, tokenizer: Any, limit: int, seed: int = 0, format: str = "prompt",
                      replies: list[str] | None = None) -> list[str]:
    """Up to ``limit`` calibration texts from ``spec`` (a prompt set name or a ``.txt`` file).

    ``format="prompt"``: a set's prompts as user turns awaiting a reply; a ``.txt`` file's lines as written.
    ``format="reply"``: each prompt (set or ``.txt`` line) as a user turn followed by ``replies[i]`` as the
    assistant turn; ``replies`` must hold one reply per prompt of ``calibration_prompts(spec, ...)``.
    """
    from deltaguard.models import chat_prompt

    check_choice("calibration format", format, CALIB_FORMATS)
    prompts = calibration_prompts(spec, limit=limit, seed=seed)
    if format == "reply":
        if replies is None:
            raise ConfigError("calibration format 'reply' needs the replies to the calibration prompts")
        return reply_texts(tokenizer, prompts.texts, list(replies))
    if replies is not None:
        raise ConfigError("calibration format 'prompt' takes no replies (use format='reply')")
    if _text_lines(spec) is not None:
        return prompts.texts
    return [chat_prompt(tokenizer, text) for text in prompts.texts]


__all__ = ["CALIB_FORMATS", "calibration_prompts", "calibration_texts", "reply_texts"]
