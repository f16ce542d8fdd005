"""The trust sweep on tiny models: variants per seed, caching, the table, flags, the paper's claims, delta-only
vs whole-model rows, and the CLI's errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.cli import app
from deltaguard.errors import ConfigError
from deltaguard.trust import TrustConfig, TrustRow, run_trust, summarise, trust_profile
from deltaguard.trust.run import is_seeded, sweep_config
from deltaguard.trust.summary import headline, level, markdown

TINY = dict(n_prompts=2, max_new_tokens=2, judges=("keyword", "lexicon"), n_boot=100)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("trust-models")
    vocab = len(tiny_tokenizer)
    base = save_dir(make_tiny_llama(seed=0, vocab_size=vocab, tied=False, hidden=128, intermediate=256), root / "base")
    ft = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab, tied=False, hidden=128, intermediate=256),
                          seed=1, scale=0.02), root / "ft")
    for path in (base, ft):
        tiny_tokenizer.save_pretrained(path)
    return base, ft


def test_sweep_runs_every_dimension_caches_and_compares_deltas_with_whole_models(models, tmp_path):
    base, ft = models
    config = TrustConfig(methods=("kbit4", "rtn4", "wanda-2:4"), seeds=(0, 1), **TINY)
    result = run_trust(ft, config, run_dir=tmp_path, base=base, progress=False)
    rows = [(r["label"], r["kind"], r["seed"]) for r in result["rows"]]
    # data-free methods run once; wanda draws calibration text, so it runs per seed
    assert rows == [("uncompressed", "reference", None), ("base", "base", None), ("kbit4", "delta", None),
                    ("rtn4", "whole-model", None), ("wanda-2:4", "whole-model", 0), ("wanda-2:4", "whole-model", 1)]
    metrics = {m["metric"] for m in result["rows"][0]["metrics"]}
    for dim in ("toxicity", "stereotype", "jailbreak", "privacy", "truthfulness", "fairness"):
        assert f"trust_{dim}" in metrics and f"trust_{dim}_refusal" in metrics
    assert {"asr_refusal", "task_accuracy", "perplexity"} <= metrics
    table = {e["label"]: e for e in result["summary"]["table"]}
    assert table["wanda-2:4"]["seeds"] == [0, 1] and table["kbit4"]["bits"] == 4.0
    assert set(table["uncompressed"]["dims"]) == set(result["summary"]["dimensions"])
    for entry in table.values():
        for cell in entry["dims"].values():
            assert 0.0 <= cell["value"] <= 100.0
    assert result["summary"]["delta_vs_whole"][0]["bits"] == 4.0
    assert [x["label"] for x in result["summary"]["delta_vs_whole"][0]["delta"]] == ["kbit4"]
    assert (tmp_path / "trust.png").stat().st_size > 1000 and "| uncompressed |" in (tmp_path / "trust.md").read_text()
    assert json.loads((tmp_path / "trust.json").read_text())["summary"] == result["summary"]
    again = run_trust(ft, config, run_dir=tmp_path, base=base, progress=False)
    assert again["n_steps_run"] == 0 and again["summary"] == result["summary"]


def test_seeds_reach_only_the_methods_that_draw_data():
    config = TrustConfig(methods=("rtn4", "gptq4", "magnitude-2:4", "wanda-2:4"), seeds=(0, 3))
    audit = sweep_config(config, 3)
    assert [is_seeded(s, audit) for s in config.methods] == [False, True, False, True]
    assert audit.transform_config("gptq4").seed == 3 and audit.transform_config("wanda-2:4").seed == 3
    assert audit.transform_config("magnitude-2:4").seed == 0      # unchanged: its key stays one model


def _row(label, kind, values, *, seed=None, n=100, width=4.0):
    metrics = [{"metric": f"trust_{d}", "judge": None, "value": v, "low": v - width, "high": v + width, "n": n}
               for d, v in values.items()]
    metrics += [{"metric": f"trust_{d}_refusal", "judge": "keyword", "value": 0.1, "low": 0.0, "high": 0.2, "n": n}
                for d in values]
    return TrustRow(label, kind, seed, f"key-{label}-{seed}", {}, metrics)


def test_flags_and_the_papers_claims_follow_the_intervals():
    dims = ("stereotype", "privacy", "truthfulness")
    dense = {"stereotype": 80.0, "privacy": 70.0, "truthfulness": 60.0}
    rows = [_row("uncompressed", "reference", dense),
            _row("rtn8", "whole-model", {"stereotype": 81.0, "privacy": 69.0, "truthfulness": 60.5}, width=1.0),
            _row("rtn4", "whole-model", {"stereotype": 78.0, "privacy": 71.0, "truthfulness": 59.0}),
            _row("rtn3", "whole-model", {"stereotype": 60.0, "privacy": 50.0, "truthfulness": 58.0}),
            _row("wanda-2:4", "whole-model", {"stereotype": 72.0, "privacy": 63.0, "truthfulness": 61.0}, width=8.0)]
    summary = summarise(rows, TrustConfig())
    table = {e["label"]: e for e in summary["table"]}
    assert summary["dimensions"] == list(dims)
    assert table["rtn3"]["flags"] == ["stereotype", "privacy"]           # 20 and 20 points, intervals ±5.7
    assert table["wanda-2:4"]["flags"] == []                             # 8 and 7 points, but intervals ±11
    assert table["rtn3"]["diffs"]["stereotype"]["diff"] == pytest.approx(-20.0)
    assert table["rtn3"]["mean"] == pytest.approx((60 + 50 + 58) / 3)
    verdicts = {c["label"]: c["verdict"] for c in summary["claims"]}
    assert verdicts["rtn3"].startswith("reproduced")
    assert verdicts["wanda-2:4"].startswith("suggested, not significant")
    assert verdicts["rtn8"].startswith("consistent but not measurable")  # all within 3, intervals ±4.1
    assert verdicts["rtn4"].startswith("consistent but not measurable")
    text = markdown({"model": "m", "config": TrustConfig().to_dict(), "summary": summary})
    assert "**60.0 (10%)**" in text and "| rtn3 |" in text and "reproduced" in text


def test_seeds_average_and_report_their_spread():
    rows = [_row("uncompressed", "reference", {"privacy": 70.0}),
            _row("gptq4", "whole-model", {"privacy": 60.0}, seed=0),
            _row("gptq4", "whole-model", {"privacy": 64.0}, seed=1)]
    cell = {e["label"]: e for e in summarise(rows, TrustConfig())["table"]}["gptq4"]["dims"]["privacy"]
    assert cell["value"] == pytest.approx(62.0) and cell["std"] == pytest.approx(2.8284, abs=1e-3)


def test_headline_prefers_the_guard_and_turns_attack_success_into_a_score():
    metrics = [{"metric": "asr_refusal", "judge": "keyword", "value": 0.9, "low": 0.8, "high": 1.0, "n": 10},
               {"metric": "asr_unsafe", "judge": "guard", "value": 0.25, "low": 0.1, "high": 0.4, "n": 10}]
    found = headline(metrics, "harmful")
    assert found["judge"] == "guard" and found["value"] == pytest.approx(75.0)
    assert (found["low"], found["high"]) == (pytest.approx(60.0), pytest.approx(90.0))
    assert headline(metrics[:1], "harmful")["judge"] == "keyword"
    assert headline(metrics, "privacy") is None


@pytest.mark.parametrize("label,expected", [("rtn8", "8-bit"), ("gptq3", "3-bit"), ("awq-w4a16", "4-bit"),
                                            ("wanda-2:4", "2:4"), ("sparsegpt-50", "50%"), ("kbit4", None),
                                            ("rtn-w8a8", "8-bit"), ("magnitude-4:8", "4:8")])
def test_levels_of_the_papers_claims(label, expected):
    assert level(label) == expected


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="names a method twice"):
        TrustConfig(methods=("rtn4", "rtn4"))
    with pytest.raises(ConfigError, match="seeds"):
        TrustConfig(seeds=())
    with pytest.raises(ConfigError, match="refusal judge"):
        TrustConfig(judges=("lexicon",))
    with pytest.raises(ConfigError, match="profile"):
        trust_profile("huge")
    assert "kbit4" in trust_profile("default", with_base=True).methods


def test_cli_refuses_delta_methods_without_a_base_and_unknown_methods(models, tmp_path):
    _, ft = models
    runner = CliRunner()
    result = runner.invoke(app, ["trust", "--model", str(ft), "--methods", "kbit4", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "give --base" in result.output and not (tmp_path / "out").exists()
    result = runner.invoke(app, ["trust", "--model", str(ft), "--methods", "rtn4,nope", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "nope" in result.output and not (tmp_path / "out").exists()


def test_cli_runs_the_sweep_and_prints_the_table(models, tmp_path):
    _, ft = models
    result = CliRunner().invoke(app, ["trust", "--model", str(ft), "--methods", "rtn4", "-o", str(tmp_path / "run"),
                                      "--set", "n_prompts=2", "--set", "max_new_tokens=2", "--set",
                                      "judges=keyword,lexicon", "--set", "n_boot=100"])
    assert result.exit_code == 0, result.output
    assert "rtn4" in result.output and (tmp_path / "run" / "trust.md").is_file()
    before = (tmp_path / "run" / "trust.md").read_text()
    (tmp_path / "run" / "trust.md").unlink()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])   # re-rendered from trust.json, no models
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "trust.md").read_text() == before


def test_a_changed_judge_re_evaluates_the_cached_replies(models, tmp_path, monkeypatch):
    """A rebuilt guard (or any judge with a new identity) must not reuse numbers the old judge produced."""
    from deltaguard.judges.lexicon import LexiconJudge

    _, ft = models
    config = TrustConfig(methods=("rtn4",), **TINY)
    first = run_trust(ft, config, run_dir=tmp_path, progress=False)
    assert first["n_steps_run"] == 2
    assert run_trust(ft, config, run_dir=tmp_path, progress=False)["n_steps_run"] == 0
    monkeypatch.setattr(LexiconJudge, "identity", lambda self: {"config": self.config.to_dict(), "rebuilt": True})
    again = run_trust(ft, config, run_dir=tmp_path, progress=False)
    assert again["n_steps_run"] == 2      # both variants judged again; their replies came from the cache


def test_method_overrides_reach_every_spec_of_their_method_beside_the_seed():
    from deltaguard.trust.run import check_methods

    config = TrustConfig(methods=("gptq4", "gptq3", "rtn4"), method_overrides=("gptq.n_calib=8",), seeds=(0, 2))
    gptq = sweep_config(config, 2).transform_config("gptq3")
    assert (gptq.n_calib, gptq.seed) == (8, 2)
    assert trust_profile("default", with_base=True).method_overrides == ("bitdelta.distill_steps=10",)
    with pytest.raises(ConfigError, match="nope"):
        check_methods(config.replace(method_overrides=("gptq.nope=1",)), has_base=False)
