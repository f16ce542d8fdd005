"""Measurements on hand-made logits, CIs, and the LensConfig checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deltaguard.errors import ConfigError
from deltaguard.lens import LensConfig
from deltaguard.lens.measure import (
    bootstrap_mean_ci, first_positive, measure_logits, refusal_margin, set_log_prob, set_rank, settled_positive,
)


def test_set_log_prob_sums_probabilities_of_the_set():
    log_probs = torch.log(torch.tensor([[0.25, 0.25, 0.5], [0.1, 0.6, 0.3]]))
    out = set_log_prob(log_probs, torch.tensor([0, 2]))
    assert out.tolist() == pytest.approx([math.log(0.75), math.log(0.4)], abs=1e-6)


def test_set_rank_is_one_plus_tokens_strictly_above_the_best_member():
    logits = torch.tensor([[5.0, 3.0, 4.0, 1.0], [2.0, 2.0, 1.0, 0.0]])
    assert set_rank(logits, torch.tensor([1, 3])).tolist() == [3, 1]  # row 2: token 1 ties the max → rank 1
    assert set_rank(logits, torch.tensor([0])).tolist() == [1, 1]
    assert set_rank(logits, torch.tensor([3])).tolist() == [4, 4]


def test_measure_logits_top_k_and_margin():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    m = measure_logits(logits, {"refusal": torch.tensor([1]), "compliance": torch.tensor([2, 3])}, top_k=2)
    assert m.top_ids.tolist() == [[1, 2]]
    probs = torch.softmax(logits, -1)[0]
    assert m.top_log_probs.exp().tolist()[0] == pytest.approx(probs[[1, 2]].tolist(), abs=1e-6)
    margin = refusal_margin(m.set_log_probs["refusal"], m.set_log_probs["compliance"])
    assert margin.item() == pytest.approx(math.log(probs[1] / (probs[2] + probs[3])), abs=1e-6)
    assert m.set_ranks["refusal"].tolist() == [1] and m.set_ranks["compliance"].tolist() == [2]


@pytest.mark.parametrize("margins,first,settled", [
    ([-1.0, 2.0, -1.0, 3.0, 4.0], 1, 3),
    ([1.0, 2.0], 0, 0),
    ([1.0, -1.0], 0, None),
    ([-1.0, 0.0], None, None),  # zero is not positive
    ([], None, None),
])
def test_first_and_settled_positive(margins, first, settled):
    assert first_positive(margins) == first
    assert settled_positive(margins) == settled


def test_bootstrap_ci_brackets_the_mean_with_the_expected_width():
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 1.0, size=(400, 2)) + np.array([0.0, 5.0])
    mean, low, high = bootstrap_mean_ci(values, n_boot=2000, seed=0)
    assert np.all(low < mean) and np.all(mean < high)
    assert mean[1] - mean[0] == pytest.approx(5.0, abs=0.2)
    expected = 2 * 1.96 / math.sqrt(400)  # normal-theory width of a 95% CI for sd 1
    assert (high - low) == pytest.approx([expected, expected], rel=0.15)
    again = bootstrap_mean_ci(values, n_boot=2000, seed=0)
    assert np.array_equal(again[1], low)  # seeded


def test_bootstrap_ci_degenerate_cases():
    mean, low, high = bootstrap_mean_ci(np.array([[2.0, 3.0]]), n_boot=100)
    assert mean.tolist() == low.tolist() == high.tolist() == [2.0, 3.0]
    mean, low, high = bootstrap_mean_ci(np.full((5, 1), 7.0), n_boot=100)
    assert (low[0], high[0]) == (7.0, 7.0)
    with pytest.raises(ValueError):
        bootstrap_mean_ci(np.zeros((0, 3)))


@pytest.mark.parametrize("field,value,match", [
    ("positions", "first", "lens.positions"),
    ("top_k", 0, "lens.top_k"),
    ("batch_size", 0, "lens.batch_size"),
    ("sites", ("layers.1.resid",), "not valid"),
    ("refusal_words", (), "refusal_words is empty"),
    ("targets", ("",), "empty word"),
    ("check_atol", 0.0, "lens.check_atol"),
])
def test_lens_config_rejects_bad_values(field, value, match):
    with pytest.raises(ConfigError, match=match):
        LensConfig(**{field: value})


def test_lens_config_round_trip_and_overrides():
    config = LensConfig().with_overrides(["positions=all", "sites=layers.0.resid_pre,final_norm", "targets=42",
                                          "system_prompt=none"])
    assert config.positions == "all" and config.sites == ("layers.0.resid_pre", "final_norm")
    assert config.targets == ("42",) and config.system_prompt is None
    assert LensConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="has no field 'layers'"):
        LensConfig().with_overrides(["layers=3"])
