"""One shared base model, many tenants' compressed deltas, and a tenant per batch row.

``MultiTenantModel`` wraps a loaded Hugging Face causal LM. Adding a tenant replaces each module its
delta touches (once, shared by every tenant) with a multi-tenant wrapper that keeps the base module
as it is and holds the tenant's parts in their compressed form:

* ``MultiTenantLinear`` — ``base(x)`` for every row, plus for each row its own tenant's ``x·Δᵀ``:
  BitDelta tenants through ``deltaguard.kernels`` (packed bits; the C++ or Triton kernel takes the
  few-row tenants of a batch — decoding — in one call, a tenant's many-row prompt goes through
  merged weight tiles), other
  methods (k-bit, low-rank, ...) through their compressor's ``delta_matmul``, 16-bit deltas of
  untargeted linears (and of a tied output head) through a chunked matmul;
* ``MultiTenantDense`` — any other module (norms, embeddings): the rows of a tenant run the module
  with that tenant's parameters (an embedding adds ``Δ[ids]`` instead of building a whole table).

The tenant of each row is set for the duration of one forward pass with ``use_rows``; rows whose
tenant has no delta for a module get exactly the base module's output.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deltaguard.delta.fingerprint import fingerprint_model
from deltaguard.delta.methods import compressors
from deltaguard.delta.methods.base import DENSE
from deltaguard.delta.store import CompressedDelta, PackedTensor, check_finite, check_fingerprint
from deltaguard.errors import ConfigError, IncompatibleBaseError
from deltaguard.kernels import Backend, bitdelta_matmul, cpu_bitdelta, multi_tenant_bitdelta_, pick_backend, rows_by_slot
from deltaguard.kernels.cpu_bitdelta import MAX_ROWS as CPP_MAX_ROWS, stack_scales
from deltaguard.kernels.reference import MERGE_MIN_ROWS, merged_tile_linear
from deltaguard.modules import get_module, replace_module

DENSE_CHUNK_ROWS = 4096  # output rows of a 16-bit delta converted to the compute dtype at once


@dataclass
class RowPlan:
    """How one pass's rows meet one set of BitDelta slots (shared by every layer holding that set).

    ``merged``: (slot, rows) of tenants with many rows (a prompt) — their own weight tiles, one GEMM;
    ``rest``: the rows the base alone computes when some rows are merged; ``kernel_slots``: the slot
    of every row the packed kernel takes (``-1`` elsewhere; ``None``: it takes none); ``leftover``:
    (slot, rows) for the PyTorch look-up path.
    """

    merged: list[tuple[int, Tensor | slice]]
    rest: Tensor | None
    kernel_slots: Tensor | None
    leftover: list[tuple[int, Tensor | slice]]


class TenantRows:
    """The tenant slot of every batch row (``-1``: base only) for the forward pass in progress.

    The grouping of rows (flattened over tokens) by slot, and each layer's row plan, are computed once
    per pass and shape and shared by every layer, so per-layer work is only the math (a decode step of
    a 30-layer model runs ~200 layers; planning in each cost about a third of the packed kernel's time).
    """

    def __init__(self) -> None:
        self.slots: Tensor | None = None
        self._groups: dict[int, list[tuple[int, Tensor | slice]]] = {}
        self._kernel_slots: dict[tuple[int, frozenset[int]], Tensor] = {}
        self._plans: dict[tuple[int, str, frozenset[int]], RowPlan] = {}

    def set(self, slots: Tensor | None) -> None:
        self.slots = slots
        self._groups = {}
        self._kernel_slots = {}
        self._plans = {}

    def for_batch(self, n_rows: int) -> Tensor | None:
        if self.slots is None:
            return None
        if self.slots.shape[0] != n_rows:
            raise RuntimeError(f"internal: {self.slots.shape[0]} tenant rows set for a batch of {n_rows}")
        return self.slots

    def groups(self, per_row: int) -> list[tuple[int, Tensor | slice]]:
        """``(slot, rows)`` over the batch flattened to ``[B·per_row, ...]`` (rows of one batch row are adjacent)."""
        if per_row not in self._groups:
            assert self.slots is not None
            slots = self.slots.repeat_interleave(per_row) if per_row != 1 else self.slots
            self._groups[per_row] = rows_by_slot(slots)
        return self._groups[per_row]

    def kernel_slots(self, per_row: int, slots: frozenset[int]) -> Tensor:
        """The slot of each flattened row that belongs to one of ``slots``, ``-1`` for every other row."""
        key = (per_row, slots)
        if key not in self._kernel_slots:
            n_rows = self.slots.shape[0] * per_row if self.slots is not None else 0
            device = self.slots.device if self.slots is not None else None
            chosen = torch.full((n_rows,), -1, dtype=torch.long, device=device)
            for slot, rows in self.groups(per_row):
                if slot in slots:
                    chosen[rows] = slot
            self._kernel_slots[key] = chosen
        return self._kernel_slots[key]

    def plan(self, per_row: int, kernel: str, sign_slots: frozenset[int]) -> RowPlan:
        """Which rows of tenants in ``sign_slots`` go to merged tiles, the packed kernel or the torch path."""
        key = (per_row, kernel, sign_slots)
        if key not in self._plans:
            bit_groups = [(slot, rows) for slot, rows in self.groups(per_row) if slot in sign_slots]
            if kernel == "triton":  # every BitDelta row of the batch in one launch
                merged, to_kernel = [], bit_groups
            else:  # a tenant's many rows (a prompt): its weight tiles are built and multiplied once
                merged = [(slot, rows) for slot, rows in bit_groups if _n_rows(rows) >= MERGE_MIN_ROWS]
                to_kernel = ([(slot, rows) for slot, rows in bit_groups if _n_rows(rows) < CPP_MAX_ROWS]
                             if kernel == "cpp" else [])
            rest = None
            if merged:
                assert self.slots is not None
                keep = torch.ones(self.slots.shape[0] * per_row, dtype=torch.bool, device=self.slots.device)
                for _, rows in merged:
                    keep[rows] = False
                rest = keep.nonzero().squeeze(1) if bool(keep.any()) else None
            done = {slot for slot, _ in merged} | {slot for slot, _ in to_kernel}
            self._plans[key] = RowPlan(
                merged=merged, rest=rest,
                kernel_slots=self.kernel_slots(per_row, frozenset(slot for slot, _ in to_kernel)) if to_kernel else None,
                leftover=[(slot, rows) for slot, rows in bit_groups if slot not in done])
        return self._plans[key]


def dense_matmul(x: Tensor, delta: Tensor, *, chunk_rows: int = DENSE_CHUNK_ROWS) -> Tensor:
    """``x·Δᵀ`` for a 16-bit stored ``Δ [out, in]``, converting at most ``chunk_rows`` rows at a time."""
    out = torch.empty((x.shape[0], delta.shape[0]), dtype=x.dtype, device=x.device)
    for start in range(0, delta.shape[0], chunk_rows):
        out[:, start:start + chunk_rows] = x @ delta[start:start + chunk_rows].to(x.dtype).T
    return out


def _n_rows(rows: Tensor | slice) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else rows.numel()


def _per_row(x: Tensor) -> int:
    """Vectors per batch row of ``x [B, ..., in]`` (tokens, when flattened to ``[B·S, in]``)."""
    return x[0].numel() // x.shape[-1] if x.shape[0] else 1


class SlotSigns(MutableMapping[int, Tensor]):
    """slot → one layer's packed signs, uint8 ``[k, out, G]``, held as (flat buffer, byte offset, shape).

    Each tenant's bits of every layer live in one buffer (``_coalesce``). A tensor view per tenant
    and layer would cost about 1 KB of host memory each (measured: 0.2 MiB per tenant of a 30-layer
    model, 1.5% over its bits), so an entry keeps a plain reference into the buffer instead; reading
    an entry makes the view, and the C++ kernel reads the buffer at the offset directly.
    """

    def __init__(self) -> None:
        self._refs: dict[int, tuple[Tensor, int, tuple[int, ...]]] = {}

    def place(self, slot: int, flat: Tensor, offset: int, shape: Sequence[int]) -> None:
        """Slot ``slot``'s signs are ``flat[offset : offset + prod(shape)]`` viewed as ``shape``."""
        self._refs[slot] = (flat, offset, tuple(shape))

    def ref(self, slot: int) -> tuple[Tensor, int, tuple[int, ...]]:
        return self._refs[slot]

    def __setitem__(self, slot: int, signs: Tensor) -> None:
        self.place(slot, signs.contiguous().view(-1), 0, signs.shape)

    def __getitem__(self, slot: int) -> Tensor:
        flat, offset, shape = self._refs[slot]
        return flat[offset:offset + math.prod(shape)].view(shape)

    def __delitem__(self, slot: int) -> None:
        del self._refs[slot]

    def __contains__(self, slot: object) -> bool:  # the mixin's version builds the view (a decode step asks ~10^4 times)
        return slot in self._refs

    def __iter__(self) -> Iterator[int]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)


