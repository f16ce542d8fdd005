"""Pruning: N:M masks hold exactly N zeros in every M, unstructured masks the asked share per row,
SparseGPT's layer error stays below magnitude pruning's, Wanda weighs by input norms, and the transforms."""

from __future__ import annotations

import pytest
import torch

from tinymodels import make_tiny_llama, transform_errors
from deltaguard.errors import ConfigError
from deltaguard.prune.masks import Pattern, mask_from_scores, sparsegpt_prune
from deltaguard.quant.gptq import HessianAccumulator


def _inputs(n=400, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) @ (torch.randn(d, d, generator=g) * 0.3 + torch.eye(d))) \
        * (torch.rand(d, generator=g) * 4 + 0.1)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 2)])
def test_n_m_masks_prune_exactly_n_of_every_m(n, m):
    mask = mask_from_scores(torch.rand(6, 32), Pattern(n=n, m=m))
    assert torch.all(mask.view(6, -1, m).sum(-1) == n)


def test_unstructured_masks_prune_the_lowest_share_of_each_row():
    scores = torch.rand(5, 40)
    mask = mask_from_scores(scores, Pattern(sparsity=0.5))
    assert torch.all(mask.sum(1) == 20)
    assert torch.all(scores[mask].view(5, 20).amax(1) <= scores[~mask].view(5, 20).amin(1))


@pytest.mark.parametrize("pattern", [Pattern(sparsity=0.5), Pattern(n=2, m=4)])
def test_sparsegpt_beats_magnitude_on_its_calibration_inputs(pattern):
    x = _inputs()
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    acc = HessianAccumulator(64)
    acc.add(x)
    pruned = sparsegpt_prune(w, acc.h, pattern, block_size=32)
    magnitude = w.masked_fill(mask_from_scores(w.abs(), pattern), 0.0)
    zeros = pruned == 0
    if pattern.m:
        assert torch.all(zeros.view(16, -1, 4).sum(-1) >= 2)
    else:
        assert abs(float(zeros.float().mean()) - 0.5) < 0.01
    assert (x @ (w - pruned).T).pow(2).sum() < 0.8 * (x @ (w - magnitude).T).pow(2).sum()


def test_bad_patterns_are_refused():
    with pytest.raises(ConfigError, match="0 < N < M"):
        Pattern(n=4, m=4)
    with pytest.raises(ConfigError, match="sparsity"):
        Pattern(sparsity=1.0)
    with pytest.raises(ConfigError, match="multiple of 8"):
        mask_from_scores(torch.rand(2, 12), Pattern(n=4, m=8))


def test_pruning_transforms_on_a_tiny_model(tiny_tokenizer):
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), hidden=128, intermediate=256)
    errors, pruned = transform_errors(model, tiny_tokenizer, ("magnitude-2:4", "wanda-2:4", "sparsegpt-2:4"), n_calib=32)
    for label, result in pruned.items():
        assert result.deltaguard_quant_record["sparsity"] == pytest.approx(0.5, abs=0.01), label
        assert torch.all((result.model.layers[0].mlp.down_proj.weight == 0).view(128, -1, 4).sum(-1) >= 2)
    assert errors["sparsegpt-2:4"] < errors["magnitude-2:4"]
