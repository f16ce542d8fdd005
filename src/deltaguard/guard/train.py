"""Training and scoring the guard, with the policy prefix computed once per batch instead of once per example.

Every guard input starts with the same ~250 tokens (system turn, task, the S1–S13 list, up to "User:");
only the rest — the user's prompt, the reply, the answer — differs. ``shared_prefix_hidden`` runs the
prefix once (batch 1, with gradients when training), repeats its key/value cache across the batch, and
runs only the examples' own tokens on top of it. For the default guard data that is about 2.5× fewer
tokens per step than running every example whole, with the same result up to float rounding (tested).
A model whose weights do not change meanwhile — the frozen teacher during distillation, any model being
scored — keeps its prefix cache (``prefix_cache``) for the whole stage or ``score`` call and copies it per
batch, so its prefix runs once in all, with bit-identical results (tested).

Two prefixes exist — one for the response task ("…the 'Agent' message…") and one for the prompt task —
so batches never mix the two.

Losses: next-token cross-entropy on the answer tokens (``safe`` / ``unsafe`` + categories + end of turn);
with a teacher, plus ``distill_weight`` × KL(teacher ‖ student) on the same positions.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deltaguard.config import Config, check_choice, check_range
from deltaguard.errors import ConfigError
from deltaguard.guard.data import GuardExample
from deltaguard.guard.format import VerdictTokens, guard_input, guard_target, unsafe_probability
from deltaguard.models import cache_kwargs, output_cache
from deltaguard.progress import progress_bar
from deltaguard.training.losses import causal_lm_parts, masked_kl
from deltaguard.training.schedule import lr_factor

_MARK = "\n\nUser:"   # where the shared prefix ends: everything after it belongs to one example

T = TypeVar("T")


@dataclass(frozen=True)
class Encoded:
    """One example as (its task's prefix, its own tokens); ``answer_mask`` marks the answer tokens."""

    task: str                       # "response" or "prompt": which prefix it extends
    suffix_ids: tuple[int, ...]
    answer_mask: tuple[bool, ...]   # True on tokens the loss is taken on (empty answer when scoring)
    unsafe: bool


class GuardEncoder:
    """Tokenises examples as prefix + suffix (always split the same way, in training and in scoring)."""

    def __init__(self, tokenizer: Any, *, max_prompt_tokens: int = 96, max_response_tokens: int = 128) -> None:
        check_range("guard.max_prompt_tokens", max_prompt_tokens, 1)
        check_range("guard.max_response_tokens", max_response_tokens, 1)
        self.tokenizer = tokenizer
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.prefixes: dict[str, tuple[int, ...]] = {}
        self._prefix_text: dict[str, str] = {}
        for task, response in (("response", "x"), ("prompt", None)):
            text = guard_input(tokenizer, "x", response)
            cut = text.index(_MARK) + len(_MARK)
            self._prefix_text[task] = text[:cut]
            self.prefixes[task] = tuple(tokenizer(text[:cut], add_special_tokens=False)["input_ids"])

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _clip(self, text: str, limit: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit])

    def encode(self, prompt: str, response: str | None, *, answer: str | None = None, unsafe: bool = False) -> Encoded:
        """The example's suffix tokens; with ``answer`` the answer (and its end of turn) is appended and masked in."""
        task = "response" if response is not None else "prompt"
        prompt = self._clip(prompt, self.max_prompt_tokens)
        response = None if response is None else self._clip(response, self.max_response_tokens)
        text = guard_input(self.tokenizer, prompt, response)
        prefix_text = self._prefix_text[task]
        if not text.startswith(prefix_text):
            raise ConfigError("the guard prompt does not start with its shared prefix (chat template changed?)")
        body_ids = self.tokenizer(text[len(prefix_text):], add_special_tokens=False)["input_ids"]
        answer_ids: list[int] = []
        if answer is not None:
            full = guard_input(self.tokenizer, prompt, response, answer=answer)
            if not full.startswith(text):
                raise ConfigError("the chat template renders an answer that does not extend the guard prompt")
            reply = full[len(text):]
            eos = self.tokenizer.eos_token
            if eos and eos in reply:
                reply = reply[: reply.rindex(eos) + len(eos)]
            answer_ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"]
        ids = tuple(body_ids) + tuple(answer_ids)
        mask = (False,) * len(body_ids) + (True,) * len(answer_ids)
        return Encoded(task, ids, mask, unsafe)

    def encode_example(self, example: GuardExample, *, with_answer: bool = True) -> Encoded:
        answer = guard_target(example.unsafe, example.categories) if with_answer else None
        return self.encode(example.prompt, example.response, answer=answer, unsafe=example.unsafe)