class MultiTenantLinear(nn.Module):
    """A shared ``nn.Linear`` plus, per batch row, that row's tenant delta kept compressed."""

    def __init__(self, base: nn.Linear, rows: TenantRows, *, backend: Backend = "auto") -> None:
        super().__init__()
        self.base = base
        self.rows = rows
        self.backend = backend
        self.signs = SlotSigns()                 # slot → uint8 [k, out, ceil(in/8)]
        self.scale_values: dict[int, tuple[float, ...]] = {}  # slot → its k scales
        self.matmuls: dict[int, Callable[[Tensor], Tensor]] = {}   # slot → x [n, in] ↦ x·Δᵀ (other encodings)
        self.bias_deltas: dict[int, Tensor] = {}
        self._tables: Any = None   # all slots' bits and scales in a kernel's form (cached until slots change)
        self._sign_slots: frozenset[int] | None = None   # the slots with BitDelta signs (cached likewise)

    @property
    def slots(self) -> set[int]:
        return set(self.signs) | set(self.matmuls) | set(self.bias_deltas)

    def add_weight_delta(self, slot: int, packed: PackedTensor, delta: CompressedDelta, *,
                         signs_at: tuple[Tensor, int] | None = None) -> None:
        """Hold one tenant's delta of this layer; ``signs_at`` (flat buffer, byte offset) says where a copy
        of the packed bits already is on this layer's device."""
        device = self.base.weight.device
        if packed.encoding == DENSE:
            weight = packed.parts["delta"].to(device)
            self.matmuls[slot] = lambda x, w=weight: dense_matmul(x, w)
        elif (planes := compressors.get(packed.encoding)().sign_planes(packed.parts)) is not None:
            signs, scales = planes       # Δ = Σ s_k·sign_k: the packed 1-bit kernels run it
            if signs_at is None:
                self.signs[slot] = signs.to(device)
            else:
                self.signs.place(slot, signs_at[0], signs_at[1], signs.shape)
            self.scale_values[slot] = tuple(float(v) for v in scales)
            self._sign_slots = None
        else:
            compressor = compressors.get(packed.encoding)()
            parts = {name: tensor.to(device) for name, tensor in packed.parts.items()}
            shape, config = packed.base_shape, delta.config
            self.matmuls[slot] = lambda x: compressor.delta_matmul(x, parts, shape, config)
        self._tables = None

    def add_shared_dense(self, slot: int, weight_delta: Tensor) -> None:
        """A 16-bit delta shared with another module (a tied head reusing the embedding's delta)."""
        self.matmuls[slot] = lambda x, w=weight_delta: dense_matmul(x, w)
        self._tables = None

    def remove(self, slot: int) -> None:
        for table in (self.signs, self.scale_values, self.matmuls, self.bias_deltas):
            table.pop(slot, None)
        self._tables = None
        self._sign_slots = None

    def _buffer_tables(self) -> tuple[list[Tensor], Tensor, Tensor]:
        """For the C++ kernel: each slot's flat bits buffer, a ``[slots, 2]`` (byte offset, k) layout and
        a ``[slots, k]`` scales table — a few tensors per layer, none per tenant (cached)."""
        if self._tables is None:
            no_bits = torch.empty(0, dtype=torch.uint8)
            refs = [self.signs.ref(slot) if slot in self.signs else (no_bits, 0, (0,))
                    for slot in range(max(self.signs) + 1)]
            layout = torch.tensor([[offset, shape[0] if flat.numel() else 0] for flat, offset, shape in refs],
                                  dtype=torch.int64)
            scales = stack_scales([self.scale_values.get(slot, ()) for slot in range(len(refs))])
            bits = [flat for flat, _, _ in refs]
            cpu_bitdelta.check_tables(bits, layout, scales, n_out=self.base.out_features, n_in=self.base.in_features)
            self._tables = (bits, layout, scales)
        return self._tables

    def _stacked_tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """For the Triton kernel: signs ``[slots, k, out, G]`` and scales ``[slots, k]``, zero-padded, on
        ``device``; the slots' bits then live only in the stack (cached)."""
        if self._tables is None:
            n_slots = max(self.signs) + 1
            k = max(s.shape[0] for s in self.signs.values())
            first = next(iter(self.signs.values()))
            signs = torch.zeros((n_slots, k, *first.shape[1:]), dtype=torch.uint8, device=device)
            scales = torch.zeros((n_slots, k), dtype=torch.float32, device=device)
            flat, per_slot = signs.view(-1), signs[0].numel()
            for slot, tensor in list(self.signs.items()):
                signs[slot, : tensor.shape[0]] = tensor
                scales[slot, : tensor.shape[0]] = torch.tensor(self.scale_values[slot], dtype=torch.float32)
                self.signs.place(slot, flat, slot * per_slot, tensor.shape)
            self._tables = (signs, scales)
        return self._tables

    def forward(self, x: Tensor) -> Tensor:
        slots = self.rows.for_batch(x.shape[0])
        if slots is None or not (self.signs or self.matmuls or self.bias_deltas):
            return self.base(x)
        x2 = x.reshape(-1, x.shape[-1])
        per_row = _per_row(x)
        kernel = pick_backend(x.device, self.backend) if self.signs else "torch"
        if self._sign_slots is None:
            self._sign_slots = frozenset(self.signs)
        plan = self.rows.plan(per_row, kernel, self._sign_slots)
        if plan.merged:
            y2 = torch.empty((x2.shape[0], self.base.out_features), dtype=x.dtype, device=x.device)
            merge = (cpu_bitdelta.merged_linear if kernel == "cpp" and x2.dtype == self.base.weight.dtype
                     == torch.float32 else merged_tile_linear)
            for slot, rows in plan.merged:
                y2[rows] = merge(x2[rows], self.base.weight, self.base.bias, self.signs[slot], self.scale_values[slot])
            if plan.rest is not None:
                y2[plan.rest] = self.base(x2[plan.rest])
        else:
            y2 = self.base(x2)
        if plan.kernel_slots is not None and kernel == "triton":
            multi_tenant_bitdelta_(y2, x2, *self._stacked_tables(x.device), plan.kernel_slots, backend="triton")
        elif plan.kernel_slots is not None:
            cpu_bitdelta.multi_tenant_bitdelta_at_(y2, x2, *self._buffer_tables(), plan.kernel_slots,
                                                   tables_checked=True)
        for slot, rows in plan.leftover:
            y2[rows] += bitdelta_matmul(x2[rows], self.signs[slot], self.scale_values[slot]).to(y2.dtype)
        if self.matmuls or self.bias_deltas:
            for slot, rows in self.rows.groups(per_row):
                if slot in self.matmuls:
                    y2[rows] += self.matmuls[slot](x2[rows]).to(y2.dtype)
                if slot in self.bias_deltas:
                    y2[rows] += self.bias_deltas[slot].to(y2.dtype)
        return y2.view(*x.shape[:-1], y2.shape[-1])


