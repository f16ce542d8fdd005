"""Export a compressed delta as a PEFT LoRA adapter that serving engines (vLLM multi-LoRA) load as is.

PEFT computes ``W' = W + (lora_alpha / r)·B·A`` with ``lora_A`` ``[r, in]`` and ``lora_B`` ``[out, r]``;
the adapter is written with ``lora_alpha = r``, so the scale is exactly 1 and ``B·A`` is the delta.

* A delta stored as low-rank factors (``lowrank``; ``mixed``, whose singular vectors are dequantised)
  exports exactly: the stored factors become ``lora_B`` / ``lora_A``. A ``rank`` below the stored rank
  truncates them optimally (SVD of the product, through the factors' QR).
* Any other delta (BitDelta, k-bit, DARE, ComPEFT, 16-bit linear deltas) is decompressed the way
  ``merge`` does (``CompressedDelta.decompress``) and approximated by a truncated SVD at ``rank``.
* Each matrix is reported with ``‖ΔW − B·A‖_F / ‖ΔW‖_F`` (measured, not inferred) and the share of
  ``‖ΔW‖²_F`` its kept singular values hold; a LoRA adapter carries only deltas of ``nn.Linear``
  weights, so norms, biases, embeddings and the output head are refused unless ``drop_non_linear``,
  and then their share of the delta's norm is reported.

Matrices of lower rank than the adapter's ``r`` are zero-padded to it: one uniform ``r`` and
``lora_alpha`` is what every engine reads (``rank_pattern`` / ``alpha_pattern`` are not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deltaguard.delta.methods import DENSE, LowRank, Mixed, compressors
from deltaguard.delta.methods.quant import dequantize_groups
from deltaguard.delta.store import MANIFEST_FILE, CompressedDelta, PackedTensor, load_delta
from deltaguard.errors import ConfigError, FormatError
from deltaguard.io import atomic_dir, sha256_file, write_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXPORT_RECORD = "deltaguard_export.json"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the model in LoraModel (``base_model``) around ``model``


@dataclass(frozen=True)
class MatrixExport:
    """One linear weight's delta as a LoRA pair.

    ``source``: ``factors`` (the stored low-rank factors, exact), ``factors-truncated`` (the stored
    factors cut to a lower rank) or ``svd`` (the decompressed delta's truncated SVD).
    """

    name: str
    shape: tuple[int, int]
    rank: int            # rank of this matrix's factors (zero-padded to the adapter's r in the file)
    source: str
    rel_error: float     # ‖ΔW − B·A‖_F / ‖ΔW‖_F
    energy_kept: float   # Σ kept σ² / ‖ΔW‖²_F
    norm: float          # ‖ΔW‖_F

    @property
    def module(self) -> str:
        return self.name.removesuffix(".weight")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "rank": self.rank, "source": self.source,
                "rel_error": self.rel_error, "energy_kept": self.energy_kept, "norm": self.norm}


@dataclass(frozen=True)
class DroppedTensor:
    """A tensor the delta changes that a LoRA adapter cannot carry."""

    name: str
    shape: tuple[int, ...]
    reason: str
    norm: float          # ‖Δ‖_F over the base rows

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "reason": self.reason, "norm": self.norm}


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and what it lost."""

    out_dir: Path
    method: str
    rank: int                           # the adapter's r (= lora_alpha)
    requested_rank: int | None
    target_modules: tuple[str, ...]
    base_model_name_or_path: str | None
    source: str | None                  # the delta directory (None: exported from memory)
    manifest_sha256: str | None         # sha256 of the source delta's manifest.json
    base_fingerprint: str
    matrices: tuple[MatrixExport, ...]
    dropped: tuple[DroppedTensor, ...] = ()
    format: str = "peft"

    @property
    def exact(self) -> bool:
        """Every exported matrix is its stored factors and nothing was dropped."""
        return not self.dropped and all(m.source == "factors" for m in self.matrices)

    @property
    def rel_error(self) -> float:
        """‖ΔW − B·A‖_F / ‖ΔW‖_F over all exported matrices together."""
        total = sum(m.norm**2 for m in self.matrices)
        error = sum((m.rel_error * m.norm) ** 2 for m in self.matrices)
        return math.sqrt(error / total) if total > 0 else 0.0

    @property
    def energy_kept(self) -> float:
        total = sum(m.norm**2 for m in self.matrices)
        return sum(m.energy_kept * m.norm**2 for m in self.matrices) / total if total > 0 else 1.0

    @property
    def dropped_rel_norm(self) -> float:
        """‖dropped deltas‖_F / ‖whole delta‖_F: the share of the delta the adapter does not carry."""
        dropped = sum(d.norm**2 for d in self.dropped)
        total = dropped + sum(m.norm**2 for m in self.matrices)
        return math.sqrt(dropped / total) if total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "out_dir": str(self.out_dir), "source": self.source,
            "manifest_sha256": self.manifest_sha256, "base_fingerprint": self.base_fingerprint,
            "method": self.method, "base_model_name_or_path": self.base_model_name_or_path,
            "rank": self.rank, "lora_alpha": self.rank, "requested_rank": self.requested_rank,
            "target_modules": list(self.target_modules), "exact": self.exact,
            "rel_error": self.rel_error, "energy_kept": self.energy_kept,
            "dropped_rel_norm": self.dropped_rel_norm,
            "matrices": [m.to_dict() for m in self.matrices],
            "dropped": [d.to_dict() for d in self.dropped],
        }

    def table(self, *, max_rows: int = 12) -> Any:
        """A rich table: the worst matrices by error, the totals, and what was dropped."""
        from rich.table import Table

        table = Table(title=f"{self.method} → PEFT LoRA r={self.rank}: per matrix (worst {max_rows} by error)")
        for column in ("matrix", "shape", "rank", "source", "rel. error", "energy kept"):
            table.add_column(column, justify="left" if column in ("matrix", "source") else "right")
        for m in sorted(self.matrices, key=lambda m: -m.rel_error)[:max_rows]:
            table.add_row(m.name, "x".join(map(str, m.shape)), str(m.rank), m.source, f"{m.rel_error:.4f}",
                          f"{m.energy_kept:.4f}")
        table.add_section()
        table.add_row(f"all {len(self.matrices)} matrices", "", str(self.rank), "exact" if self.exact else "",
                      f"{self.rel_error:.4f}", f"{self.energy_kept:.4f}")
        for d in self.dropped[:max_rows]:
            table.add_row(f"dropped: {d.name} ({d.reason})", "x".join(map(str, d.shape)), "", "", "", "")
        caption = f"lora_alpha = r = {self.rank} (scale 1)"
        if self.dropped:
            caption += (f"; {len(self.dropped)} non-linear tensor(s) dropped, {self.dropped_rel_norm:.2%} of the "
                        "delta's Frobenius norm")
        table.caption = caption
        return table


