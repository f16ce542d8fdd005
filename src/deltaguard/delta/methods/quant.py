"""Round-to-nearest asymmetric quantisation of flat groups: the shared math of ``kbit`` and ``mixed``.

Each group stores an fp16 step and an fp16 offset. The step is rounded *up* and the offset *down*
to fp16, so every value still lies in ``[offset, offset + step·(2^k − 1)]`` and the rounding error
of every element is at most ``step / 2``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltaguard.delta.packing import pack_codes, unpack_codes


def _fp16_up(x: Tensor) -> Tensor:
    y = x.to(torch.float16)
    return torch.where(y.float() < x, torch.nextafter(y, torch.tensor(float("inf"), dtype=torch.float16)), y)


def _fp16_down(x: Tensor) -> Tensor:
    y = x.to(torch.float16)
    return torch.where(y.float() > x, torch.nextafter(y, torch.tensor(float("-inf"), dtype=torch.float16)), y)


def quantize_groups(values: Tensor, bits: int, group_size: int) -> dict[str, Tensor]:
    """Quantise a flat fp32 tensor in groups; returns packed codes, steps and offsets."""
    n = values.numel()
    pad = (-n) % group_size
    flat = torch.nn.functional.pad(values.reshape(-1).float(), (0, pad))
    groups = flat.reshape(-1, group_size)  # [n_groups, group_size]
    low = groups.min(dim=1).values
    high = groups.max(dim=1).values
    levels = 2**bits - 1
    offset = _fp16_down(low)
    step = _fp16_up(torch.clamp((high - offset.float()) / levels, min=torch.finfo(torch.float16).tiny))
    codes = torch.round((groups - offset.float()[:, None]) / step.float()[:, None]).clamp_(0, levels)
    return {"codes": pack_codes(codes.to(torch.int32).reshape(-1), bits), "steps": step, "offsets": offset}


def dequantize_groups(parts: dict[str, Tensor], n: int, group_size: int) -> Tensor:
    """Inverse of ``quantize_groups`` → flat fp32 tensor of ``n`` values."""
    n_groups = parts["steps"].shape[0]
    codes = unpack_codes(parts["codes"], n_groups * group_size).reshape(n_groups, group_size)
    values = codes.float() * parts["steps"].float()[:, None] + parts["offsets"].float()[:, None]
    return values.reshape(-1)[:n]
