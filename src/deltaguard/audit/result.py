"""The audit's table: one row per evaluated model, intervals, and the rich/JSON views of it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltaguard.audit.config import AuditConfig
from deltaguard.metrics import Interval
from deltaguard.threats.base import ThreatScore


@dataclass(frozen=True)
class ModelRow:
    """One evaluated model of the audit: the base, the fine-tune or a compressed variant."""

    label: str  # "base", "finetuned" or the method spec
    role: str  # "base", "finetuned" or "compressed"
    model_key: str
    score: ThreatScore
    flags: dict[str, tuple[bool, ...]]  # per-prompt outcomes behind "attack" and "utility"
    compression: dict[str, Any] = field(default_factory=dict)  # bits/param, ratios, method config
    mitigation: Interval | None = None  # relative %, vs the fine-tune, reference = base
    mitigation_points: Interval | None = None
    utility_drop: Interval | None = None  # relative % vs the fine-tune
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    harm_mitigation: Interval | None = None  # relative %, as ``mitigation`` but on the harm judge's verdicts

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "role": self.role, "model_key": self.model_key,
            "rates": {name: _rate_dict(r) for name, r in self.score.rates().items()},
            "compression": self.compression,
            "mitigation_pct": self.mitigation.to_dict() if self.mitigation else None,
            "mitigation_points": self.mitigation_points.to_dict() if self.mitigation_points else None,
            "utility_drop_pct": self.utility_drop.to_dict() if self.utility_drop else None,
            "harm_mitigation_pct": self.harm_mitigation.to_dict() if self.harm_mitigation else None,
            "examples": self.examples,
        }


@dataclass(frozen=True)
class AuditResult:
    """The audit table and its recommendation."""

    threat: str
    threat_config: dict[str, Any]
    config: AuditConfig
    rows: tuple[ModelRow, ...]
    recommendation: tuple[str, ...]  # method labels, best first
    verdict: str  # one honest paragraph
    sets: dict[str, dict[str, Any]]  # name → PromptSet.describe()
    judge: dict[str, Any]
    metric: str
    path: Path | None = None
    seconds: float = 0.0
    harm_judge: dict[str, Any] | None = None  # the judge behind the ``harm`` rates, when the audit had one

    def row(self, label: str) -> ModelRow:
        for row in self.rows:
            if row.label == label:
                return row
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threat": self.threat, "threat_config": self.threat_config, "audit_config": self.config.to_dict(),
            "metric": self.metric, "sets": self.sets, "judge": self.judge,
            "rows": [r.to_dict() for r in self.rows], "recommendation": list(self.recommendation),
            "verdict": self.verdict, "seconds": round(self.seconds, 1), "harm_judge": self.harm_judge,
        }

    def table(self) -> Any:
        """A rich table of the audit (the CLI prints it)."""
        from rich.table import Table

        table = Table(title=f"audit: {self.threat} — attack metric: {self.metric}")
        harm = self.harm_judge is not None and "harm" in self.rows[0].score.extra
        columns = ["model", "bits/param", "ratio vs fp16 Δ", "utility [95% CI]", "utility drop %", "attack [95% CI]",
                   "mitigation % [95% CI]", "mitigation pts"]
        if harm:
            columns.append(f"harm ({(self.harm_judge or {}).get('name')}) [95% CI]")
        for column in columns:
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in self.rows:
            comp = row.compression
            cells = [row.label, _fmt(comp.get("bits_per_param")), _fmt(comp.get("ratio_vs_fp16_delta")),
                     _fmt_rate(row.score.utility), _fmt_interval(row.utility_drop), _fmt_rate(row.score.attack),
                     _fmt_interval(row.mitigation), _fmt_interval(row.mitigation_points)]
            if harm:
                cells.append(_fmt_rate(row.score.extra["harm"]))
            table.add_row(*cells)
        table.caption = self.verdict
        return table


def _rate_dict(rate: Any) -> dict[str, Any]:
    return rate.to_dict()


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def _fmt_rate(rate: Any) -> str:
    return f"{100 * rate.value:.1f}% [{100 * rate.low:.0f}, {100 * rate.high:.0f}]"


def _fmt_interval(interval: Interval | None) -> str:
    if interval is None or math.isnan(interval.value):
        return "-"
    return f"{interval.value:.1f} [{interval.low:.0f}, {interval.high:.0f}]"