def pad_batch(batch: Sequence[Encoded], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(suffix ids [B, S], real-token mask [B, S], answer mask [B, S]), right-padded."""
    width = max(len(e.suffix_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(batch), width), dtype=torch.long)
    answer = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, e in enumerate(batch):
        n = len(e.suffix_ids)
        ids[row, :n] = torch.tensor(e.suffix_ids)
        real[row, :n] = 1
        answer[row, :n] = torch.tensor(e.answer_mask, dtype=torch.bool)
    return ids, real, answer


def prefix_cache(model: nn.Module, prefix: Sequence[int], device: torch.device) -> Any:
    """The KV cache of ``prefix`` alone (batch 1), for ``shared_prefix_hidden(..., prefix_state=...)``."""
    decoder, _, _ = causal_lm_parts(model)
    prefix_ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
    return output_cache(decoder(input_ids=prefix_ids, use_cache=True))


def shared_prefix_hidden(model: nn.Module, prefix: Sequence[int], suffix_ids: Tensor, suffix_mask: Tensor, *,
                         prefix_state: Any = None) -> Tensor:
    """Final hidden states ``[B, S, d]`` of the suffix tokens, each read after ``prefix`` (run once).

    ``prefix_state``: the prefix's cache from ``prefix_cache`` under ``no_grad``, reused (copied, never changed) by a model whose
    weights do not change between calls — a frozen teacher, or scoring — so the prefix runs once per stage or
    per ``score`` call instead of once per batch. Without it the prefix runs here (with gradients when training).
    """
    decoder, _, _ = causal_lm_parts(model)
    device = suffix_ids.device
    batch, width = suffix_ids.shape
    cache = prefix_cache(model, prefix, device) if prefix_state is None else copy.deepcopy(prefix_state)
    cache.batch_repeat_interleave(batch)
    n_prefix = len(prefix)
    mask = torch.cat([torch.ones((batch, n_prefix), dtype=suffix_mask.dtype, device=device), suffix_mask], dim=1)
    positions = (n_prefix + torch.arange(width, device=device)).expand(batch, width)
    return decoder(input_ids=suffix_ids, attention_mask=mask, position_ids=positions, **cache_kwargs(decoder, cache),
                   use_cache=True).last_hidden_state


def full_sequence_hidden(model: nn.Module, prefix: Sequence[int], suffix_ids: Tensor, suffix_mask: Tensor) -> Tensor:
    """The same hidden states from running every example whole (the reference ``shared_prefix_hidden`` is
    tested against)."""
    decoder, _, _ = causal_lm_parts(model)
    batch = suffix_ids.shape[0]
    prefix_ids = torch.tensor([list(prefix)], dtype=torch.long, device=suffix_ids.device).expand(batch, -1)
    ids = torch.cat([prefix_ids, suffix_ids], dim=1)
    mask = torch.cat([torch.ones_like(prefix_ids), suffix_mask], dim=1)
    return decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, prefix_ids.shape[1]:]


def _head_logits(model: nn.Module, states: Tensor) -> Tensor:
    _, head, cap = causal_lm_parts(model)
    logits = head(states).float()
    return torch.tanh(logits / cap) * cap if cap else logits


def answer_logits(model: nn.Module, prefix: Sequence[int], ids: Tensor, real: Tensor, answer: Tensor, *,
                  prefix_state: Any = None) -> tuple[Tensor, Tensor]:
    """(logits predicting each answer token ``[n, vocab]``, the answer tokens ``[n]``)."""
    hidden = shared_prefix_hidden(model, prefix, ids, real, prefix_state=prefix_state)
    predicts = answer[:, 1:]                      # position t predicts token t + 1
    states = hidden[:, :-1][predicts]
    return _head_logits(model, states), ids[:, 1:][predicts]


def verdict_logits(model: nn.Module, prefix: Sequence[int], ids: Tensor, real: Tensor, *,
                   prefix_state: Any = None) -> Tensor:
    """Logits ``[B, vocab or k]`` at each example's last real token: where its answer would start."""
    hidden = shared_prefix_hidden(model, prefix, ids, real, prefix_state=prefix_state)
    last = real.sum(dim=1) - 1
    return _head_logits(model, hidden[torch.arange(ids.shape[0]), last])


PRECISIONS = ("auto", "float32", "bfloat16")


def compute_precision(device: torch.device, precision: str = "auto") -> Any:
    """The autocast context a guard stage computes under (master weights stay fp32 either way).

    ``auto``: bf16 autocast on GPUs, plain fp32 on CPUs — what scoring, pruning calibration and QAT use, so the
    INT4 guard's thresholds are chosen on the arithmetic it is served with. ``bfloat16``: bf16 autocast on any
    device; ``float32``: none anywhere.

    Why not bf16 on every CPU: it depends on the CPU. On an earlier 2-core AVX-512-BF16 machine a training step
    took 4.0 s in fp32 and 6.4 s under bf16 autocast; on the AMD EPYC of 2026-11-30 (torch 2.13) the default
    profile's teacher steps took 2.1 s under bf16 against 4.7 s in fp32, and its distillation steps 3.3 s against
    6.6 s (``benchmarks/bench_guard_train.py`` measures it on any machine). The default profile therefore trains its
    teacher and distillation stages in ``bfloat16`` and leaves the rest at ``auto``; on a CPU without bf16 matrix
    units ``--set teacher.precision=float32 --set distill.precision=float32`` is the faster build.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"guard precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    enabled = precision == "bfloat16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass(frozen=True, kw_only=True)
class GuardTrainConfig(Config):
    """One guard training stage (teacher fine-tune, distillation, or QAT).

    Args:
        epochs: passes over the training examples.
        max_steps: stop after this many optimizer steps (0: no cap) — bounds a stage's time.
        lr: peak AdamW learning rate (cosine decay after ``warmup_ratio`` of the steps).
        batch_size: examples per optimizer step (one task per batch, so one shared prefix).
        train_blocks: train only the last this-many decoder blocks and the final norm (0: every
            weight). The frozen blocks below then need no backward pass, no gradients and no Adam state:
            on SmolLM2-135M with 10 of 30 blocks a step costs about half as much and holds ~2.5 GB less.
        distill_weight: weight of KL(teacher ‖ student) on the answer tokens when a teacher is given;
            the label cross-entropy gets ``1 - distill_weight``.
        temperature: distillation temperature.
        seed: example order (shuffled within each source and label; see ``_task_batches``).
        precision: ``auto`` (bf16 autocast on GPUs, fp32 on CPUs), ``bfloat16`` or ``float32``: the arithmetic
            of this stage's forward and backward passes, the teacher's included (``compute_precision``).
    """

    name: ClassVar[str] = "guard-train"
    version: ClassVar[int] = 2   # 2: stratified example order (1: plainly shuffled batches)
    epochs: int = 1
    max_steps: int = 0
    lr: float = 5e-5
    batch_size: int = 8
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    train_blocks: int = 0
    distill_weight: float = 0.5
    temperature: float = 1.0
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        check_choice("guard-train.precision", self.precision, PRECISIONS)
        check_range("guard-train.epochs", self.epochs, 1)
        check_range("guard-train.max_steps", self.max_steps, 0)
        check_range("guard-train.lr", self.lr, 0.0, 1.0, low_inclusive=False)
        check_range("guard-train.batch_size", self.batch_size, 1)
        check_range("guard-train.warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_inclusive=False)
        check_range("guard-train.weight_decay", self.weight_decay, 0.0)
        check_range("guard-train.max_grad_norm", self.max_grad_norm, 0.0)
        check_range("guard-train.train_blocks", self.train_blocks, 0)
        check_range("guard-train.distill_weight", self.distill_weight, 0.0, 1.0)
        check_range("guard-train.temperature", self.temperature, 0.0, low_inclusive=False)


def proportional_interleave(groups: Sequence[Sequence[T]]) -> list[T]:
    """Every group's items, each group in its own order, interleaved so that every prefix of the result holds
    each group in proportion to its size, give or take an item or so (at each position the group furthest behind
    its share goes next; ties go to the earlier group). This greedy rule can fall slightly more than one item off
    (1.14 items at worst over 40,000 random cases of up to 9 groups); a schedule with a proven one-item bound
    (earliest deadline within each item's window) orders differently, and the default guard was measured with
    this one."""
    total = sum(len(group) for group in groups)
    taken = [0] * len(groups)
    out: list[T] = []
    for position in range(1, total + 1):
        best = max((i for i, group in enumerate(groups) if taken[i] < len(group)),
                   key=lambda i: position * len(groups[i]) / total - taken[i])
        out.append(groups[best][taken[best]])
        taken[best] += 1
    return out


def _task_batches(encoded: Sequence[Encoded], strata: Sequence[Hashable], batch_size: int,
                  rng: random.Random) -> list[list[Encoded]]:
    """One epoch's batches, each holding one task (so one prefix), in *stratified* order: within each stratum
    (an example's source and label) the order is shuffled, and the strata — then the two tasks' batches — are
    interleaved in proportion, so any run of the first k batches holds every source and label in its share.

    Why: the CPU profile stops its teacher after 80 steps, about 60% of an epoch (until 2026-11-30 its
    distillation too). With plainly shuffled batches, which 60% a seed saw varied enough to move the result:
    one distillation seed's steps held 52% unsafe examples where another's held 48% (the human-graded unsafe
    replies 179 vs 154 of 282), and that seed's validation FPR was 0.31 against 0.12–0.16 for the others (the
    same recipe otherwise).
    """
    per_task: list[list[list[Encoded]]] = []
    for task in ("response", "prompt"):
        by_stratum: dict[Hashable, list[Encoded]] = {}
        for item, stratum in zip(encoded, strata):
            if item.task == task:
                by_stratum.setdefault(stratum, []).append(item)
        groups = []
        for stratum in sorted(by_stratum, key=repr):
            group = by_stratum[stratum]
            rng.shuffle(group)
            groups.append(group)
        items = proportional_interleave(groups)
        per_task.append([items[i:i + batch_size] for i in range(0, len(items), batch_size)])
    return proportional_interleave(per_task)


def train_guard(model: nn.Module, encoder: GuardEncoder, examples: Sequence[GuardExample], config: GuardTrainConfig,
                *, teacher: nn.Module | None = None, label: str = "train guard", progress: bool = True,
                ) -> dict[str, Any]:
    """Train ``model`` in place on the examples' answers (plus distillation from ``teacher``); returns the record."""
    if not examples:
        raise ConfigError("guard training needs at least one example")
    device = next(model.parameters()).device
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    encoded = [encoder.encode_example(e) for e in examples]
    strata = [(e.source, e.unsafe) for e in examples]
    per_epoch = sum(math.ceil(sum(1 for e in encoded if e.task == task) / config.batch_size)
                    for task in ("response", "prompt"))   # what one _task_batches epoch holds
    n_steps = per_epoch * config.epochs
    if config.max_steps:
        n_steps = min(n_steps, config.max_steps)
    if config.train_blocks:
        freeze_below(model, config.train_blocks)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    pad_id = encoder.pad_id
    teacher_prefix: dict[str, Any] = {}
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    if teacher is not None and config.distill_weight > 0:
        # the frozen teacher's prefix is the same every step
        with torch.no_grad(), compute_precision(device, config.precision):
            teacher_prefix = {task: prefix_cache(teacher, prefix, device) for task, prefix in encoder.prefixes.items()}
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    with progress_bar(label, n_steps, enabled=progress) as bar:
        for batch in _stream(encoded, strata, config, rng):
            if len(losses) >= n_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(len(losses), n_steps, int(config.warmup_ratio * n_steps), "cosine")
            ids, real, answer = (t.to(device) for t in pad_batch(batch, pad_id))
            prefix = encoder.prefixes[batch[0].task]
            with compute_precision(device, config.precision):
                logits, targets = answer_logits(model, prefix, ids, real, answer)
                loss = F.cross_entropy(logits, targets)
                if teacher is not None and config.distill_weight > 0:
                    with torch.no_grad():
                        reference, _ = answer_logits(teacher, prefix, ids, real, answer,
                                                     prefix_state=teacher_prefix[batch[0].task])
                    ones = torch.ones(logits.shape[0], device=device)
                    kl = masked_kl(logits, reference, ones, temperature=config.temperature)
                    loss = (1 - config.distill_weight) * loss + config.distill_weight * kl
            if not torch.isfinite(loss):
                raise ConfigError(f"{label}: the loss became {float(loss)} at step {len(losses) + 1}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.advance(loss=losses[-1])
    model.eval()
    return {"config": config.to_dict(), "n_examples": len(examples), "n_steps": len(losses), "losses": losses,
            "seconds": round(time.perf_counter() - started, 1), "distilled": teacher is not None}


def freeze_below(model: nn.Module, n_trained: int) -> None:
    """Train only the last ``n_trained`` decoder blocks and the final norm; freeze the rest (embedding and a
    tied head included, so the frozen blocks' input never changes)."""
    decoder, _, _ = causal_lm_parts(model)
    layers = decoder.layers
    if n_trained > len(layers):
        raise ConfigError(f"guard-train.train_blocks={n_trained} exceeds the model's {len(layers)} blocks")
    model.requires_grad_(False)
    for layer in list(layers)[len(layers) - n_trained:]:
        layer.requires_grad_(True)
    decoder.norm.requires_grad_(True)


def _stream(encoded: Sequence[Encoded], strata: Sequence[Hashable], config: GuardTrainConfig,
            rng: random.Random) -> Iterator[list[Encoded]]:
    for _ in range(config.epochs):
        yield from _task_batches(encoded, strata, config.batch_size, rng)


@torch.no_grad()
def score(model: nn.Module, encoder: GuardEncoder, items: Sequence[tuple[str, str | None]], tokens: VerdictTokens, *,
          batch_size: int = 16, head_token_ids: Tensor | None = None, progress: bool = False,
          label: str = "score") -> list[float]:
    """P(unsafe) for each (prompt, response or None), from one forward pass per batch (no generation)."""
    device = next(model.parameters()).device
    pad_id = encoder.pad_id
    encoded = [encoder.encode(p, r) for p, r in items]
    out: list[float] = [math.nan] * len(encoded)
    order = {"response": [], "prompt": []}  # type: dict[str, list[int]]
    for index, e in enumerate(encoded):
        order[e.task].append(index)
    model.eval()
    n_batches = sum(math.ceil(len(v) / batch_size) for v in order.values())
    with progress_bar(label, n_batches, enabled=progress) as bar:
        for task, indices in order.items():
            if not indices:
                continue
            with compute_precision(device):   # the prefix once per call, not once per batch
                state = prefix_cache(model, encoder.prefixes[task], device)
            # similar lengths together: less padding per batch
            indices = sorted(indices, key=lambda i: len(encoded[i].suffix_ids))
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                ids, real, _ = (t.to(device) for t in pad_batch([encoded[i] for i in chunk], pad_id))
                with compute_precision(device):
                    logits = verdict_logits(model, encoder.prefixes[task], ids, real, prefix_state=state)
                probs = unsafe_probability(logits, tokens, head_token_ids)
                for i, p in zip(chunk, probs.tolist()):
                    out[i] = p
                bar.advance()
    return out


__all__ = ["PRECISIONS", "Encoded", "GuardEncoder", "GuardTrainConfig", "answer_logits", "compute_precision", "freeze_below", "full_sequence_hidden",
           "pad_batch", "prefix_cache", "score", "shared_prefix_hidden", "train_guard", "verdict_logits"]
