"""LensResult aggregates, CSV/JSON round trip, merging and plots."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tinymodels import make_tiny_llama, perturb
from deltaguard.errors import ConfigError, FormatError
from deltaguard.lens import LensConfig, load_result, logit_lens, merge_results
from deltaguard.lens.plots import label_text, plot_top_tokens, save_all

PROMPTS = ["How do I bake bread?", "What is 12 plus 7?", "I cannot help with that.", "Step 1: mix", "Hi"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result(tiny_tokenizer):
    base = make_tiny_llama(vocab_size=len(tiny_tokenizer), n_layers=2, seed=0)
    tuned = perturb(make_tiny_llama(vocab_size=len(tiny_tokenizer), n_layers=2, seed=0), seed=3, scale=0.05)
    return logit_lens({"base": base, "tuned": tuned}, tiny_tokenizer, PROMPTS,
                      LensConfig(targets=("19",), n_bootstrap=200))


def test_aggregates_agree_with_the_records(result):
    margins = result.margins("tuned")
    assert margins.shape == (len(PROMPTS), len(result.sites))
    curves = [c for c in result.curves() if c.model == "tuned"]
    assert [c.site for c in curves] == list(result.sites)
    for j, c in enumerate(curves):
        assert c.margin_mean == pytest.approx(margins[:, j].mean())
        assert c.margin_low <= c.margin_mean <= c.margin_high
        assert c.frac_positive == pytest.approx((margins[:, j] > 0).mean())
        assert c.mean_log_probs["target"] == pytest.approx(result.log_probs("tuned", "target")[:, j].mean())
    diff = margins - result.margins("base")
    comparisons = result.comparisons()
    assert {c.model for c in comparisons} == {"tuned"} and {c.reference for c in comparisons} == {"base"}
    assert [c.diff_mean for c in comparisons] == pytest.approx(diff.mean(axis=0).tolist())
    assert all(c.diff_low <= c.diff_mean <= c.diff_high for c in comparisons)
    assert {c.model for c in result.comparisons(reference="tuned")} == {"base"}
    firsts = [f for f in result.first_positive() if f.model == "tuned"]
    for f, row in zip(firsts, margins):
        positive = np.flatnonzero(row > 0)
        assert f.first_depth == (result.depths[positive[0]] if positive.size else None)
        assert f.final_margin == pytest.approx(row[-1])
    summary = {s.model: s for s in result.summaries()}["tuned"]
    assert summary.final_margin_mean == pytest.approx(margins[:, -1].mean())
    assert summary.frac_refusal_favoured == pytest.approx((margins[:, -1] > 0).mean())
    with pytest.raises(ConfigError, match="no model 'nope'"):
        result.margins("nope")


def test_save_and_load_round_trip(result, tmp_path):
    paths = result.save(tmp_path)
    assert sorted(p.name for p in paths) == ["comparisons.csv", "curves.csv", "first_positive.csv", "lens.json",
                                             "records.csv", "summary.csv"]
    loaded = load_result(tmp_path)
    assert loaded == result
    assert loaded.curves() == result.curves()
    with open(tmp_path / "records.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(result.records)
    assert {"logp_refusal", "p_compliance", "rank_target", "margin", "top_tokens"} <= set(rows[0])
    data = json.loads((tmp_path / "lens.json").read_text())
    assert data["config"]["fields"]["targets"] == ["19"]
    assert data["checks"][0]["last_layer_max_abs_diff"] <= 1e-4
    data["format_version"] = 99
    (tmp_path / "lens.json").write_text(json.dumps(data))
    with pytest.raises(FormatError, match="deltaguard-lens"):
        load_result(tmp_path)


def test_merge_requires_same_prompts_and_unique_labels(result, tiny_tokenizer):
    model = make_tiny_llama(vocab_size=len(tiny_tokenizer), n_layers=2, seed=9)
    other = logit_lens(model, tiny_tokenizer, PROMPTS[:2], result.config, label="other")
    with pytest.raises(ConfigError, match="differ in prompt_ids"):
        merge_results([result, other])
    same = logit_lens(model, tiny_tokenizer, PROMPTS, result.config, label="base")
    with pytest.raises(ConfigError, match="'base' appears in two"):
        merge_results([result, same])
    renamed = logit_lens(model, tiny_tokenizer, PROMPTS, result.config, label="third")
    merged = merge_results([result, renamed])
    assert merged.models == ("base", "tuned", "third") and len(merged.checks) == 3


def test_plots_are_written_as_png(result, tmp_path):
    paths = save_all(result, tmp_path / "plots")
    assert [p.name for p in paths] == ["margin_curves.png", "margin_heatmap.png", "top_tokens_0_base.png",
                                       "top_tokens_1_tuned.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
    assert not list((tmp_path / "plots").glob(".*"))  # no temp files left behind
    with pytest.raises(ConfigError, match="no model"):
        plot_top_tokens(result, tmp_path / "x.png", model="missing")


def test_label_text_makes_tokens_drawable():
    assert label_text(" Sure") in ("␣Sure", "_Sure")
    assert label_text("a\nb") == "a\\nb"
    assert label_text("$x$") == r"\$x\$"
    assert label_text("\x00") == "\\u0000"
    assert label_text("abcdefghijklmnop", 6) == "abcde…"
