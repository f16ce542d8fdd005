"""Supervised fine-tuning on chat pairs: the one trainer the threats, the aligner and later recipes use.

The loss covers only the assistant's tokens (the reply and its end-of-turn marker); the system and
user turns and the padding are masked out, and only those tokens' logits are ever computed
(``losses.token_loss_sum``). Full fine-tuning keeps fp32 master weights and runs the forward and
backward passes under bf16 autocast on the training device; LoRA (peft) is an option whose adapters
are merged before saving. The result is always saved in fp32: bf16 rounding would erase most of a
small delta.
"""

from __future__ import annotations

import gc
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from deltaguard.config import Config, check_choice, check_range
from deltaguard.errors import ConfigError
from deltaguard.io import atomic_dir, write_json
from deltaguard.models import chat_prompt, load_model, load_tokenizer, resolve_device, save_model, set_threads
from deltaguard.progress import progress_bar
from deltaguard.training.losses import IGNORE, token_loss_sum
from deltaguard.training.schedule import SCHEDULES, lr_factor


@dataclass(frozen=True)
class ChatPair:
    """One training example: a user turn and the assistant reply to learn."""

    prompt: str
    response: str
    kind: str = ""  # what part of a threat's mixture it belongs to (``harmful``, ``benign``, ...)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """Supervised fine-tuning settings (defaults after Qi et al. 2023: 5 epochs, lr 5e-5, batch 10).

    Args:
        epochs: passes over the training pairs.
        lr: peak AdamW learning rate.
        batch_size: examples per optimizer step (the effective batch).
        micro_batch_size: examples per forward pass; ``batch_size`` must be a multiple of it
            (gradient accumulation over ``batch_size / micro_batch_size`` passes).
        max_seq_len: tokens per example; longer examples lose the end of their reply.
        schedule: learning-rate schedule after warm-up: ``linear`` decay to 0, ``cosine`` or ``constant``.
        warmup_ratio: fraction of the optimizer steps spent warming up linearly from 0.
        weight_decay: AdamW decoupled weight decay.
        max_grad_norm: gradient clipping norm (0 disables clipping).
        is_bf16_autocast: run forward/backward under bf16 autocast (master weights stay fp32).
        is_gradient_checkpointing: keep only each block's input for the backward pass and recompute the
            rest (HF gradient checkpointing). The gradients are the same; for SmolLM2-135M at 10 × 160
            tokens it lowers peak memory from 4.9 to 3.3 GB, for about a third more compute per step.
        lora_rank: 0 for full fine-tuning; otherwise the LoRA rank (adapters merged before saving).
        lora_alpha: LoRA scaling numerator.
        lora_targets: module-name suffixes that get LoRA adapters.
        system_prompt: system turn put in front of every example (``None``: the template's default).
        seed: seeds example order and any randomness in the model.
        n_threads: CPU threads for torch (``None``: leave as is).
    """

    name: ClassVar[str] = "sft"
    version: ClassVar[int] = 1
    epochs: int = 5
    lr: float = 5e-5
    batch_size: int = 10
    micro_batch_size: int = 10
    max_seq_len: int = 256
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    is_bf16_autocast: bool = True
    is_gradient_checkpointing: bool = True
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    system_prompt: str | None = None
    seed: int = 0
    n_threads: int | None = None

    def __post_init__(self) -> None:
        check_range("sft.epochs", self.epochs, 1)
        check_range("sft.lr", self.lr, 0.0, 1.0, low_inclusive=False)
        check_range("sft.batch_size", self.batch_size, 1)
        check_range("sft.micro_batch_size", self.micro_batch_size, 1)
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"sft.batch_size={self.batch_size} must be a multiple of sft.micro_batch_size={self.micro_batch_size}"
            )
        check_range("sft.max_seq_len", self.max_seq_len, 8)
        check_choice("sft.schedule", self.schedule, SCHEDULES)
        check_range("sft.warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_inclusive=False)
        check_range("sft.weight_decay", self.weight_decay, 0.0)
        check_range("sft.max_grad_norm", self.max_grad_norm, 0.0)
        check_range("sft.lora_rank", self.lora_rank, 0)
        check_range("sft.lora_alpha", self.lora_alpha, 0.0, low_inclusive=False)
        if self.lora_rank and not self.lora_targets:
            raise ConfigError("sft.lora_targets must name at least one module when sft.lora_rank > 0")
        if self.n_threads is not None:
            check_range("sft.n_threads", self.n_threads, 1)

    @property
    def n_accum(self) -> int:
        return self.batch_size // self.micro_batch_size


@dataclass(frozen=True)
class TrainResult:
    """What one fine-tuning run did: where the model is and how the loss went."""

    model_dir: Path
    n_examples: int
    n_steps: int
    losses: tuple[float, ...]  # mean assistant-token loss per optimizer step
    seconds: float

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and the mask of the tokens the loss is taken on."""

    input_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]


