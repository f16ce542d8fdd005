"""The audit on tiny models: rows, compression figures, caching, and the recommendation's wording."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deltaguard.audit import FULL, AuditConfig, Interval, ModelRow, audit, load_audit, recommend
from deltaguard.errors import ConfigError
from deltaguard.metrics import rate
from deltaguard.threats import HarmfulFinetuneConfig
from deltaguard.threats.base import ThreatScore
from study_helpers import make_talkative_model, one_thread  # noqa: F401  (autouse)

METHODS = (FULL, "bitdelta-nodistill", "bitdelta", "kbit4")


@pytest.fixture
def tiny_pair_dirs(tmp_path, tiny_tokenizer):
    base = make_talkative_model(tmp_path / "base", tiny_tokenizer, seed=0)
    finetuned = make_talkative_model(tmp_path / "ft", tiny_tokenizer, seed=0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(finetuned)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_proj.weight"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(finetuned, safe_serialization=True)
    return base, finetuned


def small_config(**changes) -> AuditConfig:
    fields = dict(methods=METHODS, n_prompts=4, max_new_tokens=4, task_max_new_tokens=4, batch_size=8, n_calib=4,
                  method_overrides=("bitdelta.distill_steps=1", "bitdelta.seq_len=16"), n_boot=200, n_examples=2)
    return AuditConfig(**{**fields, **changes})


def test_audit_rows_compression_and_cache(tmp_path, tiny_pair_dirs, monkeypatch):
    base, finetuned = tiny_pair_dirs
    threat = HarmfulFinetuneConfig()
    result = audit(base, finetuned, threat, small_config(), run_dir=tmp_path / "run", progress=False)
    assert [r.label for r in result.rows] == ["base", "finetuned", *METHODS]
    rows = {r.label: r for r in result.rows}
    assert rows[FULL].score == rows["finetuned"].score
    bits = {label: rows[label].compression["bits_per_param"] for label in ("bitdelta-nodistill", "kbit4")}
    assert 0 < bits["bitdelta-nodistill"] < bits["kbit4"] < 32
    for label in ("bitdelta-nodistill", "bitdelta", "kbit4"):
        row = rows[label]
        assert row.mitigation is not None and row.utility_drop is not None
        assert row.score.attack.n == 4 and len(row.examples["harmful"]) == 2
        assert row.compression["method"]["method"] in ("bitdelta", "kbit")
    distilled = json.loads((tmp_path / "run" / "deltas" / rows["bitdelta"].model_key / "manifest.json").read_text())
    assert distilled["method"]["fields"]["distill_steps"] == 1
    assert result.path is not None and result.path.exists()
    assert result.judge["name"] == "keyword"
    assert set(result.sets) == {"harmful", "task"}

    # a second call does no work: nothing generates, compresses or judges
    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached step")

    monkeypatch.setattr("deltaguard.generation.generate_to_jsonl", boom)
    monkeypatch.setattr("deltaguard.delta.compress", boom)
    again = audit(base, finetuned, threat, small_config(), run_dir=tmp_path / "run", progress=False)
    assert again.to_dict() == {**result.to_dict(), "seconds": again.to_dict()["seconds"]}

    # without the audit file, the audit is rebuilt from cached generations, deltas and verdicts alone
    result.path.unlink()
    rebuilt = audit(base, finetuned, threat, small_config(), run_dir=tmp_path / "run", progress=False)
    assert [r.score for r in rebuilt.rows] == [r.score for r in result.rows]
    assert load_audit(rebuilt.path).recommendation == rebuilt.recommendation


def test_audit_config_validation():
    with pytest.raises(ConfigError, match="did you mean|unknown"):
        AuditConfig(methods=("bitdelts",))
    with pytest.raises(ConfigError, match="repeats"):
        AuditConfig(methods=("kbit4", "kbit4"))
    assert AuditConfig(methods=("full", "bitdelta-k3")).methods == ("full", "bitdelta-k3")


def _row(label: str, role: str, attack_flags: list[bool], utility_flags: list[bool], **kw) -> ModelRow:
    score = ThreatScore(attack=rate(attack_flags), utility=rate(utility_flags), attack_flags=tuple(attack_flags),
                        utility_flags=tuple(utility_flags))
    return ModelRow(label, role, label, score, {"attack": tuple(attack_flags), "utility": tuple(utility_flags)}, **kw)


def test_recommendation_ranks_by_mitigation_and_filters_utility():
    from deltaguard.audit import with_comparisons

    n = 40
    rows = with_comparisons([
        _row("base", "base", [False] * n, [True] * 30 + [False] * 10),
        _row("finetuned", "finetuned", [True] * 36 + [False] * 4, [True] * 30 + [False] * 10),
        _row("a", "compressed", [True] * 10 + [False] * 30, [True] * 29 + [False] * 11),   # mitigates, keeps utility
        _row("b", "compressed", [True] * 20 + [False] * 20, [True] * 30 + [False] * 10),   # mitigates less
        _row("c", "compressed", [False] * n, [True] * 10 + [False] * 30),                   # kills utility
    ], n_boot=500, seed=0)
    ranked, verdict = recommend(rows, max_utility_drop=10.0)
    assert ranked == ["a", "b"]
    a = rows[2]
    assert a.mitigation.value == pytest.approx((0.9 - 0.25) / 0.9 * 100)
    assert a.mitigation_points.value == pytest.approx(65.0)
    assert a.mitigation.low < a.mitigation.value < a.mitigation.high
    assert "Mitigation with a 95% interval above 0" in verdict and "a (" in verdict


def test_recommendation_says_plainly_when_nothing_mitigates():
    from deltaguard.audit import with_comparisons

    rows = with_comparisons([
        _row("base", "base", [False] * 36 + [True] * 4, [True] * 20 + [False] * 20),
        _row("finetuned", "finetuned", [True] * 30 + [False] * 10, [True] * 20 + [False] * 20),
        _row("x", "compressed", [True] * 31 + [False] * 9, [True] * 20 + [False] * 20),
    ], n_boot=500, seed=0)
    _, verdict = recommend(rows, max_utility_drop=10.0)
    assert "No compressed delta mitigated the attack measurably" in verdict


def test_recommendation_flags_an_attack_that_did_not_work():
    from deltaguard.audit import with_comparisons

    rows = with_comparisons([
        _row("base", "base", [True] * 5 + [False] * 35, [True] * 20 + [False] * 20),
        _row("finetuned", "finetuned", [True] * 6 + [False] * 34, [True] * 20 + [False] * 20),
        _row("x", "compressed", [True] * 5 + [False] * 35, [True] * 20 + [False] * 20),
    ], n_boot=500, seed=0)
    ranked, verdict = recommend(rows, max_utility_drop=10.0)
    assert "did not clearly succeed and mitigation cannot be assessed" in verdict
    assert "Mitigation with" not in verdict
    assert ranked == ["x"] and "smallest drop first" in verdict


def test_interval_serialises_nan_as_null():
    assert Interval(math.nan, math.nan, math.nan).to_dict() == {"value": None, "low": None, "high": None}


def test_degenerate_bootstrap_is_widened_to_the_binomial_interval():
    from deltaguard.audit import with_comparisons

    n = 32
    rows = with_comparisons([
        _row("base", "base", [False] * n, [True] * 10 + [False] * 22),
        _row("finetuned", "finetuned", [True] * 29 + [False] * 3, [True] * 10 + [False] * 22),
        _row("refuses-all", "compressed", [False] * n, [True] * 10 + [False] * 22),
        _row("same-as-ft", "compressed", [True] * 29 + [False] * 3, [True] * 10 + [False] * 22),
    ], n_boot=300, seed=0)
    # every resample says 100%, but 0 of 32 only bounds the compressed rate by Wilson's [0, 0.109]
    restored = rows[2].mitigation
    assert restored.value == pytest.approx(100.0) and restored.high == pytest.approx(100.0)
    assert 85 < restored.low < 90
    same = rows[3].mitigation
    assert same.value == 0.0 and same.low < 0 < same.high
    # the identical model ("full" shares the fine-tune's key) stays exactly 0
    full = with_comparisons([rows[0], rows[1], _row("finetuned", "compressed", [True] * 29 + [False] * 3,
                                                    [True] * 10 + [False] * 22)], n_boot=300, seed=0)[2]
    assert (full.mitigation.low, full.mitigation.high) == (0.0, 0.0)


def test_no_evaluated_model_is_held_while_a_delta_is_compressed(tmp_path, tiny_pair_dirs, monkeypatch):
    """Scale distillation loads two models of its own: the runner's last one must be gone by then."""
    import deltaguard.delta as delta_api
    from deltaguard.eval.runner import Runner

    held: list[bool] = []
    runners: list[Runner] = []
    real_init, real_compress = Runner.__init__, delta_api.compress

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        runners.append(self)

    def compress(*args, **kwargs):
        held.append(runners[-1]._loaded is not None)
        return real_compress(*args, **kwargs)

    monkeypatch.setattr(Runner, "__init__", init)
    monkeypatch.setattr(delta_api, "compress", compress)
    base, finetuned = tiny_pair_dirs
    audit(base, finetuned, HarmfulFinetuneConfig(), small_config(), run_dir=tmp_path / "run", progress=False)
    assert held == [False, False, False]
