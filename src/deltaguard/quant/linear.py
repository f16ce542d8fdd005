"""``QuantLinear``: a linear layer whose weight is stored quantized for real (codes + per-row grids).

Storage per layer: ``codes`` (uint8, laid out by ``code_layout``: at 4 bits two codes a byte, the even
column in the low nibble; at 8 bits one a byte; at 2, 3, 5, 6 or 7 bits ``w_bits`` bit planes
``[w_bits, out, ceil(in/8)]``, so a 3-bit weight takes exactly 3 bits), ``step`` (float32) and the
integer ``zero`` code (uint8), both ``[out, n_groups]``, and the float bias if any. The forward
pass fake-quantizes the input per token (when ``a_bits`` < 16) and multiplies by the dequantized weight,
which is cached after first use. The dequantized values are exactly the fake-quantized ones calibration
optimised, so a converted model reproduces its calibrated self.

Why no integer GEMM: the point of this runtime is faithful numbers and real on-disk size; the W8A8
product computed in float over integer-valued grids gives the same result as an int8 kernel up to float
rounding, and CPU int8 matmul in PyTorch is not faster than float at this model size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deltaguard.delta.packing import pack_codes, unpack_codes
from deltaguard.errors import FormatError
from deltaguard.quant.fake import fake_quant_tokens, fit_group, grouped, qmax_of, quant_codes, weight_grid


def pack_nibbles(codes: Tensor) -> Tensor:
    """uint8 codes in [0, 15] → two per byte along the last dim (the even column in the low nibble)."""
    if codes.shape[-1] % 2:
        codes = F.pad(codes, (0, 1))
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(packed: Tensor, n_cols: int) -> Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)[..., :n_cols]


def code_layout(w_bits: int) -> str:
    """How ``w_bits`` codes are stored: ``nibbles`` (4 bits, two a byte: the common case, unpacked with two
    shifts), ``bytes`` (8 bits) or ``planes`` (any other width as that many bit planes: exact size, no
    byte wasted on a 3-bit code)."""
    return "nibbles" if w_bits == 4 else "bytes" if w_bits == 8 else "planes"


def stored_codes_shape(w_bits: int, n_out: int, n_in: int) -> tuple[int, ...]:
    """The shape of a layer's stored ``codes`` tensor."""
    layout = code_layout(w_bits)
    if layout == "planes":
        return (w_bits, n_out, (n_in + 7) // 8)
    return (n_out, (n_in + 1) // 2 if layout == "nibbles" else n_in)


def pack_weight_codes(codes: Tensor, w_bits: int) -> Tensor:
    """uint8 codes ``[out, in]`` in ``[0, 2**w_bits)`` → their stored form (``code_layout``)."""
    layout = code_layout(w_bits)
    if layout == "nibbles":
        return pack_nibbles(codes)
    return codes.to(torch.uint8) if layout == "bytes" else pack_codes(codes, w_bits)


def unpack_weight_codes(stored: Tensor, w_bits: int, n_in: int) -> Tensor:
    """Inverse of ``pack_weight_codes`` → uint8 codes ``[out, in]``."""
    layout = code_layout(w_bits)
    if layout == "nibbles":
        return unpack_nibbles(stored, n_in)
    return stored if layout == "bytes" else unpack_codes(stored, n_in).to(torch.uint8)


class QuantLinear(nn.Module):
    """A packed ``w_bits`` weight with per-row (or per-group) asymmetric grids; see the module docstring."""

    def __init__(self, codes: Tensor, step: Tensor, zero: Tensor, bias: Tensor | None, *, in_features: int,
                 w_bits: int, a_bits: int, group_size: int) -> None:
        super().__init__()
        qmax_of(w_bits)
        self.in_features, self.out_features = in_features, int(step.shape[0])
        self.w_bits, self.a_bits, self.group_size = w_bits, a_bits, group_size
        size = fit_group(in_features, group_size)
        if tuple(codes.shape) != stored_codes_shape(w_bits, self.out_features, in_features) \
                or tuple(step.shape) != (self.out_features, in_features // size) or step.shape != zero.shape:
            raise FormatError(f"quantized linear tensors do not fit {self.out_features}x{in_features} "
                              f"(codes {tuple(codes.shape)}, step {tuple(step.shape)}, zero {tuple(zero.shape)})")
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("step", step.float())
        self.register_buffer("zero", zero.round().to(torch.uint8))   # an integer code in [0, 2**bits - 1]
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._weight: Tensor | None = None

    @classmethod
    @torch.no_grad()
    def quantize(cls, weight: Tensor, bias: Tensor | None, *, w_bits: int, a_bits: int, group_size: int,
                 upper: Tensor | None = None, lower: Tensor | None = None) -> "QuantLinear":
        """Round ``weight`` to its grid (clip factors applied) and store the codes."""
        weight = weight.detach().float()
        step, zero = weight_grid(weight, w_bits, group_size, upper=upper, lower=lower)
        codes = quant_codes(grouped(weight, group_size), step, zero, w_bits).reshape(weight.shape)
        return cls(pack_weight_codes(codes, w_bits), step.squeeze(-1), zero.squeeze(-1), bias, in_features=weight.shape[1], w_bits=w_bits,
                   a_bits=a_bits, group_size=group_size)

    @classmethod
    @torch.no_grad()
    def from_grid(cls, weight: Tensor, step: Tensor, zero: Tensor, bias: Tensor | None, *, w_bits: int, a_bits: int,
                  group_size: int) -> "QuantLinear":
        """Store a weight that already lies on the given grids (``[out, n_groups, 1]``; GPTQ's output)."""
        weight = weight.detach().float()
        codes = quant_codes(grouped(weight, group_size), step.float(), zero.float(), w_bits).reshape(weight.shape)
        return cls(pack_weight_codes(codes, w_bits), step.float().squeeze(-1), zero.squeeze(-1), bias, in_features=weight.shape[1], w_bits=w_bits,
                   a_bits=a_bits, group_size=group_size)

    def dequantized_weight(self) -> Tensor:
        codes = unpack_weight_codes(self.codes, self.w_bits, self.in_features)
        size = fit_group(self.in_features, self.group_size)
        values = codes.float().reshape(self.out_features, self.in_features // size, size)
        zero = self.zero.float()[..., None]
        return ((values - zero) * self.step[..., None]).reshape(self.out_features, self.in_features)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._weight = None   # new codes: the cached dequantized weight is stale
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if self._weight is None or self._weight.device != x.device:
            self._weight = self.dequantized_weight().to(x.device)
        if self.a_bits < 16:
            x = fake_quant_tokens(x, self.a_bits)
        weight = self._weight if x.dtype == torch.float32 else self._weight.to(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def stored_bits(self) -> int:
        """Bits this layer stores (codes, grids, bias)."""
        return sum(t.numel() * t.element_size() * 8 for t in (self.codes, self.step, self.zero)
                   ) + (0 if self.bias is None else self.bias.numel() * self.bias.element_size() * 8)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, w_bits={self.w_bits}, "
                f"a_bits={self.a_bits}, group_size={self.group_size}")


__all__ = ["QuantLinear", "code_layout", "pack_nibbles", "pack_weight_codes", "stored_codes_shape", "unpack_nibbles",
           "unpack_weight_codes"]