def export_peft(delta: CompressedDelta | str | Path, out_dir: str | Path, *, rank: int | None = None,
                base: str | None = None, drop_non_linear: bool = False, overwrite: bool = False) -> ExportReport:
    """Write ``delta`` as a PEFT LoRA adapter directory (``adapter_config.json``, ``adapter_model.safetensors``,
    ``deltaguard_export.json``), atomically; returns the per-matrix errors.

    Args:
        delta: a compressed delta directory, or one already loaded.
        out_dir: the adapter directory to create.
        rank: the adapter's rank. Optional for low-rank deltas (default: their stored rank; lower truncates),
            required for any other method (the decompressed matrices are approximated by a truncated SVD).
        base: recorded as ``base_model_name_or_path``; default: the base the delta records.
        drop_non_linear: export without the deltas of norms, biases, embeddings and the head (else refused).
        overwrite: replace an existing ``out_dir`` (only once the new adapter is complete).
    """
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"--rank must be a positive integer, got {rank!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir} already exists (choose another output or pass --force)")
    source, manifest_sha = None, None
    if not isinstance(delta, CompressedDelta):
        source = Path(delta)
        delta = load_delta(source)  # verifies the manifest, every checksum, shape and finite value
        manifest_sha = sha256_file(source / MANIFEST_FILE)
    modules = _module_types(delta.model_config)
    linear, dropped_names = _split(delta, modules)
    if dropped_names and not drop_non_linear:
        first = ", ".join(f"{name} ({reason})" for name, reason in dropped_names[:2])
        more = f" and {len(dropped_names) - 2} more" if len(dropped_names) > 2 else ""
        raise ConfigError(f"the delta changes {len(dropped_names)} tensor(s) a LoRA adapter cannot carry: {first}{more}; "
                          "pass --drop-non-linear to export without them (the report gives their share of the delta)")
    if not linear:
        raise ConfigError(f"nothing to export: the {delta.config.label} delta changes no linear-layer weight")
    unfactored = [name for name in linear if not _is_factored(delta.tensors[name])]
    if unfactored and rank is None:
        raise ConfigError(f"--rank is required: the {delta.config.label} delta stores {len(unfactored)} linear "
                          "matrix/matrices that are not low-rank factors, which are approximated by a truncated SVD "
                          "at that rank (e.g. --rank 16)")
    dropped = tuple(DroppedTensor(name, delta.tensors[name].shape, reason, float(delta.decompress(name).norm()))
                    for name, reason in dropped_names)
    factors: dict[str, tuple[Tensor, Tensor]] = {}
    matrices = []
    for name in linear:
        b, a, matrix = _lora_pair(delta, delta.tensors[name], rank)
        factors[name] = (b, a)
        matrices.append(matrix)
    adapter_rank = max(1, *(m.rank for m in matrices))  # PEFT needs r >= 1 (an all-zero delta has rank 0)
    targets = _target_modules([m.module for m in matrices], modules)
    base_name = base if base is not None else delta.meta.get("base", {}).get("source")
    report = ExportReport(out_dir, delta.config.label, adapter_rank, rank, targets, base_name,
                          str(source) if source is not None else None, manifest_sha, delta.base_fingerprint,
                          tuple(matrices), dropped)
    _write(report, factors, overwrite=overwrite)
    return report


