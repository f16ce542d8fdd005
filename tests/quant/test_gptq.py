"""GPTQ against its published invariants: layer error on the calibration inputs at most round-to-nearest's,
weights on the stored grids, the Hessian accumulated exactly, and the transform on a tiny model."""

from __future__ import annotations

import pytest
import torch

from tinymodels import make_tiny_llama, transform_errors
from deltaguard.errors import ConfigError
from deltaguard.quant.fake import fake_quant_weight
from deltaguard.quant.gptq import HessianAccumulator, gptq_quantize
from deltaguard.quant.linear import QuantLinear


def _correlated_inputs(n=512, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g) * 0.3 + torch.eye(d)
    scales = torch.rand(d, generator=g) * 4 + 0.1   # some input channels matter far more than others
    return (torch.randn(n, d, generator=g) @ mixing) * scales


@pytest.mark.parametrize("bits,group,act_order", [(4, 0, True), (3, 16, True), (4, 16, False), (8, 32, True)])
def test_gptq_error_is_at_most_round_to_nearest(bits, group, act_order):
    x = _correlated_inputs()
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(1))
    acc = HessianAccumulator(64)
    acc.add(x)
    q, step, zero = gptq_quantize(w, acc.h, bits=bits, group_size=group, act_order=act_order)
    rtn = fake_quant_weight(w, bits, group)   # the same static grids, plain rounding
    gptq_error = (x @ (w - q).T).pow(2).sum()
    rtn_error = (x @ (w - rtn).T).pow(2).sum()
    assert gptq_error <= rtn_error
    if bits <= 4:
        assert gptq_error < 0.9 * rtn_error   # and clearly better where rounding is coarse
    stored = QuantLinear.from_grid(q, step, zero, None, w_bits=bits, a_bits=16, group_size=group)
    assert torch.equal(stored.dequantized_weight(), q)   # every value is on its group's grid


def test_hessian_accumulates_over_batches_and_skips_padding():
    x = _correlated_inputs(n=40, d=8)
    acc = HessianAccumulator(8)
    acc.add(x[:10])
    acc.add(torch.cat([x[10:], torch.full((5, 8), 99.0)]), mask=torch.cat([torch.ones(30), torch.zeros(5)]))
    torch.testing.assert_close(acc.h, (2 * x.double().T @ x.double() / 40), rtol=1e-9, atol=1e-9)
    assert acc.n == 40


def test_dead_inputs_get_zero_weights_and_bad_damping_is_refused():
    x = _correlated_inputs(n=128, d=16)
    x[:, 3] = 0.0
    acc = HessianAccumulator(16)
    acc.add(x)
    q, _, _ = gptq_quantize(torch.randn(4, 16), acc.h, bits=4)
    assert torch.all(q[:, 3].abs() <= q.abs().amax())  # finite, on the grid
    with pytest.raises(ConfigError, match="damp"):
        gptq_quantize(torch.randn(4, 16), acc.h, bits=4, damp=1.5)


def test_gptq_and_awq_transforms_beat_rtn_on_a_tiny_model(tiny_tokenizer):
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), hidden=128, intermediate=256)
    errors, _ = transform_errors(model, tiny_tokenizer, ("rtn3", "gptq3", "awq3"), n_calib=32)
    assert errors["gptq3"] < errors["rtn3"] and errors["awq3"] < errors["rtn3"]