class MultiTenantDense(nn.Module):
    """Any other module (norm, embedding, ...) whose parameters some tenants changed (16-bit deltas)."""

    def __init__(self, base: nn.Module, rows: TenantRows) -> None:
        super().__init__()
        self.base = base
        self.rows = rows
        self.deltas: dict[int, dict[str, Tensor]] = {}   # slot → {parameter name: 16-bit delta}

    @property
    def slots(self) -> set[int]:
        return set(self.deltas)

    def add_param_delta(self, slot: int, param_name: str, delta: Tensor) -> None:
        self.deltas.setdefault(slot, {})[param_name] = delta.to(self.base.get_parameter(param_name).device)

    def remove(self, slot: int) -> None:
        self.deltas.pop(slot, None)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        y = self.base(x, *args, **kwargs)
        slots = self.rows.for_batch(x.shape[0])
        if slots is None or not self.deltas:
            return y
        for slot, rows in self.rows.groups(1):
            deltas = self.deltas.get(slot)
            if not deltas:
                continue
            if isinstance(self.base, nn.Embedding) and set(deltas) == {"weight"}:
                y[rows] = y[rows] + F.embedding(x[rows], deltas["weight"]).to(y.dtype)
                continue
            params = {name: self.base.get_parameter(name) + delta.to(self.base.get_parameter(name).dtype)
                      for name, delta in deltas.items()}
            y[rows] = torch.func.functional_call(self.base, params, (x[rows], *args), kwargs).to(y.dtype)
        return y


