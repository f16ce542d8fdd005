"""Equivalent transforms leave a block's float function unchanged; folding writes them in for good."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from tinymodels import make_tiny_llama
from deltaguard.errors import ConfigError
from deltaguard.quant.block import LINEARS, SMOOTH_PAIRS, BlockQuantizer, activation_absmax
from deltaguard.quant.fake import QuantScheme, scheme


def _block_inputs(model, ids):
    """The first block's input and the keyword arguments the model passes it."""
    seen = {}

    def catch(_module, args, kwargs):
        seen["hidden"], seen["kwargs"] = args[0], {k: v for k, v in kwargs.items() if k not in ("cache", "use_cache")}

    handle = model.model.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return seen["hidden"], seen["kwargs"]


@pytest.fixture
def block_and_inputs():
    model = make_tiny_llama(seed=4, n_layers=1)   # 4 query heads over 2 key/value heads: the v → o scale is shared
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    hidden, kwargs = _block_inputs(model, ids)
    return model.model.layers[0], hidden, kwargs


def _randomise_scales(quantizer):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for s in quantizer.smooth.values():
            s.copy_(torch.rand(s.shape, generator=generator) * 3 + 0.2)


def test_smoothing_keeps_the_float_block_function(block_and_inputs):
    layer, hidden, kwargs = block_and_inputs
    with torch.no_grad():
        expected = layer(hidden, **kwargs)
        quantizer = BlockQuantizer(layer, scheme("w8a8"), act_absmax=activation_absmax(layer, iter([(hidden, kwargs)])))
        assert set(quantizer.smooth) == set(SMOOTH_PAIRS)
        _randomise_scales(quantizer)
        smoothed = functional_call(layer, quantizer.smoothed(), (hidden,), kwargs, strict=False)
    torch.testing.assert_close(smoothed, expected, rtol=1e-5, atol=1e-5)


def test_folding_writes_the_transform_into_the_block(block_and_inputs):
    layer, hidden, kwargs = block_and_inputs
    with torch.no_grad():
        expected = layer(hidden, **kwargs)
        before = {n: p.clone() for n, p in layer.named_parameters()}
        quantizer = BlockQuantizer(layer, scheme("w8a8"), act_absmax=activation_absmax(layer, iter([(hidden, kwargs)])))
        _randomise_scales(quantizer)
        folded = quantizer.fold_()
        after = layer(hidden, **kwargs)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(layer.input_layernorm.weight, before["input_layernorm.weight"])
    assert set(folded) == set(LINEARS)
    assert torch.equal(folded["mlp.down_proj"].weight, layer.mlp.down_proj.weight)
    assert folded["mlp.down_proj"].upper is not None and folded["mlp.down_proj"].upper.shape == (64, 1, 1)


def test_activation_hooks_come_off(block_and_inputs):
    layer, hidden, kwargs = block_and_inputs
    quantizer = BlockQuantizer(layer, scheme("w8a8"), smooth=False)
    quantizer.quantize_activations(True)
    assert all(len(m._forward_pre_hooks) == 1 for n, m in layer.named_modules() if n in LINEARS)
    quantizer.fold_()
    assert all(len(m._forward_pre_hooks) == 0 for n, m in layer.named_modules() if n in LINEARS)


def test_clip_and_smooth_parameters_get_gradients(block_and_inputs):
    layer, hidden, kwargs = block_and_inputs
    quantizer = BlockQuantizer(layer, QuantScheme("test", 4, 8, 32), act_absmax=activation_absmax(layer, iter([(hidden, kwargs)])))
    quantizer.quantize_activations(True)
    quantizer(hidden, **kwargs).pow(2).mean().backward()
    groups = quantizer.trainable()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in groups["clip"] + groups["smooth"])
    assert any(p.grad.abs().sum() > 0 for p in groups["clip"]) and any(p.grad.abs().sum() > 0 for p in groups["smooth"])
    assert all(p.grad is None for p in layer.parameters())


def test_a_block_of_another_layout_is_refused():
    with pytest.raises(ConfigError, match="Llama-family"):
        BlockQuantizer(torch.nn.Linear(4, 4), scheme("w8a8"), smooth=False)
    with pytest.raises(ConfigError, match="absmax"):
        BlockQuantizer(make_tiny_llama(n_layers=1).model.layers[0], scheme("w8a8"))
