"""What an evaluation returns: one ``MetricRecord`` per number, with everything that produced it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deltaguard.data import PromptSet
from deltaguard.environment import versions
from deltaguard.errors import ConfigError
from deltaguard.metrics import Rate, Score


@dataclass(frozen=True)
class MetricRecord:
    """One number with everything that produced it: metric, prompt set (and content hash), judge."""

    metric: str
    dataset: str
    split: str
    content_hash: str
    judge: str | None
    judge_version: str | None
    prompt_hash: str | None
    result: Rate | Score

    @property
    def value(self) -> float:
        return self.result.value

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "dataset": self.dataset, "split": self.split,
                "content_hash": self.content_hash, "judge": self.judge, "judge_version": self.judge_version,
                "prompt_hash": self.prompt_hash, **self.result.to_dict()}


def record(metric: str, prompts: PromptSet, judge: Any, result: Rate | Score) -> MetricRecord:
    """A record of ``result`` on ``prompts`` (``judge`` None for judge-free metrics)."""
    return MetricRecord(metric=metric, dataset=prompts.name, split=prompts.split, content_hash=prompts.content_hash,
                        judge=judge.name if judge else None, judge_version=judge.version if judge else None,
                        prompt_hash=judge.prompt_hash if judge else None, result=result)


@dataclass(frozen=True)
class EvalResult:
    """Every metric of one evaluation and where its files are."""

    model_id: str
    model: dict[str, Any]
    config: Any  # EvalConfig
    metrics: tuple[MetricRecord, ...]
    datasets: tuple[dict[str, Any], ...]
    out_dir: str
    files: dict[str, str]

    def get(self, metric: str, *, dataset: str | None = None, judge: str | None = None) -> MetricRecord:
        """The single record matching ``metric`` (and dataset/judge when given)."""
        found = [m for m in self.metrics if m.metric == metric and dataset in (None, m.dataset)
                 and judge in (None, m.judge)]
        if len(found) != 1:
            raise ConfigError(f"{len(found)} results match metric={metric!r} dataset={dataset!r} judge={judge!r}")
        return found[0]

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model": self.model, "config": self.config.to_dict(),
                "datasets": list(self.datasets), "metrics": [m.to_dict() for m in self.metrics],
                "out_dir": self.out_dir, "files": self.files, "versions": versions()}


def summary_markdown(result: EvalResult) -> str:
    """A Markdown table of every metric with its interval, n and judge errors."""
    lines = [f"# Evaluation of `{result.model.get('spec', result.model_id)}`", "",
             f"Model key `{result.model_id}`.", "",
             "| metric | dataset | judge | value | 95% CI | n | judge errors |",
             "|---|---|---|---|---|---|---|"]
    for m in result.metrics:
        r = m.result
        is_rate = isinstance(r, Rate)
        fmt = (lambda x: "n/a" if x != x else f"{x:.1%}") if is_rate else (lambda x: "n/a" if x != x else f"{x:.3g}")
        ci = "n/a" if r.low != r.low else f"{fmt(r.low)} – {fmt(r.high)}"
        judge = f"{m.judge} v{m.judge_version}" if m.judge else "-"
        lines.append(f"| {m.metric} | {m.dataset}:{m.split} | {judge} | {fmt(r.value)} | {ci} | {r.n} | "
                     f"{r.n_errors} |")
    lines += ["", "Sets: " + "; ".join(f"{d['name']}:{d['split']} n={d['n']} ({d['source']}, {d['content_hash']})"
                                       for d in result.datasets),
              f"Generation: {result.config.generation.to_dict()['fields']}", ""]
    return "\n".join(lines)


__all__ = ["EvalResult", "MetricRecord", "record", "summary_markdown"]
