"""The shared sampler never yields an invalid distribution, whatever the settings; bad rows are reported."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaguard.sampling import GREEDY_TEMPERATURE, nucleus_probs, pick_token, pick_tokens, row_is_sampleable


def test_plain_settings_equal_softmax_of_scaled_logits():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 5
    torch.testing.assert_close(nucleus_probs(logits, 0.7, 1.0), torch.softmax(logits / 0.7, dim=-1))


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass_and_renormalises():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    probs = nucleus_probs(logits, 1.0, 0.7)  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: two tokens kept
    torch.testing.assert_close(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))


@pytest.mark.parametrize("temperature", [GREEDY_TEMPERATURE, 1e-4, 1e-2])
def test_tiny_temperatures_do_not_overflow(temperature):
    logits = torch.tensor([[80.0, 79.0, -1e30, 3.0]])  # raw logits / 1e-5 overflow float32
    probs = nucleus_probs(logits, temperature, 1.0)
    assert torch.isfinite(probs).all() and math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)
    assert int(probs.argmax()) == 0


def test_below_the_greedy_temperature_picks_the_argmax_even_with_a_generator():
    logits = torch.tensor([1.0, 3.0, 2.0])
    generator = torch.Generator().manual_seed(0)
    assert pick_token(logits, temperature=1e-30, top_p=1e-30, generator=generator) == 1
    assert pick_tokens(logits[None], temperature=0.0, top_p=1.0, generators=[generator]).tolist() == [1]


def test_a_vanishing_top_p_keeps_the_top_token():
    logits = torch.tensor([[0.1, 0.2, 5.0, 0.3]])
    probs = nucleus_probs(logits, 1.0, 1e-40)
    assert probs.tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_per_row_settings():
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    probs = nucleus_probs(logits, torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(probs[0], torch.softmax(logits[0], -1))
    assert probs[1].tolist() == [1.0, 0.0, 0.0]  # the top token alone holds > 0.5 at T = 0.5


def test_rows_with_nan_or_positive_infinity_or_nothing_finite_are_not_sampleable():
    inf = float("inf")
    logits = torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [inf, 1.0], [-inf, -inf], [-inf, 2.0]])
    assert row_is_sampleable(logits).tolist() == [True, False, False, False, True]


@settings(max_examples=200, deadline=None)
@given(temperature=st.floats(min_value=GREEDY_TEMPERATURE, max_value=1e6),
       top_p=st.floats(min_value=1e-300, max_value=1.0, exclude_min=False),
       scale=st.floats(min_value=1e-3, max_value=1e30), seed=st.integers(0, 2**16))
def test_property_any_setting_gives_a_valid_distribution(temperature, top_p, scale, seed):
    logits = torch.randn(2, 17, generator=torch.Generator().manual_seed(seed)) * scale
    probs = nucleus_probs(logits, temperature, top_p)
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2), rtol=0, atol=1e-5)
    token = pick_token(logits[0], temperature=temperature, top_p=top_p, generator=torch.Generator().manual_seed(seed))
    assert 0 <= token < 17 and float(probs[0, token]) > 0
