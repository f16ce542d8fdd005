"""The suite interface and the ``suites`` registry.

A suite is one kind of measurement: it names the prompt sets it reads (from the ``EvalConfig``), gets
replies through the runner (cached, resumable), picks the judges that measure what it needs — by what
they measure, never by their name — and returns metric records. Adding one (a trust dimension, say) is
one file here plus one import line in ``suites/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from deltaguard.registry import Registry


@dataclass
class SuiteContext:
    """What a suite runs with: the runner, the variant, the settings, the judges and the loaded sets."""

    runner: Any            # eval.runner.Runner
    variant: Any           # eval.variants.Variant
    config: Any            # eval.config.EvalConfig
    judges: list[Any]      # judges.BaseJudge instances, in the order the config names them
    sets: dict[str, Any]   # set spec → PromptSet

    def judges_measuring(self, measure: str) -> list[Any]:
        """The judges whose verdicts fill ``measure`` (``refusal``, ``unsafe``, ``harm_score``, ...)."""
        return [judge for judge in self.judges if measure in judge.measures]


class Suite(ABC):
    """One kind of measurement over one variant."""

    name: ClassVar[str] = ""
    uses_judges: ClassVar[bool] = False   # whether it needs at least one judge

    @abstractmethod
    def set_names(self, config: Any) -> list[str]:
        """The prompt-set specs of ``config`` this suite reads (loaded once, checked for overlap)."""

    @abstractmethod
    def run(self, ctx: SuiteContext) -> list[Any]:
        """Metric records (``eval.result.MetricRecord``)."""


suites: Registry[type[Suite]] = Registry("suite")

__all__ = ["Suite", "SuiteContext", "suites"]
