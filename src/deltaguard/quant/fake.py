"""Asymmetric affine fake quantization with straight-through gradients: the arithmetic every quantizer shares.

A ``bits``-bit asymmetric grid over a range ``[lo, hi]`` has ``step = (hi - lo) / (2**bits - 1)`` and an
integer zero point ``zero = round(-lo / step)``; a value becomes the code ``q = clamp(round(x / step) + zero,
0, 2**bits - 1)`` and reads back as ``(q - zero) * step``. The range is widened to hold 0 (a row of
positive weights still gets a grid from 0), so the zero point is always a code and 0 is exact. Weights get one grid per output row (or per
group of ``group_size`` input columns); activations get one per token, from the token's own range
("dynamic"). Every element's round-trip error is at most ``step / 2``: rounding costs at most half a step,
and rounding the zero point shifts the grid's ends by at most half a step.

Gradients: ``round_ste`` rounds in the forward pass and passes the gradient straight through, so a loss
reaches both the quantized tensor and — through ``step`` and ``zero`` — the learnable clipping factors
that set ``lo`` and ``hi`` (OmniQuant's learnable weight clipping needs exactly that).

Why hand-written: torchao, optimum-quanto and hqq offer quantized *inference* kernels, but none exposes a
fake-quant whose range is a differentiable function of per-row clipping parameters, which both
OmniQuant-style calibration and Q-realign optimise; the arithmetic itself is a few lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from deltaguard.errors import ConfigError

MIN_STEP = 1e-8   # a constant row (hi == lo) still gets a finite grid, never a division by zero


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def qmax_of(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(f"quantization bits {bits!r} must be an integer from 2 to 8")
    return (1 << bits) - 1


def affine_grid(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(step, integer zero point) of the ``bits``-bit grid over ``[lo, hi]`` (elementwise; differentiable)."""
    qmax = qmax_of(bits)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)   # the grid holds 0, so the zero point is in range
    step = ((hi - lo) / qmax).clamp(min=MIN_STEP)
    zero = round_ste(-lo / step).clamp(0, qmax)
    return step, zero


def fake_quant(x: Tensor, step: Tensor, zero: Tensor, bits: int) -> Tensor:
    """Quantize to the grid and read back (straight-through rounding)."""
    q = torch.clamp(round_ste(x / step) + zero, 0, qmax_of(bits))
    return (q - zero) * step


def quant_codes(x: Tensor, step: Tensor, zero: Tensor, bits: int) -> Tensor:
    """The integer codes (uint8) of ``x`` on the grid — what a packed model stores."""
    with torch.no_grad():
        return torch.clamp(torch.round(x / step) + torch.round(zero), 0, qmax_of(bits)).to(torch.uint8)


def fit_group(in_features: int, group_size: int) -> int:
    """The group size a layer with ``in_features`` inputs uses: ``group_size`` when it divides them (0: the
    whole row), else the largest divisor below it — SmolLM2's 576-wide inputs get groups of 96 where the
    preset says 128, its 1536-wide ones groups of 128. Every layer's grids then tile its rows exactly, and
    the loader recomputes the same size from the same rule."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ConfigError(f"group size {group_size!r} must be a non-negative integer")
    if group_size == 0 or group_size >= in_features:
        return in_features
    return next(d for d in range(group_size, 0, -1) if in_features % d == 0)


def grouped(weight: Tensor, group_size: int) -> Tensor:
    """``[out, in]`` → ``[out, n_groups, group]`` (``group_size`` 0: one group per row; see ``fit_group``)."""
    out_features, in_features = weight.shape
    size = fit_group(in_features, group_size)
    return weight.reshape(out_features, in_features // size, size)


def weight_grid(weight: Tensor, bits: int, group_size: int = 0, *, upper: Tensor | None = None,
                lower: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(step, zero) ``[out, n_groups, 1]`` for a weight, its range optionally shrunk by clipping factors.

    ``upper`` / ``lower`` (each ``[out, n_groups, 1]`` in (0, 1]) multiply the group's max and min: the
    learnable weight clipping of OmniQuant. ``None`` is plain round-to-nearest over the full range.
    """
    groups = grouped(weight, group_size)
    hi, lo = groups.amax(dim=-1, keepdim=True), groups.amin(dim=-1, keepdim=True)
    if upper is not None:
        hi = hi * upper
    if lower is not None:
        lo = lo * lower
    return affine_grid(lo, hi, bits)


def fake_quant_weight(weight: Tensor, bits: int, group_size: int = 0, *, upper: Tensor | None = None,
                      lower: Tensor | None = None) -> Tensor:
    """The weight after an asymmetric ``bits``-bit round trip per row or group (straight-through)."""
    step, zero = weight_grid(weight, bits, group_size, upper=upper, lower=lower)
    return fake_quant(grouped(weight, group_size), step, zero, bits).reshape(weight.shape)


def fake_quant_tokens(x: Tensor, bits: int) -> Tensor:
    """Dynamic asymmetric per-token round trip (one grid per row of the last dim), identity gradient.

    The grid comes from the token's own detached range, so every value is inside it and the straight-through
    gradient is exactly the identity.
    """
    xf = x.float()
    lo = xf.detach().amin(dim=-1, keepdim=True)
    hi = xf.detach().amax(dim=-1, keepdim=True)
    step, zero = affine_grid(lo, hi, bits)
    return fake_quant(xf, step, zero, bits).to(x.dtype)


@dataclass(frozen=True)
class QuantScheme:
    """A weight / activation bit-width preset.

    ``a_bits`` 16 means activations stay in float; ``group_size`` 0 means one grid per output channel.
    """

    name: str
    w_bits: int
    a_bits: int
    group_size: int
    experimental: bool = False
    note: str = ""

    @property
    def quantizes_activations(self) -> bool:
        return self.a_bits < 16


SCHEMES: dict[str, QuantScheme] = {s.name: s for s in (
    QuantScheme("w8a8", 8, 8, 0, note="the released Q-realign setting; per-channel weights, per-token activations"),
    QuantScheme("w8a16", 8, 16, 128, note="weight-only, groups of 128"),
    QuantScheme("w4a16", 4, 16, 128, note="weight-only, groups of 128"),
    QuantScheme("w3a16", 3, 16, 128, note="weight-only, groups of 128 (3-bit codes as three bit planes)"),
    QuantScheme("w4a8", 4, 8, 128, note="groups of 128, per-token INT8 activations"),
    QuantScheme("w4a4", 4, 4, 128, experimental=True,
                note="experimental: 4-bit activations hurt capability badly (Q-realign reports the same)"),
)}


def scheme(name: str) -> QuantScheme:
    """A preset by name (``w8a8``, ``w8a16``, ``w4a16``, ``w3a16``, ``w4a8``, ``w4a4``); one-line error otherwise."""
    found = SCHEMES.get(name.strip().lower())
    if found is None:
        raise ConfigError(f"unknown quantization scheme {name!r}; known: {', '.join(SCHEMES)}")
    return found


__all__ = ["MIN_STEP", "QuantScheme", "SCHEMES", "affine_grid", "fake_quant", "fake_quant_tokens", "fake_quant_weight",
           "fit_group", "grouped", "qmax_of", "quant_codes", "round_ste", "scheme", "weight_grid"]
