"""Safety probes: the L1 logistic fit, Fisher separability, last-token states, and the saved artifact."""

from __future__ import annotations

import json

import pytest
import torch

from tinymodels import make_tiny_llama
from deltaguard.errors import ConfigError, FormatError
from deltaguard.quant.probes import SafetyProbes, fisher_ratio, fit_l1_logistic, fit_probes, last_token_states


def _separable(n=120, d=20, seed=0, shift=10.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 3 + 10   # raw features far from zero and unscaled: the fit standardises
    y = (torch.arange(n) % 2)
    x[y == 1, 5] += shift * 3
    return x, y


def test_l1_probe_separates_linearly_separable_data_and_is_sparse():
    x, y = _separable()
    w, b = fit_l1_logistic(x, y, l1=0.05, steps=400)
    assert float((((x @ w + b) > 0).long() == y).float().mean()) == 1.0
    assert w[5].abs() > 0 and int((w.abs() > 1e-6).sum()) <= 5   # the L1 term keeps the informative feature


def test_stronger_l1_means_fewer_features():
    x, y = _separable(shift=1.0)
    dense, _ = fit_l1_logistic(x, y, l1=0.0, steps=300)
    sparse, _ = fit_l1_logistic(x, y, l1=0.1, steps=300)
    assert int((sparse.abs() > 1e-6).sum()) < int((dense.abs() > 1e-6).sum())


def test_fisher_ratio_matches_its_definition():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    # means 1 and 11: between = 100; within = mean squared distance 1 in each class
    assert fisher_ratio(x, y) == pytest.approx(100.0)


def test_fit_probes_reports_held_out_accuracy_per_layer_and_round_trips(tmp_path):
    x, y = _separable()
    noise = torch.randn(120, 20, generator=torch.Generator().manual_seed(3))
    probes = fit_probes(torch.stack([x, noise]), y, seed=0)
    assert probes.n_layers == 2 and probes.accuracy[0] == 1.0 and probes.accuracy[1] < 0.8
    assert probes.separability[0] > 10 * probes.separability[1]
    probes.save(tmp_path / "p")
    again = SafetyProbes.load(tmp_path / "p")
    assert torch.equal(again.weight, probes.weight) and again.accuracy == probes.accuracy
    assert again.evaluate(torch.stack([x, noise]), y)["accuracy"][0] == 1.0


def test_probe_errors(tmp_path):
    with pytest.raises(ConfigError, match="both harmful and benign"):
        fit_l1_logistic(torch.randn(4, 3), torch.ones(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="holdout"):
        fit_probes(torch.randn(1, 4, 3), torch.tensor([0, 1, 0, 1]), holdout=1.5)
    (tmp_path / "bad").mkdir()
    with pytest.raises(FormatError, match="not a deltaguard probe"):
        SafetyProbes.load(tmp_path / "bad")
    x, y = _separable()
    fit_probes(x[None], y).save(tmp_path / "p")
    record = json.loads((tmp_path / "p" / "probes.json").read_text())
    (tmp_path / "p" / "probes.json").write_text(json.dumps({**record, "accuracy": [0.5, 0.5]}))
    with pytest.raises(FormatError, match="misshapen"):
        SafetyProbes.load(tmp_path / "p")


def test_last_token_states_read_each_blocks_output_at_the_last_real_token(tiny_tokenizer):
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), n_layers=3)
    prompts = ["short", "a much longer prompt than the other one"]
    states = last_token_states(model, tiny_tokenizer, prompts, batch_size=2)
    alone = last_token_states(model, tiny_tokenizer, prompts[:1], batch_size=1)
    assert states.shape == (3, 2, 64)
    torch.testing.assert_close(states[:, 0], alone[:, 0], rtol=1e-4, atol=1e-4)   # padding does not leak in
