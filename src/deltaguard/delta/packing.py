"""Lossless bit packing: pure tensor functions, the reference for every fast path.

Signs are packed row-wise along the input dimension: byte ``b`` of row ``r`` holds columns
``8b .. 8b+7``, column ``8b + j`` in bit ``j`` (little-endian bit order). A set bit means +1, a clear
bit −1. k-bit codes are stored as k such bit planes.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(bits: Tensor) -> Tensor:
    """Pack a bool tensor ``[..., n]`` into uint8 ``[..., ceil(n/8)]`` (zero-padded)."""
    n = bits.shape[-1]
    pad = (-n) % 8
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad), value=False)
    grouped = bits.reshape(*bits.shape[:-1], -1, 8).to(torch.uint8)
    return (grouped * _BIT_WEIGHTS.to(bits.device)).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of ``pack_bits``: uint8 ``[..., ceil(n/8)]`` → bool ``[..., n]``."""
    weights = _BIT_WEIGHTS.to(packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    return bits.reshape(*packed.shape[:-1], -1)[..., :n]


def pack_signs(delta: Tensor) -> Tensor:
    """sign(delta) as bits, row-wise; zero counts as positive (1 bit can only say ±)."""
    return pack_bits(delta >= 0)


def unpack_signs(packed: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Packed sign bits → a ±1 tensor of ``dtype``."""
    return unpack_bits(packed, n).to(dtype) * 2 - 1


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Integer codes in ``[0, 2**bits)`` ``[..., n]`` → ``bits`` bit planes, uint8 ``[bits, ..., ceil(n/8)]``."""
    codes = codes.to(torch.int32)
    return torch.stack([pack_bits(((codes >> plane) & 1).bool()) for plane in range(bits)])


def unpack_codes(planes: Tensor, n: int) -> Tensor:
    """Inverse of ``pack_codes`` → int32 codes ``[..., n]``."""
    codes = torch.zeros((*planes.shape[1:-1], n), dtype=torch.int32, device=planes.device)
    for plane in range(planes.shape[0]):
        codes |= unpack_bits(planes[plane], n).to(torch.int32) << plane
    return codes
