"""How well a judge agrees with human labels (``deltaguard judge-check``).

Two tasks, both on labelled responses from the pinned pyrit wheel:
- ``refusal``: ``pyrit-refusal`` (refusal.csv + refusal_extra.csv); positive class = refusal.
- ``harm``: ``pyrit-harm`` (harm/*.csv, human harm 0–1 averaged over raters); positive class =
  unsafe, meaning a mean human score of at least 0.5, negative = every rater gave 0. The replies graded in
  between have no label (``data.wheel_sets.graded_harm_label``: the grades rate how severe a depiction is,
  not whether a policy is broken); they are judged, left out of the agreement, and the share the judge
  calls unsafe is reported beside it (``dataset["n_left_out_ambiguous"]``, ``["ambiguous_judged_positive"]``).

Verdicts that are ``judge_error`` are left out of the statistics and reported as ``n_errors``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from deltaguard.data import PromptSet, load_prompts
from deltaguard.data.base import group_of
from deltaguard.errors import ConfigError, JudgeError
from deltaguard.judges.base import BaseJudge, JudgeItem

TASKS = {"refusal": ("pyrit-refusal", "is_refusal", "refusal"), "harm": ("pyrit-harm", "is_unsafe", "unsafe")}


@dataclass(frozen=True)
class Confusion:
    """Counts with the human label as truth; positive = refusal (refusal task) or unsafe (harm task)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


@dataclass(frozen=True)
class Agreement:
    """Agreement statistics; precision/recall/F1 are 0 when their denominator is 0."""

    n: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    kappa: float
    confusion: Confusion


def agreement(human: list[bool], predicted: list[bool]) -> Agreement:
    """Accuracy, precision, recall, F1 and Cohen's kappa of ``predicted`` against ``human``."""
    if len(human) != len(predicted):
        raise ConfigError(f"{len(human)} human labels but {len(predicted)} predictions")
    if not human:
        raise JudgeError("no verdicts to compare with the human labels (every verdict was a judge_error?)")
    tp = sum(h and p for h, p in zip(human, predicted))
    fp = sum((not h) and p for h, p in zip(human, predicted))
    fn = sum(h and not p for h, p in zip(human, predicted))
    tn = len(human) - tp - fp - fn
    n = len(human)
    accuracy = (tp + tn) / n
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    kappa = 1.0 if expected == 1.0 else (accuracy - expected) / (1.0 - expected)
    return Agreement(n=n, accuracy=accuracy, precision=precision, recall=recall, f1=f1, kappa=kappa,
                     confusion=Confusion(tp=tp, fp=fp, fn=fn, tn=tn))


@dataclass(frozen=True)
class JudgeCheckResult:
    """A judge's agreement with humans on one task, with what produced it."""

    judge: str
    judge_version: str
    prompt_hash: str
    task: str
    dataset: dict[str, Any]
    n_errors: int
    agreement: Agreement

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "judge_version": self.judge_version, "prompt_hash": self.prompt_hash,
                "task": self.task, "dataset": self.dataset, "n_errors": self.n_errors,
                "agreement": asdict(self.agreement)}


def default_task(judge: BaseJudge) -> str:
    return "refusal" if "refusal" in judge.measures else "harm"


def check_judge(judge: BaseJudge, *, task: str | None = None, limit: int | None = None,
                seed: int = 0) -> JudgeCheckResult:
    """Run ``judge`` on human-labelled responses and measure agreement."""
    task = task or default_task(judge)
    if task not in TASKS:
        raise ConfigError(f"judge-check task {task!r} must be one of {', '.join(TASKS)}")
    set_name, label_key, measure = TASKS[task]
    if measure not in judge.measures:
        raise ConfigError(f"judge {judge.name!r} does not judge {measure} (it judges: {', '.join(judge.measures)}); "
                          f"choose another task or judge")
    prompts = load_prompts(set_name, split="eval", limit=limit, seed=seed)
    return check_on(judge, prompts, task=task)


def check_on(judge: BaseJudge, prompts: PromptSet, *, task: str) -> JudgeCheckResult:
    """Agreement on an already loaded labelled set (``meta`` holds ``response`` and the human label)."""
    _set_name, label_key, measure = TASKS[task]
    trained = judge.trained_groups()
    kept = list(prompts.prompts)
    if trained:
        kept = [p for p in kept if group_of(p.text) not in trained]
        if not kept:
            raise JudgeError(f"judge {judge.name!r} was trained on every prompt of {prompts.name}; nothing is left to check")
    items = [JudgeItem(prompt=p.text, response=p.meta["response"]) for p in kept]
    verdicts = judge.judge(items)
    human, predicted, n_errors = [], [], 0
    ambiguous: list[bool] = []   # the judge's verdicts on replies the humans' grades leave without a label
    for prompt, verdict in zip(kept, verdicts):
        value = verdict.is_refusal if measure == "refusal" else verdict.is_unsafe
        if verdict.is_error or value is None:
            n_errors += 1
            continue
        label = prompt.meta[label_key]
        if label is None:
            ambiguous.append(bool(value))
            continue
        human.append(bool(label))
        predicted.append(bool(value))
    dataset = {**prompts.describe(), "n_left_out_trained_on": len(prompts.prompts) - len(kept)}
    if ambiguous:
        dataset.update(n_left_out_ambiguous=len(ambiguous), ambiguous_judged_positive=sum(ambiguous))
    return JudgeCheckResult(judge=judge.name, judge_version=judge.version, prompt_hash=judge.prompt_hash, task=task,
                            dataset=dataset, n_errors=n_errors, agreement=agreement(human, predicted))
