"""Optional per-tenant moderation: a judge from ``deltaguard.judges`` screens prompts and/or responses.

A policy names a judge (``keyword``, ``llm``, ``llamaguard``, ``guard``, with its options), what it screens and
what happens when it fires: ``block`` (the request is refused, or the response withheld) or ``flag``
(it goes through and is marked in the response, the logs and the metrics). The text screened goes
where the judge looks — the response field of a ``JudgeItem`` — with the user's prompt as context; a
judge that can classify a request on its own (``judge_prompts``, e.g. the ``guard``) screens prompts that
way instead.

Which verdict field fires (``trigger``): ``unsafe`` (``is_unsafe``; llm and llamaguard judges),
``refusal`` (``is_refusal``; with the keyword judge and your own ``strings`` this is a keyword
blocklist) or ``score`` (``score >= threshold``); ``auto`` picks the first the judge measures in the
order unsafe, refusal. A verdict the judge could not produce counts as fired unless
``on_judge_error="allow"`` (fail closed by default).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from deltaguard.config import Config, check_choice
from deltaguard.errors import ConfigError
from deltaguard.io import canonical_json

Stage = Literal["prompt", "response"]


@dataclass(frozen=True, kw_only=True)
class ModerationConfig(Config):
    """A tenant's moderation policy.

    Args:
        judge: registered judge name (see ``deltaguard list judges``).
        judge_options: the judge's config fields (e.g. ``{"strings": ["bomb"]}`` for keyword).
        screen: what is screened: ``prompt``, ``response`` or both.
        action: ``block`` refuses the request / withholds the response; ``flag`` lets it through, marked.
        trigger: verdict field that fires: ``auto``, ``unsafe``, ``refusal`` or ``score``.
        threshold: for ``trigger="score"``: fire when ``score >= threshold``.
        on_judge_error: ``block`` (treat as fired, default) or ``allow``.
        message: what a blocked caller is told.
    """

    name: ClassVar[str] = "moderation"
    version: ClassVar[int] = 1
    judge: str = "keyword"
    judge_options: dict[str, Any] | None = None
    screen: tuple[str, ...] = ("prompt",)
    action: Literal["block", "flag"] = "block"
    trigger: Literal["auto", "unsafe", "refusal", "score"] = "auto"
    threshold: float | None = None
    on_judge_error: Literal["block", "allow"] = "block"
    message: str = "The request was blocked by this model's content policy."

    def __post_init__(self) -> None:
        if not self.screen:
            raise ConfigError("moderation.screen must name prompt, response or both")
        for stage in self.screen:
            check_choice("moderation.screen", stage, ("prompt", "response"))
        check_choice("moderation.action", self.action, ("block", "flag"))
        check_choice("moderation.trigger", self.trigger, ("auto", "unsafe", "refusal", "score"))
        check_choice("moderation.on_judge_error", self.on_judge_error, ("block", "allow"))
        if self.trigger == "score" and self.threshold is None:
            raise ConfigError("moderation.trigger=score needs moderation.threshold")
        if self.judge_options is not None and not isinstance(self.judge_options, dict):
            raise ConfigError("moderation.judge_options must be a mapping of judge option → value")


@dataclass(frozen=True)
class Decision:
    """The outcome of one screening."""

    stage: str
    is_fired: bool
    action: str            # "allow" | "block" | "flag"
    judge: str
    label: str
    error: str | None = None

    @property
    def is_blocked(self) -> bool:
        return self.action == "block"

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "action": self.action, "judge": self.judge, "label": self.label}


class Moderator:
    """Applies one policy with one (shared, lock-guarded) judge instance."""

    def __init__(self, config: ModerationConfig, judge: Any, lock: threading.Lock) -> None:
        self.config, self.judge, self._lock = config, judge, lock
        check_ready = getattr(judge, "check_ready", None)
        if check_ready is not None:   # a policy whose judge cannot work is refused now, not on every request
            check_ready()
        measures = tuple(getattr(type(judge), "measures", ()) or ())
        trigger = config.trigger
        if trigger == "auto":
            trigger = "unsafe" if "unsafe" in measures else "refusal" if "refusal" in measures else ""
            if not trigger:
                raise ConfigError(f"moderation: judge {config.judge!r} measures {measures}; set moderation.trigger")
        self.trigger = trigger

    def screens(self, stage: Stage) -> bool:
        return stage in self.config.screen

    def screen(self, stage: Stage, prompt: str, response: str | None = None) -> Decision:
        """Judge ``prompt`` (stage ``prompt``) or ``response`` to ``prompt`` (stage ``response``)."""
        from deltaguard.judges import JudgeItem

        text = prompt if stage == "prompt" else (response or "")
        with self._lock:
            if stage == "prompt" and hasattr(self.judge, "judge_prompts"):
                verdict = self.judge.judge_prompts([prompt])[0]  # a judge that classifies a request on its own
            else:
                verdict = self.judge.judge([JudgeItem(prompt=prompt, response=text)])[0]
        error = getattr(verdict, "error", None)
        if error is not None or verdict.label == "judge_error":
            fired = self.config.on_judge_error == "block"
        elif self.trigger == "unsafe":
            fired = verdict.is_unsafe is True
        elif self.trigger == "refusal":
            fired = verdict.is_refusal is True
        else:
            fired = verdict.score is not None and self.config.threshold is not None and verdict.score >= self.config.threshold
        action = self.config.action if fired else "allow"
        return Decision(stage, fired, action, verdict.judge, verdict.label, error)


class ModeratorPool:
    """Builds moderators, sharing one judge instance per distinct judge configuration."""

    def __init__(self) -> None:
        self._judges: dict[str, tuple[Any, threading.Lock]] = {}
        self._lock = threading.Lock()

    def moderator(self, config: ModerationConfig, *, judge: Any = None) -> Moderator:
        """A moderator for ``config``; ``judge`` overrides the registry (tests, preloaded guards)."""
        if judge is not None:
            return Moderator(config, judge, threading.Lock())
        from deltaguard.judges import make_judge

        key = canonical_json({"judge": config.judge, "options": config.judge_options or {}})
        with self._lock:
            if key not in self._judges:
                self._judges[key] = (make_judge(config.judge, **(config.judge_options or {})), threading.Lock())
            instance, lock = self._judges[key]
        return Moderator(config, instance, lock)
