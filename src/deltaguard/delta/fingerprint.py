"""A fingerprint of a base model, so a delta is never silently applied to another base.

It hashes every tensor's name, shape and values rounded to bfloat16, which makes it the same
whether the base is read from disk in fp32 or loaded in memory in fp32 or bf16, and different for
any base whose weights differ beyond bf16 rounding. A tied output head is hashed once (as the
embedding it shares), as in the checkpoint on disk.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch
from torch import Tensor

PREFIX = "bf16-sha256:"


def tensor_digest(tensor: Tensor) -> str:
    """sha256 of a tensor's values after rounding to bfloat16."""
    data = tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy()
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def combine(entries: Iterable[tuple[str, tuple[int, ...], str]]) -> str:
    """Fingerprint from (name, shape, digest) triples, independent of their order."""
    digest = hashlib.sha256()
    for name, shape, tensor_hash in sorted(entries):
        digest.update(f"{name}|{','.join(map(str, shape))}|{tensor_hash}\n".encode())
    return PREFIX + digest.hexdigest()


def fingerprint_model(model: Any) -> str:
    """Fingerprint of an in-memory HF model, matching ``fingerprint`` of its saved checkpoint."""
    seen: set[int] = set()
    entries = []
    for name, tensor in model.state_dict(keep_vars=False).items():
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        if pointer in seen:  # tied weights are saved once
            continue
        seen.add(pointer)
        entries.append((name, tuple(tensor.shape), tensor_digest(tensor)))
    return combine(entries)