def _write(report: ExportReport, factors: dict[str, tuple[Tensor, Tensor]], *, overwrite: bool) -> None:
    from peft import LoraConfig
    from safetensors.torch import save_file

    r = report.rank
    weights = {}
    # PEFT's key names, written by hand: peft saves only a live PeftModel (it would need the whole base
    # model loaded); its file layout is this mapping: <module>.lora_A.weight [r, in], .lora_B.weight [out, r].
    for name, (b, a) in factors.items():
        module = PEFT_PREFIX + name.removesuffix(".weight")
        weights[f"{module}.lora_A.weight"] = _pad_rows(a, r).contiguous()
        weights[f"{module}.lora_B.weight"] = _pad_rows(b.T, r).T.contiguous()
    config = LoraConfig(r=r, lora_alpha=r, target_modules=list(report.target_modules), lora_dropout=0.0,
                        bias="none", fan_in_fan_out=False, task_type="CAUSAL_LM", inference_mode=True,
                        base_model_name_or_path=report.base_model_name_or_path)
    with atomic_dir(report.out_dir, overwrite=overwrite) as tmp:
        config.save_pretrained(str(tmp))
        save_file(weights, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        write_json(tmp / EXPORT_RECORD, report.to_dict())


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    """Zero rows appended up to ``rows``: zero directions leave ``B·A`` unchanged."""
    return x if x.shape[0] == rows else torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])


