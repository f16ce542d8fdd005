"""The in-place KV cache equals transformers' concatenating one, step by step and through reshuffles."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from deltaguard.serve.kv_cache import MIN_CAPACITY, GrowingLayer, growing_cache, is_plain_dynamic


def test_appends_equal_concatenation_and_reuse_the_buffer():
    g = torch.Generator().manual_seed(0)
    growing, plain = GrowingLayer(), DynamicLayer()
    prompt = torch.randn(3, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g)
    growing.update(*prompt)
    plain.update(*prompt)
    buffer = growing.keys.untyped_storage().data_ptr()
    for step in range(2 * MIN_CAPACITY):
        new = torch.randn(3, 2, 1, 4, generator=g), torch.randn(3, 2, 1, 4, generator=g)
        keys, values = growing.update(*new)
        ref_keys, ref_values = plain.update(*new)
        assert torch.equal(keys, ref_keys) and torch.equal(values, ref_values)
        assert growing.get_seq_length() == 6 + step
        if 6 + step <= MIN_CAPACITY:
            assert keys.untyped_storage().data_ptr() == buffer  # written in place, no new allocation


def test_row_selection_then_growth_stays_correct():
    g = torch.Generator().manual_seed(1)
    growing, plain = GrowingLayer(), DynamicLayer()
    states = torch.randn(4, 2, 7, 4, generator=g), torch.randn(4, 2, 7, 4, generator=g)
    growing.update(*states)
    plain.update(*states)
    keep = torch.tensor([0, 2])
    growing.batch_select_indices(keep)
    plain.batch_select_indices(keep)
    new = torch.randn(2, 2, 1, 4, generator=g), torch.randn(2, 2, 1, 4, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(growing.update(*new), plain.update(*new)))


def test_growing_cache_is_filled_and_recognised():
    layers = [(torch.ones(2, 1, 3, 4) * i, torch.zeros(2, 1, 3, 4)) for i in range(3)]
    cache = growing_cache(layers)
    assert is_plain_dynamic(cache) and cache.get_seq_length() == 3
    assert all(torch.equal(layer.keys, k) for layer, (k, _) in zip(cache.layers, layers))
    empty = growing_cache()
    empty.update(torch.ones(1, 1, 2, 4), torch.ones(1, 1, 2, 4), layer_idx=0)
    assert isinstance(empty.layers[0], GrowingLayer)
