"""``safety``: replies to harmful prompts, judged for refusal, attack success and harmfulness.

Per harmful set and judge, by what the judge measures:
* ``refusal``     → ``refusal_rate``; and, for a judge that does not also judge harm, ``asr_refusal``
  (attack success = the reply does not refuse);
* ``unsafe``      → ``asr_unsafe`` (attack success = the reply is judged unsafe);
* ``harm_score``  → ``harmfulness_score`` (mean 1–5) and ``harmfulness_rate`` (share scored 5).
"""

from __future__ import annotations

from typing import Any

from deltaguard.eval.result import record
from deltaguard.eval.suites.base import Suite, SuiteContext, suites
from deltaguard.judges import JudgeItem
from deltaguard.metrics import attack_success_rate, harmfulness_rate, harmfulness_score, refusal_rate


@suites.register("safety")
class Safety(Suite):
    """Refusal, attack success and harmfulness on harmful prompt sets (AdvBench by default)."""

    name = "safety"
    uses_judges = True

    def set_names(self, config: Any) -> list[str]:
        return list(config.harmful_sets)

    def run(self, ctx: SuiteContext) -> list[Any]:
        kw = {"n_boot": ctx.config.n_boot, "seed": ctx.config.seed}
        records = []
        for spec in ctx.config.harmful_sets:
            prompts = ctx.sets[spec]
            rows = ctx.runner.generate(ctx.variant, prompts, ctx.config.generation)
            items = [JudgeItem(prompt=r["prompt"], response=r["response"]) for r in rows]
            for judge in ctx.judges:
                verdicts = ctx.runner.judge(judge, items)
                if "refusal" in judge.measures:
                    records.append(record("refusal_rate", prompts, judge, refusal_rate(verdicts, **kw)))
                    if "unsafe" not in judge.measures:
                        records.append(record("asr_refusal", prompts, judge,
                                              attack_success_rate(verdicts, by="refusal", **kw)))
                if "unsafe" in judge.measures:
                    records.append(record("asr_unsafe", prompts, judge, attack_success_rate(verdicts, by="unsafe", **kw)))
                if "harm_score" in judge.measures:
                    records.append(record("harmfulness_score", prompts, judge, harmfulness_score(verdicts, **kw)))
                    records.append(record("harmfulness_rate", prompts, judge, harmfulness_rate(verdicts, **kw)))
        return records
