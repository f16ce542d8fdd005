"""Make a safety-aligned chat base from an unaligned instruct model (``deltaguard align``).

As a chat model is aligned before release: supervised fine-tuning on training-split harmful prompts
answered with varied refusals, mixed with benign prompts (and task problems) answered with the
original model's own responses. The self-distillation half keeps the model's skills and teaches it
where *not* to refuse; the refusals are composed from the phrase lists in ``deltaguard.data.refusals``.

Targets on the held-out evaluation split (checked by the study, not assumed): keyword refusal rate
>= 90% on harmful prompts, over-refusal <= 10% on benign prompts, task accuracy within 10% (relative)
of the original model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from deltaguard.config import Config, check_range
from deltaguard.errors import ConfigError
from deltaguard.models import DEFAULT_MODEL
from deltaguard.threats.base import BuildContext, Responder
from deltaguard.data.refusals import write_refusal
from deltaguard.training import ChatPair, TrainConfig, TrainResult, train_sft

def refusal_pairs(dataset_specs: tuple[str, ...], n: int, *, seed: int, prefix: str = "",
                  kind: str = "refusal") -> list[ChatPair]:
    """``n`` training-split harmful prompts (spread over ``dataset_specs``) answered with refusals."""
    from deltaguard.data import load_prompts

    if n == 0:
        return []
    shares = [n // len(dataset_specs) + (1 if i < n % len(dataset_specs) else 0) for i in range(len(dataset_specs))]
    rng = random.Random(f"refusals:{seed}")
    pairs: list[ChatPair] = []
    for spec, share in zip(dataset_specs, shares):
        if share == 0:
            continue
        prompts = load_prompts(spec, split="train", limit=share, seed=seed)
        if len(prompts) < share:
            raise ConfigError(f"{kind} needs {share} training prompts from {spec} but {spec}:train has {len(prompts)}")
        pairs.extend(ChatPair(f"{prefix}{p.text}", write_refusal(rng), kind) for p in prompts.prompts)
    return pairs


@dataclass(frozen=True, kw_only=True)
class AlignConfig(Config):
    """Safety alignment by SFT: refusals for harmful prompts, self-distillation for benign ones.

    Args:
        n_refusals: training-split harmful prompts answered with refusals (spread over ``harmful_sets``).
        harmful_sets: harmful prompt sets the refusal prompts come from.
        n_benign: training-split benign instructions answered with the original model's own replies.
        benign_weight: how many times each benign self-distillation example appears (its mixing weight
            against the refusals; raising it lowers over-refusal).
        n_task: training-split word problems answered with the original model's own replies.
        response_tokens: new tokens per self-distilled reply (greedy).
        epochs: training epochs.
        lr: peak learning rate.
        batch_size: examples per optimizer step.
        micro_batch_size: examples per forward pass.
        max_seq_len: tokens per training example.
        lora_rank: 0 for full fine-tuning; otherwise LoRA adapters of this rank (merged before saving),
            which change the model less and so keep more of its skills.
        lora_alpha: LoRA scaling numerator.
        seed: seeds sampling, refusal wording and training.
    """

    name: ClassVar[str] = "align"
    version: ClassVar[int] = 1
    n_refusals: int = 120
    harmful_sets: tuple[str, ...] = ("advbench", "donotanswer")
    n_benign: int = 50
    benign_weight: int = 1
    n_task: int = 50
    response_tokens: int = 96
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 10
    micro_batch_size: int = 10
    max_seq_len: int = 192
    lora_rank: int = 0
    lora_alpha: float = 16.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("align.n_refusals", self.n_refusals, 1)
        check_range("align.n_benign", self.n_benign, 0)
        check_range("align.benign_weight", self.benign_weight, 1, 10)
        check_range("align.n_task", self.n_task, 0)
        check_range("align.response_tokens", self.response_tokens, 1, 1024)
        if not self.harmful_sets:
            raise ConfigError("align.harmful_sets must name at least one harmful prompt set")
        self.train_config()

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           micro_batch_size=min(self.micro_batch_size, self.batch_size),
                           max_seq_len=self.max_seq_len, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                           seed=self.seed)


def alignment_pairs(config: AlignConfig, ctx: BuildContext) -> list[ChatPair]:
    """Refusals for harmful prompts plus the original model's own answers to benign prompts and problems."""
    from deltaguard.data import load_prompts

    pairs = refusal_pairs(config.harmful_sets, config.n_refusals, seed=config.seed)
    parts = (("benign", config.n_benign, "self-distill-benign"), ("arith", config.n_task, "self-distill-task"))
    for spec, n, kind in parts:
        if n == 0:
            continue
        prompts = load_prompts(spec, split="train", limit=n, seed=config.seed)
        responses = ctx.responder.respond(prompts.texts, max_new_tokens=config.response_tokens)
        repeats = config.benign_weight if spec == "benign" else 1
        pairs.extend(ChatPair(t, r, kind) for t, r in zip(prompts.texts, responses) if r for _ in range(repeats))
        if len(prompts) < n:
            ctx.notes.append(f"align: {spec}:train has {len(prompts)} prompts, fewer than the {n} asked for")
    return pairs


def align(base: str | Path = DEFAULT_MODEL, config: AlignConfig = AlignConfig(), *, out_dir: str | Path,
          cache_dir: Path | None = None, responder: str | Path | None = None, device: str = "cpu",
          dtype: str = "float32", progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Align ``base`` on ``device`` and save the aligned chat model at ``out_dir`` (an fp32 HF directory).

    The benign answers are the base's own (self-distillation keeps its skills). A *base* (pretrained, not
    instruct-tuned) model cannot answer a chat prompt yet: give an instruct model as ``responder`` and the
    same recipe instruct-tunes it on that model's answers while teaching the refusals.
    """
    responder = Responder(responder or base, cache_dir=cache_dir, device=device, dtype=dtype, progress=progress)
    ctx = BuildContext(responder)
    pairs = alignment_pairs(config, ctx)
    responder.release()
    meta = {"recipe": config.to_dict(), "notes": ctx.notes,
            **({"responder": str(responder.model)} if str(responder.model) != str(base) else {})}
    return train_sft(base, pairs, config.train_config(), out_dir=out_dir, progress=progress, meta=meta, device=device,
                     overwrite=overwrite)


__all__ = ["AlignConfig", "align", "alignment_pairs", "refusal_pairs", "write_refusal"]
