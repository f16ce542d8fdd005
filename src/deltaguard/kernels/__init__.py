"""Packed 1-bit delta matmul for batches that mix tenants: PyTorch, C++ (CPU) and Triton (GPU) paths.

``multi_tenant_bitdelta_(y, x, signs, scales, row_slots)`` adds each row's own tenant delta to ``y``;
``multi_tenant_linear`` also computes the shared base product. ``backend="auto"`` picks the Triton
kernel for CUDA tensors when Triton imports, the C++ kernel for CPU tensors when it builds on this
machine (AVX2 or AVX-512 and a compiler), and the PyTorch path otherwise, so nothing breaks on
machines without a GPU, Triton or a compiler. The ``kernels`` registry lists all three.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from deltaguard.errors import ConfigError
from deltaguard.kernels import cpu_bitdelta, reference
from deltaguard.kernels.reference import SignsLike, bitdelta_matmul, packed_sign_matmul, rows_by_slot, sign_tables
from deltaguard.registry import Registry

Backend = Literal["auto", "torch", "cpp", "triton"]
BACKENDS = ("auto", "torch", "cpp", "triton")


class TorchKernel:
    """PyTorch (CPU or GPU): per-tenant table look-ups over the packed bytes, no unpacked weight."""

    multi_tenant_bitdelta_ = staticmethod(reference.multi_tenant_bitdelta_)


class CppKernel:
    """C++ (x86 CPU, AVX2/AVX-512): packed bits as lane masks of masked adds, every tenant in one call."""

    multi_tenant_bitdelta_ = staticmethod(cpu_bitdelta.multi_tenant_bitdelta_)


class _LazyTriton:
    """Triton (CUDA): bits unpacked in registers, every tenant of the batch in one launch."""

    @staticmethod
    def multi_tenant_bitdelta_(y: Tensor, x: Tensor, signs: SignsLike, scales: SignsLike, row_slots: Tensor) -> Tensor:
        from deltaguard.kernels import triton_bitdelta

        return triton_bitdelta.multi_tenant_bitdelta_(y, x, signs, scales, row_slots)  # type: ignore[arg-type]


kernels: Registry[type] = Registry("kernel")
kernels.register("torch", TorchKernel)
kernels.register("cpp", CppKernel)
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
    """The kernel for tensors on ``device``: Triton on CUDA, C++ on CPU where each is usable, else ``torch``."""
    if backend not in BACKENDS:
        raise ConfigError(f"kernel backend={backend!r} must be one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if torch.cuda.is_available() and has_triton() else "torch"
        return "cpp" if device.type == "cpu" and cpu_bitdelta.available() else "torch"
    if backend == "triton" and (device.type != "cuda" or not has_triton()):
        raise ConfigError(f"kernel backend=triton needs CUDA tensors and the triton package (device is {device})")
    if backend == "cpp" and device.type != "cpu":
        raise ConfigError(f"kernel backend=cpp needs CPU tensors (device is {device})")
    if backend == "cpp" and not cpu_bitdelta.available():
        reason = cpu_bitdelta.disabled_reason() or "it did not build on this machine (see the log)"
        raise ConfigError(f"kernel backend=cpp: the C++ CPU kernel is unavailable: {reason}")
    return backend


def multi_tenant_bitdelta_(y: Tensor, x: Tensor, signs: SignsLike, scales: SignsLike, row_slots: Tensor, *,
                           backend: Backend = "auto") -> Tensor:
    """``y[r] += Σ_i scales[t][i]·x[r]·signs[t][i]ᵀ`` with ``t = row_slots[r]`` (``-1``: no delta), in place.

    The Triton path needs ``signs`` stacked ``[T, k, out, G]`` and ``scales`` ``[T, k]``; the torch
    and C++ paths also take per-slot sequences.
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
    "BACKENDS", "Backend", "bitdelta_matmul", "cpu_bitdelta", "has_triton", "kernels", "multi_tenant_bitdelta_", "multi_tenant_linear",
    "packed_sign_matmul", "pick_backend", "reference", "rows_by_slot", "sign_tables",
]
