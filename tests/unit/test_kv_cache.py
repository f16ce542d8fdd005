"""The in-place KV cache equals transformers' concatenating one, step by step and through reshuffles."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from deltaguard.kv_cache import MIN_CAPACITY, GrowingLayer, growing_cache, is_plain_dynamic


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


def test_cache_for_only_full_attention_models():
    from transformers import LlamaConfig, MistralConfig

    from deltaguard.kv_cache import cache_for
    from tinymodels import make_tiny_llama

    assert isinstance(cache_for(make_tiny_llama(seed=0)).layer_class_to_replicate(), GrowingLayer)

    class Sliding:  # a model whose config asks for sliding-window attention
        config = MistralConfig(sliding_window=16)

    class Mixed:
        config = LlamaConfig(num_hidden_layers=2, layer_types=["full_attention", "sliding_attention"])

    assert cache_for(Sliding()) is None and cache_for(Mixed()) is None and cache_for(object()) is None


def test_batched_generation_is_the_same_with_either_cache(monkeypatch):
    from deltaguard.generation import GenerationConfig, decode_batch
    from tinymodels import make_tiny_llama

    model = make_tiny_llama(seed=3)
    prompts = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22]]
    config = GenerationConfig(max_new_tokens=40, batch_size=3)
    growing = decode_batch(model, prompts, config=config, stop_ids={-1}, pad_id=0)
    monkeypatch.setattr("deltaguard.kv_cache.cache_for", lambda model: None)
    plain = decode_batch(model, prompts, config=config, stop_ids={-1}, pad_id=0)
    assert growing == plain and all(len(row) == 40 for row in growing)
