"""The fake-quant arithmetic: error bounds, straight-through gradients, packing, and the runtime linear
reproducing the calibrated weights exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaguard.errors import ConfigError
from deltaguard.quant.fake import (affine_grid, fake_quant, fake_quant_tokens, fake_quant_weight, fit_group, grouped,
                                   round_ste, scheme, weight_grid)
from deltaguard.quant.linear import QuantLinear, pack_nibbles, unpack_nibbles


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), seed=st.integers(0, 10_000), group=st.sampled_from([0, 8, 16]),
       shift=st.floats(-3, 3))
def test_weight_round_trip_error_is_at_most_half_a_step(bits, seed, group, shift):
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(seed)) + shift
    step, _ = weight_grid(w, bits, group)
    error = (fake_quant_weight(w, bits, group) - w).abs()
    bound = grouped(torch.ones_like(w), group) * step / 2
    assert (grouped(error, group) <= bound * (1 + 1e-5) + 1e-6).all()


def test_token_round_trip_error_and_values_on_the_grid():
    x = torch.randn(3, 5, 40) * torch.tensor([0.1, 1.0, 30.0]).view(3, 1, 1)
    out = fake_quant_tokens(x, 8)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    step = (hi - lo) / 255
    assert ((out - x).abs() <= step / 2 + 1e-5 * x.abs().amax()).all()
    codes = out / step - torch.round(out / step)
    assert codes.abs().amax() < 1e-3   # every value is an integer multiple of its token's step


def test_straight_through_gradients():
    x = torch.randn(4, 16, requires_grad=True)
    round_ste(x * 3).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))
    y = torch.randn(2, 7, 24, requires_grad=True)
    fake_quant_tokens(y, 8).pow(2).sum().backward()
    assert torch.allclose(y.grad, 2 * fake_quant_tokens(y.detach(), 8), atol=1e-6)


def test_clipping_factors_receive_gradients_and_shrink_the_range():
    w = torch.randn(5, 32)
    upper = torch.full((5, 1, 1), 0.5, requires_grad=True)
    lower = torch.full((5, 1, 1), 0.5, requires_grad=True)
    out = fake_quant_weight(w, 4, upper=upper, lower=lower)
    step, _ = weight_grid(w.detach(), 4, upper=upper.detach(), lower=lower.detach())
    assert (out.amax(dim=1) <= w.amax(dim=1) * 0.5 + step.view(-1) / 2 + 1e-6).all()
    (out - w).pow(2).sum().backward()
    assert upper.grad is not None and upper.grad.abs().sum() > 0 and lower.grad.abs().sum() > 0


def test_clipping_at_its_initial_value_is_close_to_round_to_nearest():
    w = torch.randn(64, 128)
    init = torch.sigmoid(torch.tensor(4.0)).expand(64, 1, 1)
    clipped, plain = fake_quant_weight(w, 8, upper=init, lower=init), fake_quant_weight(w, 8)
    step, _ = weight_grid(w, 8)
    # sigmoid(4) = 0.982: the grid is 1.8% narrower, so no value moves by more than that share of the row's
    # largest weight plus a step, and almost every value lands on the same code
    gap = ((1 - init[:, 0]) * w.abs().amax(dim=1, keepdim=True) + step[:, 0]).expand_as(w)
    assert ((clipped - plain).abs() <= gap + 1e-6).all()
    assert ((clipped - plain).abs() > step[:, 0]).float().mean() < 0.02


def test_constant_rows_get_a_finite_grid():
    step, zero = affine_grid(torch.zeros(3, 1), torch.zeros(3, 1), 8)
    assert torch.isfinite(step).all() and torch.isfinite(zero).all()
    assert torch.equal(fake_quant_weight(torch.zeros(3, 8), 8), torch.zeros(3, 8))
    assert torch.equal(fake_quant(torch.zeros(2, 4), step[:2], zero[:2], 8), torch.zeros(2, 4))


@pytest.mark.parametrize("w_bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n_in", [9, 64])
def test_weight_codes_round_trip_in_exactly_their_bits(w_bits, n_in):
    from deltaguard.quant.linear import code_layout, pack_weight_codes, stored_codes_shape, unpack_weight_codes

    codes = torch.randint(0, 1 << w_bits, (5, n_in), dtype=torch.uint8, generator=torch.Generator().manual_seed(w_bits))
    stored = pack_weight_codes(codes, w_bits)
    assert stored.dtype == torch.uint8 and tuple(stored.shape) == stored_codes_shape(w_bits, 5, n_in)
    assert torch.equal(unpack_weight_codes(stored, w_bits, n_in), codes)
    if n_in == 64:   # no padding: the stored bits are exactly w_bits a weight
        assert stored.numel() * 8 == 5 * 64 * w_bits
    assert code_layout(w_bits) == {4: "nibbles", 8: "bytes"}.get(w_bits, "planes")


def test_a_3_bit_linear_stores_3_bits_a_weight_and_its_fake_quantized_values():
    w = torch.randn(6, 64)
    linear = QuantLinear.quantize(w, None, w_bits=3, a_bits=16, group_size=32)
    assert linear.codes.shape == (3, 6, 8)
    assert torch.equal(linear.dequantized_weight(), fake_quant_weight(w, 3, 32))
    assert linear.stored_bits() == 6 * 64 * 3 + 6 * 2 * (32 + 8)   # codes + a float32 step and uint8 zero per group


def test_nibble_packing_round_trips_odd_widths():
    codes = torch.randint(0, 16, (5, 9), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.shape == (5, 5) and torch.equal(unpack_nibbles(packed, 9), codes)


@pytest.mark.parametrize("name", ["w8a8", "w4a16", "w4a8"])
def test_quant_linear_stores_exactly_the_fake_quantized_weight(name):
    plan = scheme(name)
    w, b = torch.randn(24, 256), torch.randn(24)
    upper, lower = torch.rand(24, 256 // (plan.group_size or 256), 1) * 0.5 + 0.5, torch.rand(24, 256 // (plan.group_size or 256), 1) * 0.5 + 0.5
    linear = QuantLinear.quantize(w, b, w_bits=plan.w_bits, a_bits=plan.a_bits, group_size=plan.group_size,
                                  upper=upper, lower=lower)
    expected = fake_quant_weight(w, plan.w_bits, plan.group_size, upper=upper, lower=lower)
    assert torch.equal(linear.dequantized_weight(), expected)
    x = torch.randn(2, 3, 256)
    xq = fake_quant_tokens(x, plan.a_bits) if plan.quantizes_activations else x
    assert torch.allclose(linear(x), xq @ expected.T + b, atol=1e-5)
    assert linear.codes.dtype == torch.uint8
    assert linear.codes.shape[1] == (128 if plan.w_bits == 4 else 256)


def test_bad_settings_fail_in_one_line():
    with pytest.raises(ConfigError, match="scheme"):
        scheme("w3a3")
    with pytest.raises(ConfigError, match="bits"):
        affine_grid(torch.zeros(1), torch.ones(1), 1)
    with pytest.raises(ConfigError, match="group size"):
        fit_group(64, -1)


def test_a_group_size_that_does_not_divide_falls_back_to_the_largest_divisor_below_it():
    assert fit_group(576, 128) == 96 and fit_group(1536, 128) == 128 and fit_group(64, 0) == 64 and fit_group(7, 4) == 1
    w = torch.randn(4, 576)
    linear = QuantLinear.quantize(w, None, w_bits=4, a_bits=16, group_size=128)
    assert linear.step.shape == (4, 6)   # six groups of 96
    assert torch.equal(linear.dequantized_weight(), fake_quant_weight(w, 4, 128))
