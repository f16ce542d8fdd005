"""Judges behind one protocol: ``make_judge(name, **options).judge(items) -> list[Verdict]``.

Registered: ``keyword`` (GCG refusal strings), ``llm`` (1–5 harmfulness rubric, local or
OpenAI-compatible), ``llamaguard`` (local Llama Guard checkpoint), ``guard`` (the compact guard
``deltaguard guard build`` makes), ``lexicon`` (offensive words, for the toxicity dimension). See ``deltaguard list judges``.
"""

from __future__ import annotations

from deltaguard.judges import keyword as _keyword  # noqa: F401  (registers "keyword")
from deltaguard.judges import guard as _guard  # noqa: F401  (registers "guard")
from deltaguard.judges import llamaguard as _llamaguard  # noqa: F401  (registers "llamaguard")
from deltaguard.judges import llm as _llm  # noqa: F401  (registers "llm")
from deltaguard.judges import lexicon as _lexicon  # noqa: F401  (registers "lexicon")
from deltaguard.judges.base import (
    JUDGE_ERROR, MEASURES, BaseJudge, Judge, JudgeItem, Verdict, judge_from_overrides, judges, make_judge,
)
from deltaguard.judges.check import Agreement, JudgeCheckResult, agreement, check_judge, default_task
from deltaguard.judges.keyword import GCG_REFUSAL_STRINGS, KeywordJudge, KeywordJudgeConfig
from deltaguard.judges.llamaguard import LlamaGuardConfig, LlamaGuardJudge, parse_guard_output
from deltaguard.judges.llm import LLMJudge, LLMJudgeConfig, parse_rubric_verdict

__all__ = [
    "GCG_REFUSAL_STRINGS", "JUDGE_ERROR", "MEASURES", "Agreement", "BaseJudge", "Judge", "JudgeCheckResult", "JudgeItem",
    "KeywordJudge", "KeywordJudgeConfig", "LLMJudge", "LLMJudgeConfig", "LlamaGuardConfig", "LlamaGuardJudge",
    "Verdict", "agreement", "check_judge", "default_task", "judge_from_overrides", "judges", "make_judge", "parse_guard_output",
    "parse_rubric_verdict",
]
