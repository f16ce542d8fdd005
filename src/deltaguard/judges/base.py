"""The judge protocol, verdicts, the ``judges`` registry and ``make_judge``.

A judge turns (prompt, response) items into verdicts, one per item, same order. Every verdict records
the judge's name and version and ``prompt_hash``: a hash of everything that defines the judge's
behaviour besides its code (the rubric or prompt template, the keyword list, the backend model), so
two numbers are comparable only when these match. A judge that cannot read one answer returns a
verdict with ``label="judge_error"`` and ``error`` set; metrics count those separately and never as
an attack success or a refusal. A judge that cannot work at all raises ``JudgeError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from deltaguard.config import Config
from deltaguard.errors import ConfigError
from deltaguard.io import canonical_json
from deltaguard.registry import Registry

JUDGE_ERROR = "judge_error"
# What a judge's verdicts can fill; suites pick judges by these, never by name.
MEASURES = {
    "refusal": "is_refusal: the reply refuses",
    "unsafe": "is_unsafe: the reply is harmful / does what the harmful request asked",
    "harm_score": "score: a 1-5 harmfulness rubric score",
    "unsafe_probability": "score: the judge's probability that the reply is unsafe",
    "toxic": "score: 1.0 when the reply adds offensive language to its prompt, else 0.0",
}


@dataclass(frozen=True)
class JudgeItem:
    """What a judge looks at: the user's prompt and the model's response."""

    prompt: str
    response: str


@dataclass(frozen=True)
class Verdict:
    """One judgment. ``score``: 1–5 harmfulness (llm), P(unsafe) (llamaguard) or None (keyword).

    ``categories`` lists hazard categories when the judge names them (Llama Guard ``S1``…``S14``);
    ``raw`` keeps the judge's own text for auditing.
    """

    judge: str
    judge_version: str
    prompt_hash: str
    label: str
    is_refusal: bool | None
    is_unsafe: bool | None
    score: float | None
    error: str | None = None
    categories: tuple[str, ...] = ()
    raw: str | None = None

    @property
    def is_error(self) -> bool:
        return self.label == JUDGE_ERROR

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "judge_version": self.judge_version, "prompt_hash": self.prompt_hash,
                "label": self.label, "is_refusal": self.is_refusal, "is_unsafe": self.is_unsafe, "score": self.score,
                "error": self.error, "categories": list(self.categories), "raw": self.raw}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Verdict":
        return cls(judge=row["judge"], judge_version=row["judge_version"], prompt_hash=row["prompt_hash"],
                   label=row["label"], is_refusal=row.get("is_refusal"), is_unsafe=row.get("is_unsafe"),
                   score=row.get("score"), error=row.get("error"), categories=tuple(row.get("categories") or ()),
                   raw=row.get("raw"))


@runtime_checkable
class Judge(Protocol):
    """``judge(items)`` returns one verdict per item, in order."""

    name: str
    version: str
    config: Config

    @property
    def prompt_hash(self) -> str: ...

    def judge(self, items: list[JudgeItem]) -> list[Verdict]: ...


class BaseJudge(ABC):
    """Shared plumbing: a config, ``prompt_hash`` over what defines the judge, error verdicts."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    config_cls: ClassVar[type[Config]]
    measures: ClassVar[tuple[str, ...]] = ()  # which of MEASURES its verdicts fill

    def __init__(self, config: Config) -> None:
        self.config = config

    def identity(self) -> dict[str, Any]:
        """Everything besides code that decides the verdicts (hashed into ``prompt_hash``)."""
        return {"config": self.config.to_dict()}

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()[:12]

    def verdict(self, label: str, *, is_refusal: bool | None = None, is_unsafe: bool | None = None,
                score: float | None = None, categories: tuple[str, ...] = (), raw: str | None = None) -> Verdict:
        return Verdict(judge=self.name, judge_version=self.version, prompt_hash=self.prompt_hash, label=label,
                       is_refusal=is_refusal, is_unsafe=is_unsafe, score=score, categories=categories, raw=raw)

    def error_verdict(self, error: str, *, raw: str | None = None) -> Verdict:
        return Verdict(judge=self.name, judge_version=self.version, prompt_hash=self.prompt_hash, label=JUDGE_ERROR,
                       is_refusal=None, is_unsafe=None, score=None, error=error, raw=raw)

    def check_ready(self) -> None:
        """Raise the one-line error now if the judge cannot work as configured (e.g. its artifact is missing),
        so a server refuses a policy at startup rather than failing every request. Cheap: loads no model.
        Judges without such a precondition check nothing."""

    def trained_groups(self) -> frozenset[str]:
        """Prompt groups (``data.base.group_of``) the judge was trained or tuned on: a check against human
        labels must leave them out. Hand-written judges were trained on nothing."""
        return frozenset()

    @abstractmethod
    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """One verdict per item, same length and order."""


judges: Registry[type[BaseJudge]] = Registry("judge")


def make_judge(name: str, **options: Any) -> BaseJudge:
    """Build a registered judge; ``options`` are its config fields (unknown ones raise ConfigError)."""
    judge_cls = judges.get(name)
    config = judge_cls.config_cls.from_fields(options)
    return judge_cls(config)


def judge_from_overrides(name: str, overrides: list[str]) -> BaseJudge:
    """Build a judge from ``field=value`` strings (typed like ``--set``)."""
    judge_cls = judges.get(name)
    return judge_cls(judge_cls.config_cls().with_overrides(overrides))


def check_items(items: list[JudgeItem]) -> None:
    if not all(isinstance(i, JudgeItem) for i in items):
        raise ConfigError("judge items must be JudgeItem(prompt, response) objects")
