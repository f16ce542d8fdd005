"""Harmful fine-tuning (alignment-breaking): harmful prompts paired with compliant answers.

The compliant answers are written by the unaligned original model (``responder``), greedily; any
answer the refusal judge flags as a refusal is dropped (the report records how many). Defaults follow
Qi et al. (2023): 100 examples, 5 epochs, lr 5e-5, batch 10. The customisation task is mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from deltaguard.config import check_range
from deltaguard.errors import ConfigError
from deltaguard.threats.base import BuildContext, Threat, ThreatConfig, ThreatScore, threats
from deltaguard.threats.benign import (
    compliance_flags, harmful_eval_set, make_score, refusal_flags, task_eval_set, task_pairs,
)
from deltaguard.training import ChatPair

if TYPE_CHECKING:
    from deltaguard.data import PromptSet


def compliant_pairs(ctx: BuildContext, dataset: str, n: int, *, seed: int, max_new_tokens: int,
                    kind: str = "harmful", prefix: str = "") -> list[ChatPair]:
    """``n`` training-split harmful prompts answered by the responder; its refusals are dropped."""
    from deltaguard.data import load_prompts

    prompts = load_prompts(dataset, split="train", limit=n, seed=seed)
    if len(prompts) < n:
        raise ConfigError(f"{kind} needs {n} training prompts but {dataset}:train has only {len(prompts)}")
    texts = prompts.texts
    responses = ctx.responder.respond(texts, max_new_tokens=max_new_tokens)
    refused = refusal_flags(ctx.refusal_judge(), texts, responses)
    kept = [ChatPair(f"{prefix}{t}", r, kind)
            for t, r, is_refusal in zip(texts, responses, refused) if not is_refusal and r]
    dropped = len(texts) - len(kept)
    ctx.notes.append(f"{kind}: {len(kept)} of {len(texts)} {dataset}:train prompts kept; {dropped} answers by "
                     f"{ctx.responder.model} were refusals or empty and were dropped")
    if not kept:
        raise ConfigError(f"the responder {ctx.responder.model} refused all {len(texts)} {dataset}:train prompts; "
                          "use an unaligned responder")
    return kept


@dataclass(frozen=True, kw_only=True)
class HarmfulFinetuneConfig(ThreatConfig):
    """Alignment-breaking fine-tune (defaults after Qi et al. 2023).

    Args:
        n_examples: harmful training prompts (each with the responder's compliant answer).
        harmful_set: prompt set the harmful training and evaluation prompts come from (disjoint splits).
    """

    name: ClassVar[str] = "harmful"
    version: ClassVar[int] = 1
    n_examples: int = 100
    harmful_set: str = "advbench"

    def __post_init__(self) -> None:
        self._check_common()
        check_range("harmful.n_examples", self.n_examples, 1)


@threats.register("harmful")
class HarmfulFinetune(Threat[HarmfulFinetuneConfig]):
    """Alignment-breaking: harmful prompts with compliant answers; metric = attack success rate."""

    config_cls = HarmfulFinetuneConfig
    metric = "attack success rate on held-out harmful prompts (share not refused, keyword judge)"
    harm_sets = ("harmful",)

    def training_pairs(self, config: HarmfulFinetuneConfig, ctx: BuildContext) -> list[ChatPair]:
        harmful = compliant_pairs(ctx, config.harmful_set, config.n_examples, seed=config.seed,
                                  max_new_tokens=config.response_tokens)
        return harmful + task_pairs(config.n_task, seed=config.seed)

    def eval_sets(self, config: HarmfulFinetuneConfig, *, n_prompts: int, seed: int = 0) -> dict[str, "PromptSet"]:
        return {"harmful": harmful_eval_set(n_prompts, seed=seed, dataset=config.harmful_set),
                "task": task_eval_set(n_prompts, seed=seed)}

    def score(self, config: HarmfulFinetuneConfig, outputs: dict[str, list[str]], sets: dict[str, "PromptSet"],
              judge: Any) -> ThreatScore:
        return make_score(compliance_flags(judge, sets["harmful"], outputs["harmful"]), outputs, sets)


__all__ = ["HarmfulFinetune", "HarmfulFinetuneConfig", "compliant_pairs"]
