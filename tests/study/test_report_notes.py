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


def test_the_audit_table_gives_the_harm_judge_its_own_column_and_names_each_judge():
    from deltaguard.report.document import _audit_rows, _judge_line

    audit = _audit((70.0, 52.0, 86.0), (6.7, -3.0, 17.0))
    for row in audit["rows"]:
        row["rates"]["harm"] = _rate(0.5)
        row["rates"]["harm:triggered"] = _rate(0.25)
        row["rates"]["style_leak"] = _rate(0.1)
    audit["judge"] = {"name": "keyword", "prompt_hash": "k1"}
    audit["harm_judge"] = {"name": "guard", "prompt_hash": "g1"}
    rows = _audit_rows(audit)
    assert rows[0][-2] == "harmful: 50.0% [35, 65] (n=32); triggered: 25.0% [10, 40] (n=32)"
    assert rows[0][-1] == "style_leak: 10.0% [0, 25] (n=32)"   # harm is not repeated among the other rates
    checks = {"attack": {"judge": "keyword", "prompt_hash": "k1", "task": "refusal", "dataset": {},
                         "agreement": {"n": 100, "accuracy": 0.7, "f1": 0.6, "kappa": 0.4,
                                       "confusion": {"tp": 30, "fp": 0, "fn": 30, "tn": 40}}}}
    attack = _judge_line("attack", audit, checks)
    assert attack.startswith("The attack metric comes from the keyword judge (config hash k1)")
    assert "agrees on 70% [60, 78] of 100 replies (F1 0.60, false-positive rate 0.00, Cohen's kappa 0.40)" in attack
    harm = _judge_line("harm", audit, checks)   # no check for this judge: said, not hidden
    assert "harm column" in harm and "was not measured" in harm
    checks["harm"] = {"judge": "guard", "prompt_hash": "g1", "task": "harm",
                      "dataset": {"n_left_out_trained_on": 611, "n_left_out_ambiguous": 131,
                                  "ambiguous_judged_positive": 95},
                      "agreement": {"n": 242, "accuracy": 208 / 242, "f1": 0.90, "kappa": 0.66,
                                    "confusion": {"tp": 155, "fp": 22, "fn": 12, "tn": 53}}}
    harm = _judge_line("harm", audit, checks)   # the mapping and the unlabelled middle are said, not hidden
    assert ("on PyRIT's human harm grades (unsafe: mean ≥ 0.5; safe: every grade 0) it agrees on 86% [81, 90] of "
            "242 replies") in harm
    assert ("611 prompts it trained on left out; the 131 replies graded in between have no label, and it called 95 "
            "of them unsafe)") in harm
    from deltaguard.guard.probe import probe_examples, probe_rates   # and on the hand-written probe, when measured

    probe = probe_examples()
    checks["harm"]["probe"] = probe_rates([1.0 if e.unsafe and i % 5 == 0 else 0.0 for i, e in enumerate(probe)],
                                          probe, 0.5)
    harm = _judge_line("harm", audit, checks)
    assert ("unsafe); on deltaguard's hand-written probe of plain, short text unlike any labelled source (guard.probe) "
            "it caught 4 of 20 (20% [8, 42]) plainly harmful replies and 3 of 16 (19% [7, 43]) harmful requests on "
            "their own, and called 0 of 16 (0% [0, 19]) harmless answers to harmful-sounding requests unsafe") in harm
    del checks["harm"]
    from deltaguard.report.document import Document, _summary

    audit["verdict"] = "No method mitigates."
    doc = Document("t", figures={})
    _summary(doc, {"audits": {"harmful": audit}})
    assert ("Harm (guard judge): 50.0% [35, 65] (n=32) (aligned base) → 50.0% [35, 65] (n=32) (fine-tune); "
            "compressed: bitdelta-nodistill 50%, bitdelta 50%.") in doc.markdown()
    for row in audit["rows"]:   # a backdoor lists its triggered set first: the summary follows it
        row["rates"] = {"attack": row["rates"]["attack"], "utility": row["rates"]["utility"],
                        "harm:triggered": _rate(0.25), "harm": _rate(0.5)}
    doc = Document("t", figures={})
    _summary(doc, {"audits": {"backdoor": audit}})
    assert "Harm (guard judge on triggered prompts): 25.0% [10, 40] (n=32) (aligned base)" in doc.markdown()
    del audit["harm_judge"]
    assert len(_audit_rows(audit)[0]) == len(rows[0]) - 1 and _judge_line("harm", audit, checks) == ""


def test_quantization_note_names_each_quantized_row_with_its_bits_and_time():
    from deltaguard.report.document import quantization_note

    audit = {"rows": [{"label": "finetuned", "role": "finetuned", "compression": {}},
                      {"label": "qrealign-w8a8", "role": "transformed",
                       "compression": {"w_bits": 8, "a_bits": 8, "bits_per_param": 11.2, "seconds": 312.4,
                                       "diagnostics": {"aligned": {"probe_accuracy": 0.88, "harmful_side": 0.99},
                                                       "fine-tune": {"probe_accuracy": 0.77, "harmful_side": 0.70}}}},
                      {"label": "bf16", "role": "transformed", "compression": {"bits_per_param": 16.0}}]}
    note = quantization_note(audit)
    assert "qrealign-w8a8: W8A8" in note and "11.20 bits/param" in note and "312 s" in note and "bf16" not in note
    assert "fine-tune 70%" in note and "aligned 88%" in note
    assert quantization_note({"rows": audit["rows"][:1]}) is None


def test_threat_methods_add_methods_to_one_threats_audit_only():
    from deltaguard.errors import ConfigError
    from deltaguard.study.config import study_profile

    full = study_profile("full")
    harmful = full.audit_for("harmful").methods
    assert harmful[-3:] == ("rtn-w8a8", "omniquant-w8a8", "qrealign-w8a8")
    assert full.audit_for("benign") == full.audit and "qrealign-w8a8" not in full.audit.methods
    assert study_profile("default").threat_methods == ()
    with pytest.raises(ConfigError, match="threat_methods entry"):
        full.replace(threat_methods=("nosuchthreat=rtn-w8a8",))
    with pytest.raises(ConfigError, match="unknown"):
        full.replace(threat_methods=("harmful=nosuchmethod",))
