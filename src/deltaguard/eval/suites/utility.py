"""``utility``: exact-answer task accuracy and held-out perplexity (no judge needed).

Perplexity reads the model's logits, so a model behind an endpoint (``variant.source.has_weights`` False)
gets task accuracy only, and a one-line note in the log says perplexity was skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from deltaguard.errors import FormatError
from deltaguard.eval.result import record
from deltaguard.eval.suites.base import Suite, SuiteContext, suites
from deltaguard.metrics import perplexity, task_accuracy

log = logging.getLogger("deltaguard.eval")


@suites.register("utility")
class Utility(Suite):
    """Task accuracy (word problems) and perplexity on benign text."""

    name = "utility"

    def set_names(self, config: Any) -> list[str]:
        return [config.task_set, config.ppl_set]

    def run(self, ctx: SuiteContext) -> list[Any]:
        config = ctx.config
        task = ctx.sets[config.task_set]
        if any("answer" not in p.meta for p in task.prompts):
            raise FormatError(f"task set {task.name} has prompts without meta['answer']; it cannot be scored")
        generation = config.generation
        if config.task_max_new_tokens is not None:
            generation = generation.replace(max_new_tokens=config.task_max_new_tokens)
        responses = [r["response"] for r in ctx.runner.generate(ctx.variant, task, generation)]
        accuracy = task_accuracy(responses, [p.meta["answer"] for p in task.prompts], n_boot=config.n_boot,
                                 seed=config.seed)
        text = ctx.sets[config.ppl_set]
        if not ctx.variant.source.has_weights:
            log.warning("utility: %s is behind an endpoint; perplexity needs the model's logits and is not "
                        "measured (task accuracy only)", ctx.variant.label)
            return [record("task_accuracy", task, None, accuracy)]
        model, tokenizer = ctx.runner.model(ctx.variant)
        ppl = perplexity(model, tokenizer, text.texts, batch_size=config.generation.batch_size,
                         max_tokens=config.ppl_max_tokens, n_boot=config.n_boot, seed=config.seed)
        return [record("task_accuracy", task, None, accuracy), record("perplexity", text, None, ppl)]
