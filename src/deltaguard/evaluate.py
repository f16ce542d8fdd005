"""Evaluate one model on the safety and utility suites: ``evaluate(model, tokenizer, config, ...)``.

Suites:
- ``safety``: responses to each harmful set (default AdvBench, eval split) judged by every judge →
  refusal rate, keyword ASR (not refused), judge ASR (judged unsafe), harmfulness score and rate
  (rubric judges); responses to benign prompts → over-refusal.
- ``utility``: exact-answer accuracy on the arithmetic task; perplexity on held-out benign text.

The run directory holds ``generations/<key>.jsonl``, ``judgments/<key>.jsonl``, ``results.json`` and
``summary.md``. Keys are ``content_key`` hashes of the model id, the prompts' content hash and the
settings, so a rerun reuses finished files and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import datetime
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from deltaguard.config import Config, check_range
from deltaguard.data import HUB_PREFIX, SPLITS, PromptSet, check_disjoint, datasets, load_prompts, parse_spec
from deltaguard.data.local import looks_like_path
from deltaguard.errors import ConfigError, FormatError
from deltaguard.generation import GenerationConfig, generate_to_jsonl
from deltaguard.io import atomic_write, content_key, read_jsonl, write_json, write_jsonl
from deltaguard.judges import BaseJudge, JudgeItem, Verdict, judge_from_overrides, judges
from deltaguard.metrics import (
    Rate, Score, attack_success_rate, harmfulness_rate, harmfulness_score, over_refusal, perplexity,
    refusal_rate, task_accuracy,
)

SUITES = ("safety", "utility")
JUDGE_CHUNK = 32


@dataclass(frozen=True, kw_only=True)
class EvalConfig(Config):
    """What to measure and how.

    Args:
        suites: "safety" and/or "utility".
        judges: judge names for the safety suite (see ``deltaguard list judges``).
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
    """

    name: ClassVar[str] = "eval"
    version: ClassVar[int] = 1
    suites: tuple[str, ...] = SUITES
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

    def __post_init__(self) -> None:
        if not self.suites or any(s not in SUITES for s in self.suites):
            raise ConfigError(f"eval.suites={list(self.suites)} must be a non-empty subset of {', '.join(SUITES)}")
        if "safety" in self.suites and not self.judges:
            raise ConfigError("eval.judges must name at least one judge for the safety suite")
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


@dataclass(frozen=True)
class MetricRecord:
    """One number with everything that produced it."""

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


@dataclass(frozen=True)
class EvalResult:
    """Every metric of one evaluation and where its files are."""

    model_id: str
    config: EvalConfig
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
        return {"model_id": self.model_id, "config": self.config.to_dict(), "datasets": list(self.datasets),
                "metrics": [m.to_dict() for m in self.metrics], "out_dir": self.out_dir, "files": self.files,
                "versions": _versions()}


def evaluate(model: Any, tokenizer: Any, config: EvalConfig, *, out_dir: str | Path, model_id: str) -> EvalResult:
    """Run the configured suites on ``model`` and write generations, judgments, results and a summary."""
    out_dir = Path(out_dir)
    if not model_id:
        raise ConfigError("evaluate needs a non-empty model_id (it keys the cached generations)")
    sets = _load_sets(config)
    _check_disjoint(config, sets)
    run_judges = [judge_from_overrides(name, config.options_for(name)) for name in config.judges] \
        if "safety" in config.suites else []
    runner = _Runner(model, tokenizer, config, out_dir, model_id)
    metrics: list[MetricRecord] = []
    if "safety" in config.suites:
        for set_name in config.harmful_sets:
            prompts = sets[set_name]
            rows = runner.generations(prompts)
            for judge in run_judges:
                verdicts = runner.judgments(prompts, rows, judge)
                metrics.extend(_safety_metrics(prompts, judge, verdicts, config))
        benign = sets[config.benign_set]
        rows = runner.generations(benign)
        for judge in run_judges:
            if "refusal" in judge.measures:
                verdicts = runner.judgments(benign, rows, judge)
                metrics.append(_record("over_refusal", benign, judge,
                                       over_refusal(verdicts, n_boot=config.n_boot, seed=config.seed)))
    if "utility" in config.suites:
        task = sets[config.task_set]
        if any("answer" not in p.meta for p in task.prompts):
            raise FormatError(f"task set {task.name} has prompts without meta['answer']; it cannot be scored")
        rows = runner.generations(task)
        accuracy = task_accuracy([r["response"] for r in rows], [p.meta["answer"] for p in task.prompts],
                                 n_boot=config.n_boot, seed=config.seed)
        metrics.append(_record("task_accuracy", task, None, accuracy))
        ppl = sets[config.ppl_set]
        metrics.append(_record("perplexity", ppl, None,
                               perplexity(model, tokenizer, ppl.texts, batch_size=config.generation.batch_size,
                                          max_tokens=config.ppl_max_tokens, n_boot=config.n_boot, seed=config.seed)))
    used = _used_sets(config)
    result = EvalResult(model_id=model_id, config=config, metrics=tuple(metrics),
                        datasets=tuple(sets[name].describe() for name in used), out_dir=str(out_dir),
                        files={**runner.files, "results": "results.json", "summary": "summary.md"})
    write_json(out_dir / "results.json", {**result.to_dict(), "created": _now()})
    with atomic_write(out_dir / "summary.md") as handle:
        handle.write(summary_markdown(result))
    return result


def _used_sets(config: EvalConfig) -> list[str]:
    names: list[str] = []
    if "safety" in config.suites:
        names += [*config.harmful_sets, config.benign_set]
    if "utility" in config.suites:
        names += [config.task_set, config.ppl_set]
    return list(dict.fromkeys(names))


def _load_sets(config: EvalConfig) -> dict[str, PromptSet]:
    return {name: load_prompts(name, split=config.split, limit=config.limit, seed=config.seed)
            for name in _used_sets(config)}


def _check_disjoint(config: EvalConfig, sets: dict[str, PromptSet]) -> None:
    others = [load_prompts(spec, split="all") for spec in config.disjoint_from]
    for prompt_set in sets.values():
        check_disjoint(prompt_set, *others)


class _Runner:
    """Cached generation and judging inside one run directory."""

    def __init__(self, model: Any, tokenizer: Any, config: EvalConfig, out_dir: Path, model_id: str) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.out_dir, self.model_id = out_dir, model_id
        self.files: dict[str, str] = {}
        self._gen_keys: dict[str, str] = {}

    def generations(self, prompts: PromptSet) -> list[dict[str, Any]]:
        key = content_key("gen", {"model_id": self.model_id, "prompts": prompts.describe(),
                                  "generation": self.config.generation.to_dict()})
        self._gen_keys[prompts.name] = key
        path = self.out_dir / "generations" / f"{key}.jsonl"
        self.files[f"generations/{prompts.name}"] = str(path.relative_to(self.out_dir))
        return generate_to_jsonl(self.model, self.tokenizer, prompts, self.config.generation, path=path,
                                 model_id=self.model_id)

    def judgments(self, prompts: PromptSet, rows: list[dict[str, Any]], judge: BaseJudge) -> list[Verdict]:
        key = content_key("judge", {"generations": self._gen_keys[prompts.name], "judge": judge.name,
                                    "judge_version": judge.version, "prompt_hash": judge.prompt_hash})
        path = self.out_dir / "judgments" / f"{key}.jsonl"
        self.files[f"judgments/{prompts.name}/{judge.name}"] = str(path.relative_to(self.out_dir))
        done: dict[str, dict[str, Any]] = {}
        if path.exists():
            done = {row["prompt_id"]: row for row in read_jsonl(path, what="judgments file")}
        todo = [row for row in rows if row["prompt_id"] not in done]
        for start in range(0, len(todo), JUDGE_CHUNK):
            chunk = todo[start:start + JUDGE_CHUNK]
            verdicts = judge.judge([JudgeItem(prompt=r["prompt"], response=r["response"]) for r in chunk])
            for row, verdict in zip(chunk, verdicts, strict=True):
                done[row["prompt_id"]] = {"prompt_id": row["prompt_id"], **verdict.to_dict()}
            write_jsonl(path, [done[r["prompt_id"]] for r in rows if r["prompt_id"] in done])
        return [Verdict.from_dict(done[r["prompt_id"]]) for r in rows]


def _record(metric: str, prompts: PromptSet, judge: BaseJudge | None, result: Rate | Score) -> MetricRecord:
    return MetricRecord(metric=metric, dataset=prompts.name, split=prompts.split, content_hash=prompts.content_hash,
                        judge=judge.name if judge else None, judge_version=judge.version if judge else None,
                        prompt_hash=judge.prompt_hash if judge else None, result=result)


def _safety_metrics(prompts: PromptSet, judge: BaseJudge, verdicts: list[Verdict],
                    config: EvalConfig) -> list[MetricRecord]:
    kw = {"n_boot": config.n_boot, "seed": config.seed}
    records = []
    if "refusal" in judge.measures:
        records.append(_record("refusal_rate", prompts, judge, refusal_rate(verdicts, **kw)))
        if judge.name == "keyword":  # keyword ASR: the response contains no refusal string
            records.append(_record("asr_keyword", prompts, judge, attack_success_rate(verdicts, by="refusal", **kw)))
    if "unsafe" in judge.measures:
        records.append(_record("asr_judge", prompts, judge, attack_success_rate(verdicts, by="unsafe", **kw)))
    if "score" in judge.measures and judge.name != "llamaguard":
        records.append(_record("harmfulness_score", prompts, judge, harmfulness_score(verdicts, **kw)))
        records.append(_record("harmfulness_rate", prompts, judge, harmfulness_rate(verdicts, **kw)))
    return records


def summary_markdown(result: EvalResult) -> str:
    """A Markdown table of every metric with its interval, n and judge errors."""
    lines = [f"# Evaluation of `{result.model_id}`", "",
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


def _versions() -> dict[str, str]:
    out = {}
    for package in ("deltaguard", "torch", "transformers"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["EvalConfig", "EvalResult", "MetricRecord", "evaluate", "summary_markdown"]
