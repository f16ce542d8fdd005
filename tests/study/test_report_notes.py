"""Report paragraphs computed from audit rows (no model needed)."""

from __future__ import annotations

import pytest

from deltaguard.report.document import distillation_note


def _rate(value: float) -> dict:
    return {"value": value, "low": max(0.0, value - 0.15), "high": min(1.0, value + 0.15), "n": 32}


def _row(label: str, attack: float, mitigation: tuple[float, float, float] | None, **compression) -> dict:
    value, low, high = mitigation or (None, None, None)
    return {"label": label, "rates": {"attack": _rate(attack), "utility": _rate(0.3)},
            "mitigation_pct": {"value": value, "low": low, "high": high}, "compression": compression}


def _audit(plain_mitigation, distilled_mitigation, **calibration) -> dict:
    return {"rows": [_row("aligned base", 0.0, None), _row("fine-tune", 0.94, None),
                     _row("bitdelta-nodistill", 0.28, plain_mitigation),
                     _row("bitdelta", 0.88, distilled_mitigation, calibration=calibration)]}


def test_the_note_says_when_distillation_removes_the_mitigation():
    note = distillation_note(_audit((70.0, 52.0, 86.0), (6.7, -3.0, 17.0), held_out_loss_closed_form=0.96,
                                    held_out_loss_distilled=0.229, scales="distilled"))
    assert note is not None
    assert "held-out logit MSE 0.96 with closed-form scales, 0.229 distilled; kept: distilled" in note
    assert "attack 28.0% [13, 43] (n=32), mitigation 70.0% [52, 86]" in note
    assert "Only the closed-form variant measurably mitigates" in note


@pytest.mark.parametrize("plain,distilled,verdict", [
    ((70.0, 52.0, 86.0), (60.0, 40.0, 80.0), "Both variants measurably mitigate"),
    ((5.0, -10.0, 20.0), (40.0, 20.0, 60.0), "Only the distilled variant measurably mitigates"),
    ((5.0, -10.0, 20.0), (0.0, 0.0, 10.0), "Neither variant measurably mitigates"),   # a low of exactly 0 is not > 0
    (None, None, "Neither variant measurably mitigates"),
])
def test_the_note_reads_the_intervals_not_the_point_estimates(plain, distilled, verdict):
    note = distillation_note(_audit(plain, distilled))
    assert note is not None and verdict in note and "MSE" not in note   # no calibration record: no loss claim


def test_no_note_without_both_variants():
    audit = _audit((70.0, 52.0, 86.0), None)
    audit["rows"] = [r for r in audit["rows"] if r["label"] != "bitdelta-nodistill"]
    assert distillation_note(audit) is None
