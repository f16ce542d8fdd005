"""Multi-tenant 1-bit delta matmul in pure PyTorch: the CPU path and the reference for every fast path.

For a batch whose rows belong to different tenants, row ``r`` of tenant ``t`` gets

    y[r] = x[r]·W_baseᵀ (+ bias) + Σ_i scale[t, i] · x[r]·sign[t, i]ᵀ

computed straight from the packed sign bits (layout in ``deltaguard.delta.packing``: byte ``b`` of a
row holds columns ``8b..8b+7``, column ``8b+j`` in bit ``j``, set bit = +1); a tenant's sign matrix
is never unpacked whole. Two forms, chosen by the number of rows a tenant has in the batch:

* few rows (decoding): the input is cut into groups of 8 columns and, for each group, a table of
  the 256 possible signed sums ``Σ_j ±x[8g+j]`` is built (one small matmul). Each packed byte is
  then an index into its group's table, and ``x·signᵀ`` is a sum of ``in/8`` look-ups per output —
  8× fewer operations than the dense product, and nothing the size of the weight is built;
* many rows (prefill; the thresholds are ``TILE_MIN_ROWS_*``): the bits of ``TILE_ROWS`` output
  rows at a time are expanded to ±1 (a byte → 8 signs look-up) and multiplied, so at most one tile
  of one tenant's signs exists in floating point at any moment.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

CHUNK_ROWS = 2048       # output rows whose look-up indices are built at once (bounds the int32 temporary)
# Rows of one tenant from which ±1 tiles + GEMM beat table look-ups, by input width (measured on a
# 2-core AVX2 CPU: look-ups win up to ~96 rows for 576 inputs, up to ~12 rows for 1536 inputs).
TILE_MIN_ROWS_NARROW = 96    # inputs ≤ 768 (≤ 96 groups of 8)
TILE_MIN_ROWS_WIDE = 12      # wider inputs
TILE_ROWS = 256         # output rows of signs expanded to ±1 at a time in the tiled form
MERGE_MIN_ROWS = 32     # rows of one tenant from which its merged tiles (one GEMM, not two) are used

# pattern[j, b] = +1 if bit j of byte b is set, else −1: one row of signs per possible byte.
_PATTERNS = (((torch.arange(256)[None, :] >> torch.arange(8)[:, None]) & 1).to(torch.float32) * 2 - 1)
_offsets_cache: dict[tuple[int, str], Tensor] = {}
_patterns_cache: dict[str, Tensor] = {}
_unpack_cache: dict[str, Tensor] = {}

SignsLike = Tensor | Sequence[Tensor]


def _patterns(device: torch.device) -> Tensor:
    key = str(device)
    if key not in _patterns_cache:
        _patterns_cache[key] = _PATTERNS.to(device)
    return _patterns_cache[key]


def _byte_signs(device: torch.device) -> Tensor:
    """``[256, 8]``: row ``b`` holds the 8 signs (±1) that byte ``b`` packs, column ``j`` for bit ``j``."""
    key = str(device)
    if key not in _unpack_cache:
        _unpack_cache[key] = _PATTERNS.T.contiguous().to(device)
    return _unpack_cache[key]


def _group_offsets(n_groups: int, device: torch.device) -> Tensor:
    """``g`` for each group: a packed byte ``b`` of group ``g`` is row ``b·G + g`` of the tables."""
    key = (n_groups, str(device))
    if key not in _offsets_cache:
        _offsets_cache[key] = torch.arange(n_groups, dtype=torch.int32, device=device)
    return _offsets_cache[key]


def sign_tables(x: Tensor) -> Tensor:
    """All signed sums of each group of 8 input columns: ``x [m, in]`` → fp32 ``[256·G, m]``, ``G = ceil(in/8)``.

    Row ``b·G + g`` holds ``Σ_j (bit j of b ? +1 : −1) · x[:, 8g + j]``; the zero padding of a last
    partial group contributes nothing, whatever its (padding) bits are. One matmul, no transposes.
    """
    m, n_in = x.shape
    pad = (-n_in) % 8
    xf = x if x.dtype == torch.float32 else x.to(torch.float32)
    if pad:
        xf = F.pad(xf, (0, pad))
    columns = xf.reshape(m, -1, 8).permute(2, 1, 0).reshape(8, -1)  # [8, G·m]: column g·m + r
    return (_patterns(x.device).T @ columns).reshape(-1, m)          # [256·G, m]


def packed_sign_matmul(x: Tensor, signs: Tensor, *, chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """``x·Sᵀ`` in fp32, where ``S ∈ {±1}^[out, in]`` is given as packed bits ``signs`` uint8 ``[out, ceil(in/8)]``."""
    m, n_in = x.shape
    n_out, n_groups = signs.shape
    if n_groups != (n_in + 7) // 8:
        raise ValueError(f"packed signs hold {n_groups * 8} columns, the input has {n_in}")
    if m >= (TILE_MIN_ROWS_NARROW if n_groups <= 96 else TILE_MIN_ROWS_WIDE):
        return tiled_sign_matmul(x, signs)
    tables = sign_tables(x)
    offsets = _group_offsets(n_groups, x.device)
    pieces = []
    for start in range(0, n_out, chunk_rows):
        chunk = signs[start:start + chunk_rows]
        index = torch.add(offsets, chunk, alpha=n_groups)  # int32 [rows, G]: byte b of group g → row b·G + g
        if m == 1:  # one input row: a flat gather is the fastest CPU form
            pieces.append(tables.view(-1).index_select(0, index.view(-1)).view(chunk.shape[0], -1).sum(-1)[None])
        else:  # gather-and-sum rows of the [256·G, m] table in one fused op
            pieces.append(F.embedding_bag(index, tables, mode="sum").T)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def tiled_sign_matmul(x: Tensor, signs: Tensor, *, tile_rows: int = TILE_ROWS) -> Tensor:
    """``x·Sᵀ`` in fp32 for many rows: ``tile_rows`` output rows of signs expanded to ±1 at a time, then a GEMM."""
    m, n_in = x.shape
    n_out, n_groups = signs.shape
    xf = x if x.dtype == torch.float32 else x.to(torch.float32)
    if n_groups * 8 != n_in:
        xf = F.pad(xf, (0, n_groups * 8 - n_in))  # padding bits then meet zeros
    lookup = _byte_signs(x.device)
    out = torch.empty((m, n_out), dtype=torch.float32, device=x.device)
    for start in range(0, n_out, tile_rows):
        tile = signs[start:start + tile_rows]
        expanded = F.embedding(tile.to(torch.int32), lookup).view(tile.shape[0], -1)  # ±1 [rows, G·8]
        torch.matmul(xf, expanded.T, out=out[:, start:start + tile.shape[0]])
    return out


def merged_tile_linear(x: Tensor, weight: Tensor, bias: Tensor | None, signs: Tensor,
                       scales: Tensor | Sequence[float], *, tile_rows: int = TILE_ROWS) -> Tensor:
    """``x·(W + Σ_i scales[i]·S_i)ᵀ + bias`` for many rows of ONE tenant, a tile of output rows at a time.

    Each tile of the tenant's weight is built (base rows + expanded signs) and multiplied at once, so
    the delta costs one pass over its bits instead of a second GEMM; only ``tile_rows × in`` floats
    of the tenant's weight exist at any moment. Result in ``x``'s dtype.
    """
    m, n_in = x.shape
    n_out = weight.shape[0]
    n_groups = signs.shape[-1]
    lookup = _byte_signs(x.device)
    out = torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    for start in range(0, n_out, tile_rows):
        stop = min(start + tile_rows, n_out)
        tile = weight[start:stop].to(torch.float32, copy=True)
        for i in range(signs.shape[0]):
            expanded = F.embedding(signs[i, start:stop].to(torch.int32), lookup).view(stop - start, n_groups * 8)
            scale = scales[i]
            tile.add_(expanded[:, :n_in], alpha=scale if isinstance(scale, float) else float(scale))
        torch.matmul(x, tile.to(x.dtype).T, out=out[:, start:stop])
    if bias is not None:
        out += bias
    return out


def bitdelta_matmul(x: Tensor, signs: Tensor, scales: Tensor | Sequence[float]) -> Tensor:
    """One tenant's ``x·Δᵀ`` in fp32 with ``Δ = Σ_i scales[i]·S_i``: ``signs`` ``[k, out, G]``, ``scales`` ``[k]``."""
    out = None
    for i in range(signs.shape[0]):
        scale = scales[i]
        term = packed_sign_matmul(x, signs[i])
        term = term.mul_(scale if isinstance(scale, float) else scale.to(device=x.device, dtype=torch.float32))
        out = term if out is None else out.add_(term)
    assert out is not None, "a BitDelta tensor has at least one sign pass"
    return out


