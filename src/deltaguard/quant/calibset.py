"""Calibration prompts for safety-aware quantization, and the check that they never touch an evaluation.

Harmful calibration prompts come from the ``calib`` split of the harmful sets (AdvBench and the three
Do-Not-Answer risk areas that are requests for harm); benign ones from the ``calib`` split of the benign
sets. The ``calib`` split is disjoint by construction from each set's ``train`` (attacks) and ``eval``
splits, and ``check_not_evaluated`` re-checks by normalised text against the evaluation split of *every*
registered set, so a prompt that two sets share cannot leak either. Q-realign's public code calibrates on
the AdvBench prompts it then evaluates; this module refuses to.

The paper's 150 harmful prompts do not exist in these calib splits (56 AdvBench + 73 harmful
Do-Not-Answer = 129), so the default draws 120 harmful and 40 benign: the paper's 3:1 mix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

from deltaguard.data.base import Prompt, normalise_text
from deltaguard.errors import ConfigError

HARMFUL_DNA_AREAS = ("information_hazard", "malicious_uses", "discrimination_exclusion_toxicity_hateful_offensive")


@dataclass(frozen=True)
class CalibrationPrompts:
    harmful: tuple[Prompt, ...]
    benign: tuple[Prompt, ...]

    def describe(self) -> dict[str, object]:
        from deltaguard.io import content_key

        return {"n_harmful": len(self.harmful), "n_benign": len(self.benign),
                "harmful_hash": content_key("prompts", [p.text for p in self.harmful]),
                "benign_hash": content_key("prompts", [p.text for p in self.benign])}


def _calib_pool(name: str) -> list[Prompt]:
    from deltaguard.data import load_prompts

    prompts = list(load_prompts(name, split="calib").prompts)
    if name == "donotanswer":   # the other two areas are ordinary questions, not requests for harm
        prompts = [p for p in prompts if p.meta.get("category") in HARMFUL_DNA_AREAS]
    return prompts


def _draw(sets: Sequence[str], n: int, seed: int, what: str) -> tuple[Prompt, ...]:
    import random

    evaluated = evaluation_texts()   # a calib prompt that another set evaluates is left out
    pool = [p for name in sets for p in _calib_pool(name) if normalise_text(p.text) not in evaluated]
    if len(pool) < n:
        raise ConfigError(f"{what}: asked for {n} calibration prompts but the calib splits of "
                          f"{', '.join(sets)} hold {len(pool)} that no set evaluates")
    chosen = sorted(random.Random(f"{seed}:{what}").sample(range(len(pool)), n))
    return tuple(pool[i] for i in chosen)


def calibration_prompts(*, harmful_sets: Sequence[str], benign_sets: Sequence[str], n_harmful: int, n_benign: int,
                        seed: int = 0) -> CalibrationPrompts:
    """Seeded draws from the calib splits, checked against every evaluation split."""
    chosen = CalibrationPrompts(_draw(harmful_sets, n_harmful, seed, "harmful") if n_harmful else (),
                                _draw(benign_sets, n_benign, seed, "benign") if n_benign else ())
    check_not_evaluated([*chosen.harmful, *chosen.benign])
    return chosen


def evaluation_texts() -> dict[str, str]:
    """normalised text → ``set:id`` for the eval split of every registered prompt set."""
    return dict(_evaluation_texts())


@functools.lru_cache(maxsize=1)
def _evaluation_texts() -> tuple[tuple[str, str], ...]:
    from deltaguard.data import datasets, load_prompts

    texts: dict[str, str] = {}
    for name in datasets.names():
        if "eval" not in datasets.get(name)().splits:
            continue
        for p in load_prompts(name, split="eval").prompts:
            texts.setdefault(normalise_text(p.text), f"{name}:{p.id}")
    return tuple(texts.items())


def check_not_evaluated(prompts: Sequence[Prompt], extra: Sequence[Prompt] = ()) -> None:
    """ConfigError if a calibration prompt is an evaluation prompt of any registered set (or of ``extra``)."""
    evaluated = evaluation_texts()
    evaluated.update({normalise_text(p.text): p.id for p in extra})
    clashes = [(p.id, evaluated[normalise_text(p.text)]) for p in prompts if normalise_text(p.text) in evaluated]
    if clashes:
        shown = ", ".join(f"{a} = {b}" for a, b in clashes[:3])
        raise ConfigError(f"{len(clashes)} calibration prompt(s) are evaluation prompts ({shown}); "
                          "calibration and evaluation must be disjoint")


__all__ = ["CalibrationPrompts", "HARMFUL_DNA_AREAS", "calibration_prompts", "check_not_evaluated", "evaluation_texts"]