def _split(delta: CompressedDelta, modules: dict[str, str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(tensors that are ``nn.Linear`` weights, [(tensor, why it is not)]) over the delta's tensors."""
    heads = {name for name, kind in modules.items() if kind in ("input-embedding", "output-embedding")}
    linear, dropped = [], []
    for name, packed in delta.tensors.items():
        module, _, leaf = name.rpartition(".")
        kind = modules.get(module)
        if kind is None:
            raise FormatError(f"the delta changes {name}, but a {delta.model_config.get('model_type')} model built from "
                              "the delta's model_config has no such module")
        if module in heads:
            reason = "embedding" if kind == "input-embedding" else "output head"
        elif kind != "Linear":
            reason = f"{kind} {leaf}"
        elif leaf != "weight":
            reason = f"Linear {leaf}"
        elif packed.shape != packed.base_shape or len(packed.base_shape) != 2:
            reason = "vocabulary grew"
        else:
            linear.append(name)
            continue
        dropped.append((name, reason))
    return linear, dropped


def _module_types(model_config: dict[str, Any]) -> dict[str, str]:
    """Module name → class name (``input-embedding`` / ``output-embedding`` for those), from a model built
    on the meta device from the delta's config: no weights, milliseconds, and the true module types."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    model_type = model_config.get("model_type")
    try:
        config = CONFIG_MAPPING[model_type].from_dict(dict(model_config))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # an unknown or malformed config: transformers raises many types
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise FormatError(f"cannot lay out a {model_type!r} model from the delta's model_config "
                          f"({type(exc).__name__}: {detail})") from None
    types = {name: "Linear" if isinstance(module, nn.Linear) else type(module).__name__
             for name, module in model.named_modules(remove_duplicate=False)}
    for kind, embedding in (("input-embedding", model.get_input_embeddings()),
                            ("output-embedding", model.get_output_embeddings())):
        for name, module in model.named_modules(remove_duplicate=False):
            if embedding is not None and module is embedding:
                types[name] = kind
    return types


def _target_modules(exported: list[str], modules: dict[str, str]) -> tuple[str, ...]:
    """PEFT's ``target_modules``: leaf names (``q_proj``) when the adapter covers every module of each such
    name, else the exact module paths (a leaf name would wrap modules the adapter has no weights for)."""
    chosen = set(exported)
    leaves = {name.rpartition(".")[2] for name in chosen}
    complete = all(name in chosen for name in modules if name.rpartition(".")[2] in leaves)
    return tuple(sorted(leaves if complete else chosen))


def _is_factored(packed: PackedTensor) -> bool:
    """Whether the tensor is stored as low-rank factors (by a method whose factors ``_factors`` reads).

    Dispatched on the compressor class here, as the compressor interface has no factor accessor yet.
    """
    if packed.kind != "linear" or packed.encoding == DENSE:
        return False
    return issubclass(compressors.get(packed.encoding), (LowRank, Mixed))


def _factors(delta: CompressedDelta, packed: PackedTensor) -> tuple[Tensor, Tensor] | None:
    """``(B [out, k], A [k, in])`` with ``B·A`` = the stored delta, for methods that store low-rank factors."""
    if not _is_factored(packed):
        return None
    compressor = compressors.get(packed.encoding)
    parts = packed.parts
    if issubclass(compressor, LowRank):  # Δ = a·b with a = U_r·S_r [out, r], b = V_rᵀ [r, in]
        return parts["a"].float(), parts["b"].float()
    if issubclass(compressor, Mixed):  # Δ = Σ_bands (u_bandᵀ·s_band)·v_band, vectors dequantised
        out_dim, in_dim = packed.base_shape
        bs, as_ = [], []
        for index, (start, stop, _width) in enumerate(delta.config.bands(min(packed.base_shape))):
            u = _band_vectors(parts, index, "u", stop - start, out_dim)
            v = _band_vectors(parts, index, "v", stop - start, in_dim)
            bs.append(u.T * parts["s"][start:stop].float())
            as_.append(v)
        if not bs:
            return torch.zeros(out_dim, 0), torch.zeros(0, in_dim)
        return torch.cat(bs, dim=1), torch.cat(as_, dim=0)
    return None


def _band_vectors(parts: dict[str, Tensor], index: int, side: str, count: int, length: int) -> Tensor:
    prefix = f"b{index}.{side}."
    band = {key[len(prefix):]: value for key, value in parts.items() if key.startswith(prefix)}
    return dequantize_groups(band, count * length, length).reshape(count, length)


def _lora_pair(delta: CompressedDelta, packed: PackedTensor, rank: int | None
               ) -> tuple[Tensor, Tensor, MatrixExport]:
    """``(B, A, report row)`` for one linear weight, in fp32."""
    target = delta.decompress(packed.name)  # ΔW exactly as merge adds it
    norm = float(torch.linalg.matrix_norm(target))
    shape = (int(target.shape[0]), int(target.shape[1]))
    factors = _factors(delta, packed)
    if factors is not None and (rank is None or rank >= factors[0].shape[1]):
        b, a = factors
        source, energy = "factors", 1.0
    else:
        # The truncated SVD by hand: peft has no "fit a LoRA to a given matrix" API. Exact torch.linalg.svd,
        # not the randomised svd_lowrank: it is the Eckart-Young optimum at every rank (near full rank too),
        # deterministic, and yields every singular value for the energy kept.
        assert rank is not None
        if factors is not None:  # SVD of B·A through the factors' QR: k x k work, never the dense product
            q_b, r_b = torch.linalg.qr(factors[0])
            q_a, r_a = torch.linalg.qr(factors[1].T)
            u, s, vh = torch.linalg.svd(r_b @ r_a.T)
            u, vh = q_b @ u, vh @ q_a.T
            source = "factors-truncated"
        else:
            u, s, vh = torch.linalg.svd(target, full_matrices=False)
            source = "svd"
        r = min(rank, s.numel())
        root = s[:r].sqrt()  # split σ evenly between B and A: balanced magnitudes survive fp16 serving best
        b, a = u[:, :r] * root, root[:, None] * vh[:r]
        total = float(s.pow(2).sum())
        energy = float(s[:r].pow(2).sum()) / total if total > 0 else 1.0
    error = float(torch.linalg.matrix_norm(target - b @ a))
    rel_error = error / norm if norm > 0 else (0.0 if error == 0 else math.inf)
    return b, a, MatrixExport(packed.name, shape, int(a.shape[0]), source, rel_error, energy, norm)