def rows_by_slot(row_slots: Tensor) -> list[tuple[int, Tensor | slice]]:
    """``(slot, rows)`` for each tenant slot present (``-1`` means base only); rows are a slice when contiguous."""
    slots = row_slots.tolist()
    groups: dict[int, list[int]] = {}
    for row, slot in enumerate(slots):
        if slot >= 0:
            groups.setdefault(slot, []).append(row)
    result: list[tuple[int, Tensor | slice]] = []
    for slot, rows in groups.items():
        if rows[-1] - rows[0] + 1 == len(rows):
            result.append((slot, slice(rows[0], rows[-1] + 1)))
        else:
            result.append((slot, torch.tensor(rows, dtype=torch.long, device=row_slots.device)))
    return result


def multi_tenant_bitdelta_(y: Tensor, x: Tensor, signs: SignsLike, scales: SignsLike, row_slots: Tensor) -> Tensor:
    """Add each row's tenant delta to ``y`` in place: ``y[r] += Σ_i scales[t][i]·x[r]·signs[t][i]ᵀ``, ``t = row_slots[r]``.

    ``x`` ``[n, in]``, ``y`` ``[n, out]``; ``signs[t]`` uint8 ``[k, out, ceil(in/8)]`` and ``scales[t]``
    ``[k]`` may be stacked tensors or per-slot sequences; rows with slot ``-1`` are left as they are.
    """
    for slot, rows in rows_by_slot(row_slots):
        delta = bitdelta_matmul(x[rows], signs[slot], scales[slot])
        y[rows] += delta.to(y.dtype)
    return y


def multi_tenant_linear(x: Tensor, weight: Tensor, bias: Tensor | None, signs: SignsLike, scales: SignsLike,
                        row_slots: Tensor) -> Tensor:
    """``x·W_baseᵀ + bias`` for every row plus each row's own tenant delta, from the packed bits."""
    return multi_tenant_bitdelta_(F.linear(x, weight, bias), x, signs, scales, row_slots)
