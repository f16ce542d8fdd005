"""``EvalConfig``: which suites, judges, prompt sets and generation settings an evaluation uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from deltaguard.config import Config, check_range
from deltaguard.data import HUB_PREFIX, SPLITS, datasets, parse_spec
from deltaguard.data.local import looks_like_path
from deltaguard.errors import ConfigError
from deltaguard.eval.suites.base import suites
from deltaguard.generation import GenerationConfig
from deltaguard.judges import judges


@dataclass(frozen=True, kw_only=True)
class EvalConfig(Config):
    """What to measure and how.

    Args:
        suites: evaluation suites by name (``deltaguard list suites``): safety, over-refusal, utility and the
            trust dimensions (trust-toxicity, trust-stereotype, ...).
        judges: judges for the suites that judge replies (see ``deltaguard list judges``); each suite
            uses the judges that measure what it needs (refusal, unsafe, harm score).
        judge_options: "judge.field=value" settings, e.g. "llm.backend=hf", "llamaguard.model=/ckpt".
        harmful_sets: prompt sets whose responses are judged for attack success.
        benign_set: benign instructions for over-refusal.
        task_set: exact-answer task for accuracy (each prompt's meta["answer"]).
        ppl_set: benign text for held-out perplexity.
        split: the split every set is read from (evaluation prompts by default).
        limit: at most this many prompts per set (a seeded random subset).
        seed: subset seed.
        disjoint_from: sets the model was trained or calibrated on; an overlap with any evaluation
            prompt stops the run (a path or name; "name:split" to pick a split, default all of it).
        generation: generation settings (override with "generation.field=value").
        ppl_max_tokens: tokens per text for perplexity.
        n_boot: bootstrap resamples for confidence intervals.
        task_max_new_tokens: tokens per reply on the task set (None: ``generation.max_new_tokens``); a verbose
            model needs room to reach its answer even when other replies are kept short.
        toxicity_samples: replies per prompt in ``trust-toxicity`` (1: greedy; more: sampled, and the
            worst counts — the paper's expected maximum toxicity uses 25).
    """

    name: ClassVar[str] = "eval"
    version: ClassVar[int] = 1
    suites: tuple[str, ...] = ("safety", "over-refusal", "utility")
    judges: tuple[str, ...] = ("keyword",)
    judge_options: tuple[str, ...] = ()
    harmful_sets: tuple[str, ...] = ("advbench",)
    benign_set: str = "benign"
    task_set: str = "arith"
    ppl_set: str = "calib-chat"
    split: str = "eval"
    limit: int | None = None
    seed: int = 0
    disjoint_from: tuple[str, ...] = ()
    generation: GenerationConfig = GenerationConfig()
    ppl_max_tokens: int = 256
    n_boot: int = 2000
    task_max_new_tokens: int | None = None
    toxicity_samples: int = 1

    def __post_init__(self) -> None:
        if not self.suites:
            raise ConfigError(f"eval.suites must name at least one suite ({', '.join(suites.names())})")
        for name in self.suites:
            suites.get(name)  # unknown names raise ConfigError with close matches
        if len(set(self.suites)) != len(self.suites):
            raise ConfigError(f"eval.suites={list(self.suites)} names a suite twice")
        if any(suites.get(name).uses_judges for name in self.suites) and not self.judges:
            raise ConfigError("eval.judges must name at least one judge for the suites that judge replies")
        for name in self.judges:
            judges.get(name)  # unknown names raise with close matches
        for option in self.judge_options:
            judge, dot, rest = option.partition(".")
            if not dot or "=" not in rest:
                raise ConfigError(f"eval.judge_options entry {option!r} must look like judge.field=value")
            if judge not in self.judges:
                raise ConfigError(f"eval.judge_options entry {option!r} is for judge {judge!r}, which is not in "
                                  f"judges ({', '.join(self.judges)})")
        for spec in (*self.harmful_sets, self.benign_set, self.task_set, self.ppl_set):
            check_set_name(spec)
        if self.split not in SPLITS:
            raise ConfigError(f"eval.split={self.split!r} must be one of {', '.join(SPLITS)}")
        if self.limit is not None:
            check_range("eval.limit", self.limit, 1, None)
        check_range("eval.ppl_max_tokens", self.ppl_max_tokens, 2, 32768)
        check_range("eval.n_boot", self.n_boot, 100, 1_000_000)
        if self.task_max_new_tokens is not None:
            check_range("eval.task_max_new_tokens", self.task_max_new_tokens, 1, 32768)
        check_range("eval.toxicity_samples", self.toxicity_samples, 1, 1000)
        if not isinstance(self.generation, GenerationConfig):
            raise ConfigError("eval.generation must be a GenerationConfig")

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Self:
        fields = dict(fields)
        if isinstance(fields.get("generation"), dict):
            gen = fields["generation"]
            fields["generation"] = (GenerationConfig.from_dict(gen) if "fields" in gen
                                    else GenerationConfig.from_fields(gen))
        return super().from_fields(fields)

    def with_overrides(self, overrides: list[str]) -> Self:
        """``field=value`` as in Config, plus ``generation.field=value`` for the nested settings."""
        nested = [o.partition(".")[2] for o in overrides if o.strip().startswith("generation.")]
        plain = [o for o in overrides if not o.strip().startswith("generation.")]
        updated = super().with_overrides(plain) if plain else self
        if nested:
            updated = updated.replace(generation=updated.generation.with_overrides(nested))
        return updated

    def options_for(self, judge: str) -> list[str]:
        return [o.partition(".")[2] for o in self.judge_options if o.partition(".")[0] == judge]


def check_set_name(spec: str) -> None:
    """Fail early (before a model loads) on a prompt set name that is neither registered, a path nor hf:."""
    name = parse_spec(spec, "eval")[0]
    if not name.startswith(HUB_PREFIX) and not looks_like_path(name) and not Path(name).expanduser().exists():
        datasets.get(name)


__all__ = ["EvalConfig", "check_set_name"]
