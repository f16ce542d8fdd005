"""``over-refusal``: how often benign instructions are refused, by every judge that judges refusal."""

from __future__ import annotations

from typing import Any

from deltaguard.eval.result import record
from deltaguard.eval.suites.base import Suite, SuiteContext, suites
from deltaguard.judges import JudgeItem
from deltaguard.metrics import over_refusal


@suites.register("over-refusal")
class OverRefusal(Suite):
    """Refusal rate on benign instructions (lower is better)."""

    name = "over-refusal"
    uses_judges = True

    def set_names(self, config: Any) -> list[str]:
        return [config.benign_set]

    def run(self, ctx: SuiteContext) -> list[Any]:
        judges = ctx.judges_measuring("refusal")
        if not judges:
            return []
        prompts = ctx.sets[ctx.config.benign_set]
        rows = ctx.runner.generate(ctx.variant, prompts, ctx.config.generation)
        items = [JudgeItem(prompt=r["prompt"], response=r["response"]) for r in rows]
        return [record("over_refusal", prompts, judge,
                       over_refusal(ctx.runner.judge(judge, items), n_boot=ctx.config.n_boot, seed=ctx.config.seed))
                for judge in judges]
