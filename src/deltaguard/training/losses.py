"""Training losses: next-token cross-entropy on labelled tokens, masked logit MSE, and KL distillation.

``token_loss_sum`` is written for memory. A causal LM's full logits are ``[batch, positions, vocab]``:
for SmolLM2 (vocab 49152) a batch of 10 × 160 tokens is 315 MB in fp32, and autograd keeps more copies
for the backward pass. SFT only needs the reply tokens, so the decoder's hidden states are gathered at
labelled positions and sent through the output head in chunks; each chunk's head and loss are
recomputed in the backward pass (activation checkpointing), so at most one chunk of logits is ever held.
``token_loss_sum_reference`` is the plain full-logits form it is tested against.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
LOSS_CHUNK_TOKENS = 1024   # labelled tokens per head + loss chunk: 1024 × 49152 fp32 logits = 200 MB


def causal_lm_parts(model: Any) -> tuple[Any, Any, float | None]:
    """(decoder, output head, final logit soft-cap or None) of an HF causal LM, also inside a PEFT wrapper."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    cap = getattr(lm.config, "final_logit_softcapping", None)
    return lm.get_decoder(), lm.get_output_embeddings(), cap


def _head_loss_sum(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, cap: float | None) -> Tensor:
    logits = F.linear(hidden, weight, bias).float()  # [n, vocab]
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, labels, reduction="sum")


def token_loss_sum(model: Any, batch: dict[str, Tensor], *, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> tuple[Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions (``labels != IGNORE``), and their count.

    Only the hidden states of labelled positions reach the output head, ``chunk_tokens`` at a time.
    """
    decoder, head, cap = causal_lm_parts(model)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]                         # position t predicts token t + 1
    kept = labels != IGNORE
    states = hidden[:, :-1][kept]                           # [n_labelled, d_model]
    targets = labels[kept]
    n = int(targets.numel())
    total = hidden.new_zeros((), dtype=torch.float32)
    if n == 0:
        return total + 0.0 * hidden.sum(), 0               # keeps the graph connected for backward()
    for start in range(0, n, chunk_tokens):
        chunk = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            total = total + checkpoint(_head_loss_sum, states[chunk], head.weight, head.bias, targets[chunk], cap,
                                       use_reentrant=False)
        else:
            total = total + _head_loss_sum(states[chunk], head.weight, head.bias, targets[chunk], cap)
    return total, n


def token_loss_sum_reference(model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    """The same loss from the model's full ``[batch, positions, vocab]`` logits (for tests)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits = logits[:, :-1, :].float()
    shift_labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int((shift_labels != IGNORE).sum())


def masked_logit_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens (``mask`` = 1) of the mean squared logit difference; padding excluded."""
    per_token = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # [batch, pos]
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


def masked_kl(student: Tensor, teacher: Tensor, mask: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Mean over real tokens of KL(teacher ‖ student) at ``temperature``, scaled by T² (Hinton et al.)."""
    t = float(temperature)
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    per_token = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # [batch, pos]
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1) * t * t


__all__ = ["IGNORE", "LOSS_CHUNK_TOKENS", "causal_lm_parts", "masked_kl", "masked_logit_mse", "token_loss_sum",
           "token_loss_sum_reference"]
