"""Exact math of each compressor on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from deltaguard.delta.methods import (
    BitDelta, BitDeltaConfig, ComPeft, ComPeftConfig, Dare, DareConfig, KBit, KBitConfig, LowRank, LowRankConfig, Mixed,
    MixedConfig,
)
from deltaguard.delta.methods.quant import dequantize_groups, quantize_groups
from deltaguard.errors import ConfigError


def gaussian(rows, cols, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_bitdelta_signs_and_scale_equal_closed_form():
    delta = gaussian(16, 24)
    parts = BitDelta().compress_tensor(delta, BitDeltaConfig(), name="w")
    assert parts["signs"].shape == (1, 16, 3) and parts["scales"].dtype == torch.float32
    approx = BitDelta().decompress_tensor(parts, (16, 24), BitDeltaConfig())
    expected = torch.where(delta >= 0, 1.0, -1.0) * delta.abs().mean()
    assert torch.allclose(approx, expected, rtol=0, atol=1e-7)
    assert parts["scales"][0].item() == pytest.approx(delta.abs().mean().item(), rel=1e-6)


def test_bitdelta_second_mask_compresses_the_residual():
    delta = gaussian(32, 32, seed=3)
    cfg = BitDeltaConfig(n_masks=2)
    parts = BitDelta().compress_tensor(delta, cfg, name="w")
    s1 = delta.abs().mean()
    residual = delta - s1 * torch.where(delta >= 0, 1.0, -1.0)
    assert parts["scales"][1].item() == pytest.approx(residual.abs().mean().item(), rel=1e-5)
    one = BitDelta().decompress_tensor(BitDelta().compress_tensor(delta, BitDeltaConfig(), name="w"), (32, 32), cfg)
    two = BitDelta().decompress_tensor(parts, (32, 32), cfg)
    assert (delta - two).norm() < (delta - one).norm()


def test_bitdelta_gaussian_sqnr_matches_theory():
    """sign(δ)·mean|δ| leaves relative error energy 1 − 2/π on Gaussian δ (SQNR ≈ 4.40 dB)."""
    delta = gaussian(1000, 1000, seed=7)
    approx = BitDelta().decompress_tensor(BitDelta().compress_tensor(delta, BitDeltaConfig(), name="w"), (1000, 1000), BitDeltaConfig())
    sqnr_db = 10 * math.log10(delta.pow(2).sum() / (delta - approx).pow(2).sum())
    assert sqnr_db == pytest.approx(-10 * math.log10(1 - 2 / math.pi), abs=0.05)


def test_bitdelta_matmul_equals_decompressed_matmul():
    delta, x = gaussian(12, 20, 1), gaussian(5, 20, 2)
    cfg = BitDeltaConfig(n_masks=3)
    parts = BitDelta().compress_tensor(delta, cfg, name="w")
    reference = x @ BitDelta().decompress_tensor(parts, (12, 20), cfg).T
    assert torch.allclose(BitDelta().delta_matmul(x, parts, (12, 20), cfg), reference, atol=1e-5)


def test_lowrank_recovers_a_rank_r_delta_exactly():
    rank_3 = gaussian(40, 3, 1) @ gaussian(3, 30, 2)
    cfg = LowRankConfig(rank=3, dtype="float32")
    approx = LowRank().decompress_tensor(LowRank().compress_tensor(rank_3, cfg, name="w"), (40, 30), cfg)
    assert torch.allclose(approx, rank_3, atol=1e-5)
    x = gaussian(4, 30, 3)
    parts = LowRank().compress_tensor(rank_3, cfg, name="w")
    assert torch.allclose(LowRank().delta_matmul(x, parts, (40, 30), cfg), x @ rank_3.T, atol=1e-4)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_kbit_error_within_half_a_step(bits):
    delta = gaussian(33, 50, bits) * 1e-3  # 1650 values: the last group of 128 is padded
    cfg = KBitConfig(bits=bits, group_size=128)
    parts = KBit().compress_tensor(delta, cfg, name="w")
    approx = KBit().decompress_tensor(parts, (33, 50), cfg)
    steps = parts["steps"].float().repeat_interleave(128)[: delta.numel()].reshape(33, 50)
    assert torch.all((approx - delta).abs() <= steps / 2 * (1 + 1e-3) + 1e-12)
    assert parts["codes"].shape[0] == bits


def test_quantizer_handles_constant_groups():
    values = torch.full((256,), 0.25)
    parts = quantize_groups(values, 2, 128)
    assert torch.allclose(dequantize_groups(parts, 256, 128), values, atol=1e-4)


def test_dare_is_unbiased_in_expectation_and_drops_p():
    delta = gaussian(20, 20, 5)
    mean = torch.zeros_like(delta)
    n_seeds = 400
    for seed in range(n_seeds):
        cfg = DareConfig(p=0.5, seed=seed)
        mean += Dare().decompress_tensor(Dare().compress_tensor(delta, cfg, name="w"), (20, 20), cfg)
    mean /= n_seeds
    # Per entry the estimator's std is |δ| (p = 0.5), so the mean of 400 draws is within ~|δ|/20 · 4.
    assert torch.all((mean - delta).abs() <= delta.abs() * 0.2 + 1e-3)
    parts = Dare().compress_tensor(delta, DareConfig(p=0.9), name="w")
    assert 0.04 < parts["values"].numel() / delta.numel() < 0.2


def test_dare_masks_differ_by_tensor_name_and_repeat_by_seed():
    delta = gaussian(16, 16)
    a = Dare().compress_tensor(delta, DareConfig(), name="a")["mask"]
    b = Dare().compress_tensor(delta, DareConfig(), name="b")["mask"]
    assert not torch.equal(a, b)
    assert torch.equal(a, Dare().compress_tensor(delta, DareConfig(), name="a")["mask"])


def test_compeft_keeps_top_k_with_least_squares_scale():
    delta = torch.tensor([[0.1, -5.0, 0.2, 4.0, -0.3, 0.05, 3.0, -0.01, 0.0, 0.4]])
    cfg = ComPeftConfig(density=0.3)
    approx = ComPeft().decompress_tensor(ComPeft().compress_tensor(delta, cfg, name="w"), (1, 10), cfg)
    expected = torch.zeros(1, 10)
    expected[0, [1, 3, 6]] = torch.tensor([-4.0, 4.0, 4.0])  # mean |kept| = 4
    assert torch.allclose(approx, expected)
    cfg_alpha = ComPeftConfig(density=0.3, alpha=2.0)
    approx_alpha = ComPeft().decompress_tensor(ComPeft().compress_tensor(delta, cfg_alpha, name="w"), (1, 10), cfg_alpha)
    assert approx_alpha[0, 3].item() == pytest.approx(2.0 * delta.std().item(), rel=1e-6)


def test_mixed_is_exact_at_8_bits_on_a_low_rank_delta_and_respects_bands():
    low_rank = gaussian(64, 2, 1) @ gaussian(2, 48, 2)
    cfg = MixedConfig(ranks=(2,), bits=(8,), rest_bits=0)
    approx = Mixed().decompress_tensor(Mixed().compress_tensor(low_rank, cfg, name="w"), (64, 48), cfg)
    assert (approx - low_rank).norm() / low_rank.norm() < 0.02
    assert MixedConfig().bands(100) == [(0, 2, 8), (2, 34, 3), (34, 100, 2)]
    assert MixedConfig(max_rank=10).bands(100) == [(0, 2, 8), (2, 10, 3)]


@pytest.mark.parametrize("factory,match", [
    (lambda: BitDeltaConfig(n_masks=5), "n_masks"),
    (lambda: KBitConfig(bits=5), "kbit.bits"),
    (lambda: LowRankConfig(rank=0), "lowrank.rank"),
    (lambda: DareConfig(p=1.0), "dare.p"),
    (lambda: ComPeftConfig(density=0.0), "compeft.density"),
    (lambda: MixedConfig(ranks=(2,), bits=(8, 3)), "same length"),
    (lambda: BitDeltaConfig(on_incompatible="skip"), "on_incompatible"),
])
def test_invalid_parameters_raise_config_error(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()