@dataclass(frozen=True)
class TenantFootprint:
    """Bytes one tenant adds to the server (its compressed parts, as held in memory)."""

    name: str
    n_bytes: int
    n_linear_params: int
    encodings: tuple[str, ...]


class MultiTenantModel:
    """A base causal LM shared by every tenant; each batch row is computed with its own tenant's delta."""

    def __init__(self, model: Any, *, fingerprint: str | None = None, backend: Backend = "auto") -> None:
        self.model = model
        self.fingerprint = fingerprint or fingerprint_model(model)
        self.backend = backend
        self.kernel = pick_backend(next(model.parameters()).device, backend)  # checked (and built) now, not mid-request
        self.rows = TenantRows()
        self._slots: dict[str, int] = {}
        self._footprints: dict[str, TenantFootprint] = {}
        self._lock = threading.RLock()
        self._embed_name, self._head_name, self._is_tied = _embedding_names(model)

    @property
    def tenant_names(self) -> list[str]:
        return sorted(self._slots)

    def footprint(self, name: str) -> TenantFootprint:
        return self._footprints[name]

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    def add_tenant(self, name: str, delta: CompressedDelta) -> None:
        """Attach a tenant's delta; checks the base fingerprint and every tensor before touching the model."""
        with self._lock:
            if name in self._slots:
                raise ConfigError(f"tenant {name!r} is already loaded")
            plan = self._plan(name, delta)
            slot = next(i for i in range(len(self._slots) + 1) if i not in self._slots.values())
            signs_at = _coalesce({packed.name: planes[0] for _, _, packed in plan if packed.encoding != DENSE
                                  and (planes := compressors.get(packed.encoding)().sign_planes(packed.parts))},
                                 next(self.model.parameters()).device)
            for module_name, param_name, packed in plan:
                self._attach(slot, module_name, param_name, packed, delta, signs_at.get(packed.name))
            tied = bool(delta.model_config.get("tie_word_embeddings", delta.meta.get("tie_word_embeddings", False)))
            embed_weight = f"{self._embed_name}.weight"
            head_weight = f"{self._head_name}.weight" if self._head_name else None
            if (self._is_tied and tied and head_weight and embed_weight in delta.tensors
                    and head_weight not in delta.tensors):
                head = self._wrap(self._head_name)
                assert isinstance(head, MultiTenantLinear)
                head.add_shared_dense(slot, delta.tensors[embed_weight].parts["delta"].to(head.base.weight.device))
            self._slots[name] = slot
            n_bytes = sum(t.numel() * t.element_size() for p in delta.tensors.values() for t in p.parts.values())
            n_linear = sum(p.stats.n_params for p in delta.tensors.values() if p.kind == "linear")
            encodings = tuple(sorted({p.encoding for p in delta.tensors.values()}))
            self._footprints[name] = TenantFootprint(name, n_bytes, n_linear, encodings)

    def remove_tenant(self, name: str) -> None:
        with self._lock:
            if name not in self._slots:
                raise ConfigError(f"tenant {name!r} is not loaded; loaded: {', '.join(self.tenant_names) or 'none'}")
            slot = self._slots.pop(name)
            self._footprints.pop(name, None)
            for module in self.model.modules():
                if isinstance(module, (MultiTenantLinear, MultiTenantDense)):
                    module.remove(slot)

    def slot_of(self, name: str | None) -> int:
        if name is None:
            return -1
        try:
            return self._slots[name]
        except KeyError:
            raise ConfigError(f"tenant {name!r} is not loaded; loaded: {', '.join(self.tenant_names) or 'none'}") from None

    @contextlib.contextmanager
    def use_rows(self, tenants: Sequence[str | None]) -> Iterator[None]:
        """Run forward passes whose batch row ``i`` belongs to ``tenants[i]`` (``None``: the base)."""
        with self._lock:
            device = next(self.model.parameters()).device
            self.rows.set(torch.tensor([self.slot_of(t) for t in tenants], dtype=torch.long, device=device))
            try:
                yield
            finally:
                self.rows.set(None)

    def forward(self, tenants: Sequence[str | None], **model_kwargs: Any) -> Any:
        """``model(**model_kwargs)`` with batch row ``i`` computed for ``tenants[i]``."""
        with self.use_rows(tenants):
            return self.model(**model_kwargs)

    __call__ = forward

    # -- internals -------------------------------------------------------------------------------

    def _plan(self, name: str, delta: CompressedDelta) -> list[tuple[str, str, PackedTensor]]:
        check_finite(delta.tensors, where=f"tenant {name!r}")  # a NaN delta would poison every sampled token
        check_fingerprint(delta, self.fingerprint, where=f"tenant {name!r}: its delta", base_name="the served base")
        plan = []
        for tensor_name, packed in delta.tensors.items():
            if tuple(packed.shape) != tuple(packed.base_shape):
                raise IncompatibleBaseError(
                    f"tenant {name!r}: {tensor_name} grows the vocabulary ({packed.base_shape[0]} → {packed.shape[0]} rows); "
                    "a shared-base server cannot batch it with other tenants — serve a merged model instead"
                )
            module_name, _, param_name = tensor_name.rpartition(".")
            module = _unwrapped(self.model, module_name)
            param = _find_param(module, param_name)
            if module is None or param is None:
                raise IncompatibleBaseError(f"tenant {name!r}: the base has no parameter {tensor_name!r}")
            if tuple(param.shape) != tuple(packed.base_shape):
                raise IncompatibleBaseError(
                    f"tenant {name!r}: {tensor_name} is {list(packed.base_shape)} in the delta, {list(param.shape)} in the base"
                )
            if packed.kind == "linear" and not (isinstance(module, nn.Linear) and param_name == "weight"):
                raise IncompatibleBaseError(f"tenant {name!r}: {module_name} is a {type(module).__name__}, not a Linear layer")
            if packed.encoding != DENSE and packed.encoding not in compressors:
                raise IncompatibleBaseError(f"tenant {name!r}: {tensor_name} uses unknown encoding {packed.encoding!r}")
            plan.append((module_name, param_name, packed))
        return plan

    def _wrap(self, module_name: str) -> nn.Module:
        """The multi-tenant wrapper of a module, created (once) in place of the base module."""
        module = get_module(self.model, module_name)
        if isinstance(module, (MultiTenantLinear, MultiTenantDense)):
            return module
        if isinstance(module, nn.Linear):
            wrapper: nn.Module = MultiTenantLinear(module, self.rows, backend=self.backend)
        else:
            wrapper = MultiTenantDense(module, self.rows)
        replace_module(self.model, module_name, wrapper)
        return wrapper

    def _attach(self, slot: int, module_name: str, param_name: str, packed: PackedTensor, delta: CompressedDelta,
                signs_at: tuple[Tensor, int] | None = None) -> None:
        wrapper = self._wrap(module_name)
        if isinstance(wrapper, MultiTenantLinear):
            if param_name == "weight":
                wrapper.add_weight_delta(slot, packed, delta, signs_at=signs_at)
            else:
                wrapper.bias_deltas[slot] = packed.parts["delta"].to(wrapper.base.weight.device)
                wrapper._tables = None
        else:
            assert isinstance(wrapper, MultiTenantDense)
            wrapper.add_param_delta(slot, param_name, packed.parts["delta"])


