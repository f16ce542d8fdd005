"""C++ CPU kernels: the multi-tenant 1-bit delta matmul on packed bits, and a tenant's merged weight tiles.

The PyTorch path turns packed bytes into table look-ups (``reference.packed_sign_matmul``); at one
or two rows per tenant — decoding — it costs about 1 ns per look-up however few rows share it. This
kernel (``csrc/bitdelta_cpu.cpp``) keeps the bits packed and uses them as SIMD operands: on AVX-512
the nibbles of 16 output rows index a 16-float table of x's subset sums (one permute adds 64 weights
of a row), elsewhere 8 or 16 bits are the lane mask of one masked add; every tenant of a batch is
handled in one call. Against its first form (masked adds, one accumulator per row) the look-ups and
register blocking are 1.8–2.7× faster at 1–4 rows per tenant on the model's shapes
(``benchmarks/bench_serve_decode.py`` measures the whole engine). ``merged_linear`` builds one
tenant's weight tiles for its prompt in one SIMD pass over the bits (no int32 copies, no look-ups).

It is compiled with ``torch.utils.cpp_extension`` on first use (about 30 s, once per machine; then
loaded from torch's extension cache) with ``-march=native``. Anything that stops it — no AVX2, no
compiler or ninja, ``DELTAGUARD_CPU_KERNEL=0`` — leaves ``load()`` returning ``None`` and the
PyTorch path in use, with the reason logged once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from deltaguard.errors import ConfigError

log = logging.getLogger("deltaguard.kernels")

SOURCE = Path(__file__).parent / "csrc" / "bitdelta_cpu.cpp"
ENV_SWITCH = "DELTAGUARD_CPU_KERNEL"     # "0"/"off"/"false": never build or use the C++ kernel
SIMD_LEVELS = ("AVX2", "AVX512")         # torch.backends.cpu.get_cpu_capability() values the kernel supports
MAX_ROWS = 16                            # rows of one tenant from which the tiled PyTorch GEMM is faster


def _cpu_tag() -> str:
    """A short tag of this CPU's instruction-set flags: a ``-march=native`` build cached in a shared home
    directory must not be loaded on a different CPU."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = torch.backends.cpu.get_cpu_capability()
    return hashlib.sha256(flags.encode()).hexdigest()[:10]


def disabled_reason() -> str | None:
    """Why the kernel cannot be used on this machine without trying to build it (``None``: it may)."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
        return f"{ENV_SWITCH} turns it off"
    level = torch.backends.cpu.get_cpu_capability()
    if level not in SIMD_LEVELS:
        return f"the CPU offers {level}, the kernel needs AVX2 or AVX-512"
    return None


@functools.cache
def load() -> Any | None:
    """The compiled extension module, built on first call; ``None`` (reason logged) when unavailable."""
    reason = disabled_reason()
    if reason is None:
        try:
            from torch.utils.cpp_extension import load as build

            log.info("loading deltaguard's C++ CPU kernel (compiled the first time on a machine: ~30 s)")
            return build(name=f"deltaguard_bitdelta_{_cpu_tag()}", sources=[str(SOURCE)],
                         extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as error:  # noqa: BLE001 — any build failure means: use the PyTorch path
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            reason = f"it did not build ({first_line[:200]})"
    log.warning("C++ CPU kernel unavailable: %s; using the PyTorch path", reason)
    return None


def available() -> bool:
    return load() is not None


def stack_scales(scales: Sequence[Tensor | Sequence[float]] | Tensor) -> Tensor:
    """Per-slot scales as one contiguous float32 ``[slots, k_max]`` tensor (zero-padded)."""
    if isinstance(scales, Tensor) and scales.dim() == 2:
        return scales.to(torch.float32).contiguous()
    rows = [torch.as_tensor(s, dtype=torch.float32).reshape(-1) for s in scales]
    table = torch.zeros((len(rows), max((r.numel() for r in rows), default=0)), dtype=torch.float32)
    for slot, row in enumerate(rows):
        table[slot, : row.numel()] = row
    return table


def multi_tenant_bitdelta_(y: Tensor, x: Tensor, signs: Sequence[Tensor] | Tensor,
                           scales: Sequence[Tensor | Sequence[float]] | Tensor, row_slots: Tensor) -> Tensor:
    """``y[r] += Σ_i scales[t][i]·x[r]·signs[t][i]ᵀ`` with ``t = row_slots[r]`` (``-1``: none), in place.

    ``signs[t]`` is uint8 ``[k, out, ceil(in/8)]``; a slot that no row uses may be an empty tensor.
    ``scales`` is ``[slots, k]`` or one sequence per slot. ``x`` and ``y`` of other dtypes go through a
    float32 copy.
    """
    flat = [s.contiguous().view(-1) for s in signs]
    layout = torch.tensor([[0, s.shape[0] if s.numel() else 0] for s in signs], dtype=torch.int64).reshape(-1, 2)
    return multi_tenant_bitdelta_at_(y, x, flat, layout, stack_scales(scales), row_slots)


def _check_rows(y: Tensor, x: Tensor, row_slots: Tensor) -> None:
    """``x [n, in]``, ``y [n, out]`` and one slot per row."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0] or row_slots.numel() != x.shape[0]:
        raise ConfigError(f"C++ kernel: x {list(x.shape)}, y {list(y.shape)} and {row_slots.numel()} row slots "
                          "do not match ([n, in], [n, out], n)")