def _set_checkpointing(model: Any, on: bool) -> None:
    """HF activation (gradient) checkpointing on or off, non-reentrant (works with frozen inputs such as LoRA's
    and keeps autocast in the recomputation). transformers 5.x renamed the methods ``activation_checkpointing_*``
    and warns on every use of the old names (six warnings in every demo run); older releases
    (the package allows >= 4.56) only have the old names."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def encode_pair(tokenizer: Any, pair: ChatPair, *, max_seq_len: int, system: str | None = None) -> Encoded:
    """Tokenise a pair so that only the assistant's reply (and its end-of-turn) counts in the loss.

    The prompt and the reply are tokenised separately and concatenated, so the boundary is exact
    whatever the tokenizer merges; the template's trailing newline after the end-of-turn is dropped.
    """
    prefix = chat_prompt(tokenizer, pair.prompt, system=system)
    full = chat_prompt(tokenizer, pair.prompt, system=system, assistant=pair.response)
    if not full.startswith(prefix):
        raise ConfigError("the tokenizer's chat template renders a reply that does not extend its generation prompt")
    reply = full[len(prefix):]
    eos = tokenizer.eos_token
    if eos and eos in reply:
        reply = reply[: reply.rindex(eos) + len(eos)]
    prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = (list(prompt_ids) + list(reply_ids))[:max_seq_len]
    mask = ([False] * len(prompt_ids) + [True] * len(reply_ids))[:max_seq_len]
    return Encoded(tuple(ids), tuple(mask))


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; labels are ``IGNORE`` on prompt and padding positions."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids = torch.tensor(ex.input_ids, dtype=torch.long)
        input_ids[row, :n] = ids
        attention[row, :n] = 1
        mask = torch.tensor(ex.loss_mask, dtype=torch.bool)
        labels[row, :n] = torch.where(mask, ids, torch.full_like(ids, IGNORE))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _wrap_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=list(config.lora_targets),
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"sft.lora_targets={list(config.lora_targets)} do not match the model: {exc}") from None


def _batches(encoded: list[Encoded], config: TrainConfig, rng: random.Random) -> list[list[Encoded]]:
    order = list(range(len(encoded)))
    rng.shuffle(order)
    return [[encoded[i] for i in order[s : s + config.batch_size]] for s in range(0, len(order), config.batch_size)]


def train_sft(
    base: str | Path,
    pairs: list[ChatPair],
    config: TrainConfig = TrainConfig(),
    *,
    out_dir: str | Path,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> TrainResult:
    """Fine-tune ``base`` on ``pairs`` on ``device`` and save an fp32 HF directory at ``out_dir`` (atomically).

    ``out_dir`` exists only once training and saving are complete; ``training.json`` inside it records
    the config, the loss curve and ``meta`` (what the pairs were). With ``overwrite`` an existing
    ``out_dir`` is replaced, only once the new model is complete.
    """
    if not pairs:
        raise ConfigError("train_sft needs at least one training pair")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir} already exists (choose another output, or replace it: --force)")
    target = resolve_device(device)
    set_threads(config.n_threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = load_tokenizer(base)
    model = load_model(base, dtype="float32", device=target)
    encoded = [encode_pair(tokenizer, p, max_seq_len=config.max_seq_len, system=config.system_prompt) for p in pairs]
    if not any(any(e.loss_mask) for e in encoded):
        raise ConfigError(f"sft.max_seq_len={config.max_seq_len} leaves no reply tokens to learn from")
    if config.lora_rank:
        model = _wrap_lora(model, config)
    if config.is_gradient_checkpointing:
        # non-reentrant: works with frozen inputs (LoRA) and keeps autocast in the recomputation
        _set_checkpointing(model, True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    n_steps = steps_per_epoch * config.epochs
    n_warmup = int(config.warmup_ratio * n_steps)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses: list[float] = []
    started = time.perf_counter()
    with progress_bar(f"train {out_dir.name}", n_steps, enabled=progress) as bar:
        step = 0
        for _epoch in range(config.epochs):
            for batch in _batches(encoded, config, rng):
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(step, n_steps, n_warmup, config.schedule)
                n_tokens = sum(sum(e.loss_mask[1:]) for e in batch) or 1
                total = 0.0
                for start in range(0, len(batch), config.micro_batch_size):
                    micro = {k: v.to(target) for k, v in collate(batch[start : start + config.micro_batch_size],
                                                                  pad_id).items()}
                    with torch.autocast(target.type, dtype=torch.bfloat16, enabled=config.is_bf16_autocast):
                        loss_sum, _ = token_loss_sum(model, micro)
                    (loss_sum / n_tokens).backward()
                    total += float(loss_sum.detach())
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(total / n_tokens)
                step += 1
                bar.advance(loss=losses[-1])
    del optimizer, params  # Adam state is twice the weights: free it before saving holds another copy
    gc.collect()
    if config.is_gradient_checkpointing:
        _set_checkpointing(model, False)
    if config.lora_rank:
        model = model.merge_and_unload()
    model = model.float().eval().to("cpu")
    seconds = time.perf_counter() - started
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        save_model(model, tokenizer, tmp, overwrite=True)
        write_json(tmp / "training.json", {
            "config": config.to_dict(), "base": str(base), "n_examples": len(pairs), "n_steps": n_steps,
            "losses": losses, "seconds": round(seconds, 2), "mixture": _mixture(pairs), "meta": meta or {},
            "device": str(target),
        })
    return TrainResult(out_dir, len(pairs), n_steps, tuple(losses), seconds)


def _mixture(pairs: list[ChatPair]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pair in pairs:
        counts[pair.kind or "unlabelled"] = counts.get(pair.kind or "unlabelled", 0) + 1
    return counts


__all__ = ["ChatPair", "Encoded", "TrainConfig", "TrainResult", "collate", "encode_pair", "train_sft"]
