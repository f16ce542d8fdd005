"""Packed 1-bit delta matmul for batches that mix tenants: a PyTorch path and a Triton kernel.

``multi_tenant_bitdelta_(y, x, signs, scales, row_slots)`` adds each row's own tenant delta to ``y``;
``multi_tenant_linear`` also computes the shared base product. ``backend="auto"`` uses the Triton
kernel when the tensors are on a CUDA device and Triton imports, and the PyTorch path otherwise, so
nothing breaks on machines without a GPU or without Triton. The ``kernels`` registry lists both.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from deltaguard.errors import ConfigError
from deltaguard.kernels import reference
from deltaguard.kernels.reference import SignsLike, bitdelta_matmul, packed_sign_matmul, rows_by_slot, sign_tables
from deltaguard.registry import Registry

Backend = Literal["auto", "torch", "triton"]


class TorchKernel:
    """PyTorch (CPU or GPU): per-tenant table look-ups over the packed bytes, no unpacked weight."""

    multi_tenant_bitdelta_ = staticmethod(reference.multi_tenant_bitdelta_)


class _LazyTriton:
    """Triton (CUDA): bits unpacked in registers, every tenant of the batch in one launch."""

    @staticmethod
    def multi_tenant_bitdelta_(y: Tensor, x: Tensor, signs: SignsLike, scales: SignsLike, row_slots: Tensor) -> Tensor:
        from deltaguard.kernels import triton_bitdelta

        return triton_bitdelta.multi_tenant_bitdelta_(y, x, signs, scales, row_slots)  # type: ignore[arg-type]


kernels: Registry[type] = Registry("kernel")
kernels.register("torch", TorchKernel)
kernels.register("triton", _LazyTriton)


@functools.cache
def has_triton() -> bool:
    """Whether the ``triton`` package imports (it is an optional dependency: ``deltaguard[gpu]``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def pick_backend(device: torch.device, backend: Backend = "auto") -> str:
    """The kernel used for tensors on ``device``: ``triton`` on CUDA when Triton is installed, else ``torch``."""
    if backend not in ("auto", "torch", "triton"):
        raise ConfigError(f"kernel backend={backend!r} must be one of auto, torch, triton")
    if backend == "auto":
        return "triton" if device.type == "cuda" and torch.cuda.is_available() and has_triton() else "torch"
    if backend == "triton" and (device.type != "cuda" or not has_triton()):
        raise ConfigError(f"kernel backend=triton needs CUDA tensors and the triton package (device is {device})")
    return backend


def multi_tenant_bitdelta_(y: Tensor, x: Tensor, signs: SignsLike, scales: SignsLike, row_slots: Tensor, *,
                           backend: Backend = "auto") -> Tensor:
    """``y[r] += Σ_i scales[t][i]·x[r]·signs[t][i]ᵀ`` with ``t = row_slots[r]`` (``-1``: no delta), in place.

    The Triton path needs ``signs`` stacked ``[T, k, out, G]`` and ``scales`` ``[T, k]``; the torch
    path also takes per-slot sequences.
    """
    chosen = pick_backend(x.device, backend)
    if chosen == "triton" and not isinstance(signs, Tensor):
        signs, scales = torch.stack(list(signs)), torch.stack(list(scales))  # type: ignore[arg-type]
    return kernels.get(chosen).multi_tenant_bitdelta_(y, x, signs, scales, row_slots)


def multi_tenant_linear(x: Tensor, weight: Tensor, bias: Tensor | None, signs: SignsLike, scales: SignsLike,
                        row_slots: Tensor, *, backend: Backend = "auto") -> Tensor:
    """``x·W_baseᵀ + bias`` for every row, plus each row's tenant delta computed from packed bits."""
    return multi_tenant_bitdelta_(F.linear(x, weight, bias), x, signs, scales, row_slots, backend=backend)


__all__ = [
    "Backend", "bitdelta_matmul", "has_triton", "kernels", "multi_tenant_bitdelta_", "multi_tenant_linear",
    "packed_sign_matmul", "pick_backend", "reference", "rows_by_slot", "sign_tables",
]