def _coalesce(tensors: dict[str, Tensor], device: torch.device) -> dict[str, tuple[Tensor, int]]:
    """Copies of ``tensors`` in ONE flat buffer on ``device``: name → (buffer, element offset).

    A tenant's packed signs are a few hundred tensors of 10–100 KiB; allocated one by one, each
    pays allocator rounding and bookkeeping (measured: ~5% over the bits themselves). One buffer
    per tenant holds exactly the bits and is freed whole when the tenant is removed. On the CPU the
    buffer is its own anonymous memory map rather than a heap block: glibc would otherwise put it
    among the heap's small allocations (its mmap threshold grows after large frees), where freeing a
    removed tenant's bits cannot always give the pages back to the OS.
    """
    if not tensors:
        return {}
    dtype = next(iter(tensors.values())).dtype
    n_elements = sum(t.numel() for t in tensors.values())
    if device.type == "cpu":
        n_bytes = n_elements * torch.empty(0, dtype=dtype).element_size()
        buffer = torch.frombuffer(mmap.mmap(-1, n_bytes), dtype=dtype, count=n_elements)  # unmapped with the buffer
    else:
        buffer = torch.empty(n_elements, dtype=dtype, device=device)
    places, offset = {}, 0
    for name, tensor in tensors.items():
        buffer[offset:offset + tensor.numel()].copy_(tensor.reshape(-1))
        places[name] = (buffer, offset)
        offset += tensor.numel()
    return places


def _unwrapped(model: Any, module_name: str) -> Any:
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return None
    return module.base if isinstance(module, (MultiTenantLinear, MultiTenantDense)) else module


def _find_param(module: Any, param_name: str) -> Tensor | None:
    if module is None:
        return None
    try:
        return module.get_parameter(param_name)
    except AttributeError:
        return None


def _embedding_names(model: Any) -> tuple[str, str | None, bool]:
    """(input embedding module name, output head module name or None, whether the head is tied)."""
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    embed_name = names.get(id(embed), "")
    head_name = names.get(id(head)) if head is not None else None
    is_tied = head is not None and head.weight is embed.weight
    return embed_name, head_name, is_tied