def check_tables(bits: Sequence[Tensor], layout: Tensor, scales: Tensor, *, n_out: int, n_in: int,
                 slots: set[int] | None = None) -> None:
    """The slots' signs fit their buffers for a layer of ``[n_out, n_in]``: every slot that has signs, or
    exactly ``slots`` (which then must have them). A layer checks its tables once when it builds them and
    then passes ``tables_checked``; a call without it checks the slots its rows use, every time.

    Why check in Python at all: the extension checks the same (``TORCH_CHECK``), but an exception thrown
    inside a compiled extension must cross into libtorch's error handling; where the extension and
    libtorch were built by different compilers that crossing can crash the process (seen on a GPU machine:
    a segmentation fault instead of the error).
    """
    if layout.shape != (len(bits), 2) or scales.dim() != 2 or scales.shape[0] != len(bits):
        raise ConfigError(f"C++ kernel: layout {list(layout.shape)} / scales {list(scales.shape)} do not match "
                          f"{len(bits)} slots")
    matrix_bytes = n_out * ((n_in + 7) // 8)
    rows = layout.tolist()
    for slot in sorted(slots) if slots is not None else range(len(bits)):
        if slot >= len(bits):
            raise ConfigError(f"C++ kernel: slot {slot} has no signs ({len(bits)} slots)")
        offset, k = rows[slot]
        if (k or slots is not None) and not (1 <= k <= scales.shape[1] and offset >= 0
                                             and offset + k * matrix_bytes <= bits[slot].numel()):
            raise ConfigError(f"C++ kernel: signs of slot {slot} do not match a [{n_out}, {n_in}] layer ({k} x "
                              f"{matrix_bytes} bytes from {offset} in a buffer of {bits[slot].numel()})")


def _module() -> Any:
    module = load()
    if module is None:
        raise ConfigError(f"the C++ CPU kernel is unavailable ({disabled_reason() or 'it did not build'}); "
                          "use kernel backend 'torch' or 'auto'")
    return module


def multi_tenant_bitdelta_at_(y: Tensor, x: Tensor, bits: Sequence[Tensor], layout: Tensor, scales: Tensor,
                              row_slots: Tensor, *, tables_checked: bool = False) -> Tensor:
    """Like ``multi_tenant_bitdelta_``, with slot ``t``'s ``k`` sign matrices read from the flat uint8
    tensor ``bits[t]`` at byte ``layout[t, 0]`` (``k = layout[t, 1]``): one buffer per tenant can
    serve every layer without a tensor view per layer. ``scales`` is float32 ``[slots, k_max]``.

    ``tables_checked``: the caller ran ``check_tables`` on these tables for this layer's shape and every
    row's slot has signs in them (a decode step calls this once per layer, and the per-slot check cost
    about as much as the kernel itself on a 135M model); the shapes of ``x``, ``y`` and ``row_slots``
    are still checked.
    """
    module = _module()
    if x.device.type != "cpu" or y.device.type != "cpu":
        raise ConfigError(f"the C++ CPU kernel needs CPU tensors (got {x.device})")
    _check_rows(y, x, row_slots)
    if not tables_checked:
        check_tables(bits, layout, scales, n_out=y.shape[1], n_in=x.shape[1],
                     slots=set(row_slots[row_slots >= 0].tolist()))
    xf = x.contiguous() if x.dtype == torch.float32 else x.to(torch.float32).contiguous()
    slots = row_slots.to(torch.int64)
    if y.dtype == torch.float32 and y.stride(-1) == 1:
        module.multi_tenant_bitdelta_(y, xf, list(bits), layout, scales, slots)
        return y
    delta = torch.zeros(y.shape, dtype=torch.float32)
    module.multi_tenant_bitdelta_(delta, xf, list(bits), layout, scales, slots)
    y += delta.to(y.dtype)
    return y


def merged_linear(x: Tensor, weight: Tensor, bias: Tensor | None, signs: Tensor, scales: Sequence[float],
                  *, tile_rows: int = 256) -> Tensor:
    """``x·(W + Σ_i scales[i]·S_i)ᵀ + bias`` for many rows of ONE tenant (its prompt), equal bit for bit to
    ``reference.merged_tile_linear``: each tile of the tenant's weight is built in one SIMD pass over
    the packed bits (the PyTorch path's byte look-ups, int32 copies and adds cost about half as much as
    the tile's GEMM) and multiplied at once. float32 CPU ``x`` and ``weight``; ``signs`` uint8 ``[k, out, G]``."""
    module = _module()
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu":
        raise ConfigError(f"C++ merged linear: float32 CPU x and weight expected (got {x.dtype}/{weight.dtype} "
                          f"on {x.device})")
    if signs.dim() != 3 or signs.shape[1] != weight.shape[0] or signs.shape[2] != (weight.shape[1] + 7) // 8:
        raise ConfigError(f"C++ merged linear: signs {list(signs.shape)} do not match a weight {list(weight.shape)}")
    if x.dim() != 2 or x.shape[1] != weight.shape[1] or len(scales) != signs.shape[0]:
        raise ConfigError(f"C++ merged linear: x {list(x.shape)} / {len(scales)} scales do not match signs "
                          f"{list(signs.shape)}")
    table = torch.tensor([float(s) for s in scales], dtype=torch.float32)
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    return module.merged_linear(x, weight, bias, signs.contiguous(), table, tile_rows)
