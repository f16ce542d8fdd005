"""Triton kernel: multi-tenant 1-bit delta matmul, bits unpacked in registers, every tenant in one launch.

The rows of a batch are sorted by tenant on the host and cut into blocks of at most ``BLOCK_M``
rows of one tenant. Program ``(b, j)`` takes block ``b`` and output columns ``j·BLOCK_N ..``: it
loads the block's input rows, loads the tenant's packed sign bytes for those outputs, turns each bit
into ±1 in registers (column ``c`` is bit ``c % 8`` of byte ``c // 8``), multiplies with ``tl.dot``
and adds ``scale · x·signᵀ`` into ``y`` (which already holds ``x·W_baseᵀ``). Blocks own disjoint rows,
so there are no write races. Nothing here imports Triton at module import: the kernel is built on
first use, so this module (and ``deltaguard list kernels``) loads on machines without Triton.

Status: checked against the torch reference under ``TRITON_INTERPRET=1`` (CPU interpreter); not
yet run on GPU hardware in this project.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from deltaguard.errors import ConfigError

BLOCK_M = 16
BLOCK_N = 64
BLOCK_K = 64

_kernel: Any = None


def _build_kernel() -> Any:
    global _kernel
    if _kernel is not None:
        return _kernel
    try:
        import triton
        import triton.language as tl
    except ImportError:
        raise ConfigError("the triton kernel needs the 'triton' package (pip install 'deltaguard[gpu]')") from None

    @triton.jit
    def bitdelta_kernel(
        x_ptr, y_ptr, signs_ptr, scales_ptr,
        block_slot_ptr, block_start_ptr, block_count_ptr, row_order_ptr,
        n_out, n_in, n_masks,
        stride_xm, stride_ym, stride_st, stride_sk, stride_sn, stride_ct,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        block = tl.program_id(0)
        col_block = tl.program_id(1)
        slot = tl.load(block_slot_ptr + block).to(tl.int64)
        start = tl.load(block_start_ptr + block)
        count = tl.load(block_count_ptr + block)

        offs_m = tl.arange(0, BLOCK_M)
        row_ok = offs_m < count
        rows = tl.load(row_order_ptr + start + offs_m, mask=row_ok, other=0).to(tl.int64)  # original row indices
        offs_n = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = offs_n < n_out

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for mask_i in range(0, n_masks):
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, n_in, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < n_in
                x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :],
                            mask=row_ok[:, None] & k_ok[None, :], other=0.0)                   # [BM, BK]
                byte = tl.load(signs_ptr + slot * stride_st + mask_i * stride_sk
                               + offs_n[:, None].to(tl.int64) * stride_sn + (offs_k // 8)[None, :],
                               mask=col_ok[:, None] & k_ok[None, :], other=0)                  # [BN, BK] uint8
                bit = (byte.to(tl.int32) >> (offs_k % 8)[None, :]) & 1
                sign = (bit * 2 - 1).to(x.dtype)                                                 # ±1, [BN, BK]
                part += tl.dot(x, tl.trans(sign), input_precision="ieee")
            scale = tl.load(scales_ptr + slot * stride_ct + mask_i)
            acc += part * scale
        y_ptrs = y_ptr + rows[:, None] * stride_ym + offs_n[None, :]
        out_ok = row_ok[:, None] & col_ok[None, :]
        y = tl.load(y_ptrs, mask=out_ok, other=0.0)
        tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y.dtype), mask=out_ok)

    _kernel = bitdelta_kernel
    return _kernel


def plan_blocks(row_slots: Tensor, block_m: int = BLOCK_M) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sort rows by tenant and cut them into one-tenant blocks of at most ``block_m`` rows.

    Returns ``(block_slot, block_start, block_count, row_order)`` (int32, on ``row_slots``' device):
    block ``b`` covers ``row_order[block_start[b] : block_start[b] + block_count[b]]``, all of tenant
    slot ``block_slot[b]``. Rows with slot ``-1`` get no block.
    """
    slots = row_slots.to("cpu", torch.int64)
    order = torch.argsort(slots, stable=True)
    order = order[slots[order] >= 0]
    sorted_slots = slots[order].tolist()
    block_slot, block_start, block_count = [], [], []
    position = 0
    while position < len(sorted_slots):
        slot = sorted_slots[position]
        end = position
        while end < len(sorted_slots) and sorted_slots[end] == slot and end - position < block_m:
            end += 1
        block_slot.append(slot)
        block_start.append(position)
        block_count.append(end - position)
        position = end
    device = row_slots.device
    as_i32 = lambda values: torch.tensor(values, dtype=torch.int32, device=device)  # noqa: E731
    return as_i32(block_slot), as_i32(block_start), as_i32(block_count), order.to(device=device, dtype=torch.int32)


def multi_tenant_bitdelta_(y: Tensor, x: Tensor, signs: Tensor, scales: Tensor, row_slots: Tensor) -> Tensor:
    """Triton version of ``reference.multi_tenant_bitdelta_``: stacked ``signs`` ``[T, k, out, G]``, ``scales`` ``[T, k]``."""
    if not isinstance(signs, Tensor) or signs.dim() != 4:
        raise ConfigError("the triton kernel needs the signs of all tenants stacked as one [T, k, out, G] tensor")
    n_rows, n_in = x.shape
    n_out = signs.shape[2]
    if signs.shape[3] != (n_in + 7) // 8 or y.shape != (n_rows, n_out):
        raise ConfigError(f"shapes do not match: x {tuple(x.shape)}, y {tuple(y.shape)}, signs {tuple(signs.shape)}")
    x = x.contiguous()
    signs = signs.contiguous()
    scales = scales.to(torch.float32).contiguous()
    assert y.stride(1) == 1, "y must be row-major"
    block_slot, block_start, block_count, row_order = plan_blocks(row_slots)
    if block_slot.numel() == 0:
        return y
    kernel = _build_kernel()
    grid = (block_slot.numel(), (n_out + BLOCK_N - 1) // BLOCK_N)
    kernel[grid](
        x, y, signs, scales, block_slot, block_start, block_count, row_order,
        n_out, n_in, signs.shape[1],
        x.stride(0), y.stride(0), signs.stride(0), signs.stride(1), signs.stride(2), scales.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )
    return y


def multi_tenant_linear(x: Tensor, weight: Tensor, bias: Tensor | None, signs: Tensor, scales: Tensor,
                        row_slots: Tensor) -> Tensor:
    """``x·W_baseᵀ + bias`` (cuBLAS) plus each row's tenant delta (this kernel, one launch)."""
    return multi_tenant_bitdelta_(F.linear(x, weight, bias), x, signs, scales, row_slots)
