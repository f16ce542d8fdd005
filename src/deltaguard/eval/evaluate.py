"""``evaluate(model, config, out_dir=...)``: run the configured suites on one model and write its results.

The model is a ``Variant`` or anything ``Variant.of`` takes (a ``ModelSource`` or a model spec): its key
— the model's identity, not the name it was given — keys every cached generation, so evaluating a
model whose weights changed never reuses the old replies. The run directory holds
``generations/``, ``judgments/`` (the ``Runner``'s cache), ``results.json`` and ``summary.md``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from deltaguard.data import PromptSet, check_disjoint, load_prompts
from deltaguard.eval.config import EvalConfig
from deltaguard.eval.result import EvalResult, MetricRecord, summary_markdown
from deltaguard.eval.runner import Runner
from deltaguard.eval.suites import SuiteContext, suites
from deltaguard.eval.variants import ModelSource, Variant
from deltaguard.io import atomic_write, write_json
from deltaguard.judges import judge_from_overrides


def set_specs(config: EvalConfig) -> list[str]:
    """Every prompt-set spec the configured suites read, in order, once."""
    names: list[str] = []
    for name in config.suites:
        names += suites.get(name)().set_names(config)
    return list(dict.fromkeys(names))


def load_sets(config: EvalConfig) -> dict[str, PromptSet]:
    """The suites' prompt sets (evaluation split, seeded subset), refusing any overlap with ``disjoint_from``."""
    sets = {spec: load_prompts(spec, split=config.split, limit=config.limit, seed=config.seed)
            for spec in set_specs(config)}
    others = [load_prompts(spec, split="all") for spec in config.disjoint_from]
    for prompt_set in sets.values():
        check_disjoint(prompt_set, *others)
    return sets


def evaluate(model: Variant | ModelSource | str | Path, config: EvalConfig = EvalConfig(), *, out_dir: str | Path,
             runner: Runner | None = None, device: str = "cpu", dtype: str = "float32",
             progress: bool = True) -> EvalResult:
    """Run ``config.suites`` on ``model``; write ``results.json`` and ``summary.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    variant = Variant.of(model)
    sets = load_sets(config)          # before any model loads: bad names and leaked prompts fail fast
    uses_judges = any(suites.get(name).uses_judges for name in config.suites)
    judges = [judge_from_overrides(name, config.options_for(name)) for name in config.judges] if uses_judges else []
    runner = runner or Runner(out_dir, device=device, dtype=dtype, progress=progress)
    ctx = SuiteContext(runner=runner, variant=variant, config=config, judges=judges, sets=sets)
    metrics: list[MetricRecord] = []
    for name in config.suites:
        metrics += suites.get(name)().run(ctx)
    result = EvalResult(model_id=variant.key, model=variant.source.describe(), config=config, metrics=tuple(metrics),
                        datasets=tuple(s.describe() for s in sets.values()), out_dir=str(out_dir),
                        files={**runner.files, "results": "results.json", "summary": "summary.md"})
    write_json(out_dir / "results.json", {**result.to_dict(), "created": _now()})
    with atomic_write(out_dir / "summary.md") as handle:
        handle.write(summary_markdown(result))
    return result


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["evaluate", "load_sets", "set_specs"]
