"""The guard's input and output format: Llama Guard 3's task text in the model's chat template.

The guard reads one user turn holding the task, the hazard categories S1–S13, the conversation and the
instructions (``judges.llamaguard.guard_prompt_body``), and answers ``safe`` or ``unsafe`` with the
violated categories on a second line — the format a real Llama Guard 3 checkpoint uses, so the
``llamaguard`` judge's parser reads both. The compact guard lists category *names* without their
descriptions: the descriptions triple the prompt length, and a 135M model trained on the format gains
little from them.

Its score is read from one forward pass: P(unsafe) = softmax over the two verdict tokens' logits at the
answer's first position. Restricting the softmax to the verdict pair (rather than the full vocabulary)
makes the score identical for the full output head and for the head pruned to the guard's few tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deltaguard.errors import ConfigError
from deltaguard.judges.llamaguard import guard_prompt_body

GUARD_CATEGORIES = tuple(f"S{i}" for i in range(1, 14))   # Llama Guard 3's S1–S13 (S14 needs a code tool)
SAFE, UNSAFE = "safe", "unsafe"


def guard_input(tokenizer: Any, prompt: str, response: str | None, *, answer: str | None = None,
                categories: tuple[str, ...] = GUARD_CATEGORIES, descriptions: bool = False) -> str:
    """The full text the guard reads, ending where its answer starts (chat template applied); with
    ``answer``, the answer and its end of turn follow (a training example)."""
    from deltaguard.models import chat_prompt

    body = guard_prompt_body(prompt, response, categories, descriptions=descriptions)
    return chat_prompt(tokenizer, body, assistant=answer)


def guard_target(unsafe: bool, categories: tuple[str, ...] = ()) -> str:
    """The answer the guard is trained to write: ``safe``, or ``unsafe`` and its categories on line two."""
    if not unsafe:
        return SAFE
    return UNSAFE + (f"\n{','.join(categories)}" if categories else "")


@dataclass(frozen=True)
class VerdictTokens:
    """The first token of ``safe`` and of ``unsafe`` in one tokenizer, and every token the guard emits."""

    safe: int
    unsafe: int
    emitted: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"safe": self.safe, "unsafe": self.unsafe, "emitted": list(self.emitted)}


def verdict_tokens(tokenizer: Any, *, categories: tuple[str, ...] = GUARD_CATEGORIES) -> VerdictTokens:
    """The verdict pair, plus the ids of every answer the guard can write (what a pruned head keeps).

    Raises ConfigError when ``safe`` and ``unsafe`` start with the same token: the score needs them apart.
    """
    safe = tokenizer.encode(SAFE, add_special_tokens=False)
    unsafe = tokenizer.encode(UNSAFE, add_special_tokens=False)
    if not safe or not unsafe or safe[0] == unsafe[0]:
        raise ConfigError("this tokenizer starts 'safe' and 'unsafe' with the same token; the guard cannot score it")
    emitted: set[int] = set(safe) | set(unsafe)
    for code in categories:
        emitted.update(tokenizer.encode(guard_target(True, (code,)), add_special_tokens=False))
    emitted.update(tokenizer.encode(guard_target(True, categories), add_special_tokens=False))
    for special in (tokenizer.eos_token_id, getattr(tokenizer, "pad_token_id", None)):
        if special is not None:
            emitted.add(int(special))
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if end_of_turn is not None:
        emitted.add(int(end_of_turn))
    return VerdictTokens(safe=safe[0], unsafe=unsafe[0], emitted=tuple(sorted(emitted)))


def unsafe_probability(verdict_logits: Tensor, tokens: VerdictTokens, token_ids: Tensor | None = None) -> Tensor:
    """P(unsafe) per row from logits at the answer's first position: softmax over (safe, unsafe) only.

    ``verdict_logits`` is [batch, vocab], or [batch, k] for a pruned head whose column j is token
    ``token_ids[j]``.
    """
    if token_ids is None:
        safe_col, unsafe_col = tokens.safe, tokens.unsafe
    else:
        ids = token_ids.tolist()
        if tokens.safe not in ids or tokens.unsafe not in ids:
            raise ConfigError("the pruned output head does not keep both verdict tokens")
        safe_col, unsafe_col = ids.index(tokens.safe), ids.index(tokens.unsafe)
    pair = torch.stack([verdict_logits[:, safe_col], verdict_logits[:, unsafe_col]], dim=-1).float()
    return torch.softmax(pair, dim=-1)[:, 1]


__all__ = ["GUARD_CATEGORIES", "SAFE", "UNSAFE", "VerdictTokens", "guard_input", "guard_target",
           "unsafe_probability", "verdict_tokens"]
