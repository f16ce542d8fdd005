"""A batched KV cache that appends in place: one preallocated buffer per layer, grown geometrically.

Transformers' ``DynamicLayer`` appends a decode step's keys and values with ``torch.cat``, which
allocates and copies the whole cache of every layer on every step. For a batch of 16 sequences
of ~100 tokens that is ~60 fresh megabytes per step, and on a CPU the copies (and the page faults
of the fresh allocations) took about a third of each decode step. ``GrowingLayer`` keeps the cache
in a buffer with spare positions and writes the new states into it; ``keys``/``values`` are views of
the filled part, so everything that reads a ``DynamicLayer`` reads this one unchanged.

Used by the serving engine and by batched generation (``generation.decode_batch``), for models whose
layers all use full attention (``cache_for``); others keep transformers' own cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

MIN_CAPACITY = 64      # positions reserved at least
GROWTH = 1.5           # capacity factor when the buffer is full (amortised O(1) copies per token)


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``update`` writes into spare capacity instead of concatenating."""

    def __init__(self) -> None:
        super().__init__()
        self._key_buffer: Tensor | None = None
        self._value_buffer: Tensor | None = None

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        buffer = self._key_buffer
        if buffer is None or buffer.shape[0] != key_states.shape[0] or needed > buffer.shape[-2]:
            self._reserve(key_states, value_states, length, needed)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[:, :, length:needed] = key_states
        self._value_buffer[:, :, length:needed] = value_states
        self.keys = self._key_buffer[:, :, :needed]
        self.values = self._value_buffer[:, :, :needed]
        return self.keys, self.values

    def _reserve(self, key_states: Tensor, value_states: Tensor, length: int, needed: int) -> None:
        """A new buffer with room for ``needed`` positions and more; the cached ``length`` are copied over."""
        capacity = max(MIN_CAPACITY, int(needed * GROWTH))
        batch, heads, _, key_dim = key_states.shape
        keys = key_states.new_empty((batch, heads, capacity, key_dim))
        values = value_states.new_empty((batch, value_states.shape[1], capacity, value_states.shape[-1]))
        if length:
            keys[:, :, :length] = self.keys
            values[:, :, :length] = self.values
        self._key_buffer, self._value_buffer = keys, values

    def _drop_buffers(self) -> None:
        """After an operation replaced ``keys``/``values``, the next update re-seeds a buffer from them."""
        self._key_buffer = self._value_buffer = None

    def reset(self) -> None:
        self._drop_buffers()
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._drop_buffers()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._drop_buffers()

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)
        self._drop_buffers()


def growing_cache(layers: list[tuple[Tensor, Tensor]] | None = None) -> DynamicCache:
    """A ``DynamicCache`` of ``GrowingLayer``s, filled with ``layers`` (``[B, heads, L, dim]`` pairs) if given."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer   # layers created on first use get spare capacity too
    for keys, values in layers or []:
        layer = GrowingLayer()
        layer.update(keys, values)
        cache.layers.append(layer)
    return cache


def cache_for(model: Any) -> DynamicCache | None:
    """An empty growing cache when every layer of ``model`` uses full attention, else ``None``.

    Sliding-window or otherwise special layers need transformers' own layer types, so for those
    models the caller passes no cache and the model builds its usual one.
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        return None
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return None
    return growing_cache()


def cache_tensors(cache: Any) -> list[tuple[Tensor, Tensor]]:
    """The ``(keys, values)`` of every layer of a dynamic cache (``[B, heads, L, dim]`` each)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def is_plain_dynamic(cache: Any) -> bool:
    """Whether every layer is a full-attention dynamic layer (no sliding window, no quantisation)."""
    layers = getattr(cache, "layers", None)
    return layers is not None and all(type(layer) in (DynamicLayer, GrowingLayer) for layer in layers)
