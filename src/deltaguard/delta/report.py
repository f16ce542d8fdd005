"""What a compressed delta costs and loses: per-tensor and summary figures, and a table for people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from rich.table import Table
from torch import Tensor


@dataclass(frozen=True)
class TensorStats:
    """Size and fidelity of one stored tensor delta."""

    n_params: int
    n_bytes: int
    rel_error: float  # ‖Δ − Δ̂‖_F / ‖Δ‖_F
    cosine: float     # cos(Δ, Δ̂)
    note: str = ""

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.n_bytes / self.n_params if self.n_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n_params": self.n_params, "n_bytes": self.n_bytes, "rel_error": self.rel_error,
                "cosine": self.cosine, "note": self.note}


def fidelity(delta: Tensor, approx: Tensor) -> tuple[float, float]:
    """(relative Frobenius error, cosine similarity); an all-zero delta counts as exact.

    Sums run in fp32 (torch accumulates them pairwise), accurate to ~1e-6 relative, and avoid
    copying every matrix to fp64 on the hot path of compression.
    """
    delta, approx = delta.reshape(-1).float(), approx.reshape(-1).float()
    norm, approx_norm = float(torch.linalg.vector_norm(delta)), float(torch.linalg.vector_norm(approx))
    if norm == 0:
        return (0.0 if approx_norm == 0 else float("inf")), 1.0
    error = float(torch.linalg.vector_norm(delta - approx)) / norm
    cosine = float(torch.dot(delta, approx)) / (norm * approx_norm) if approx_norm > 0 else 0.0
    return error, cosine


@dataclass(frozen=True)
class CompressionReport:
    """Per tensor: kind, encoding, bits, error; plus totals against fp16 baselines."""

    method: str
    rows: tuple[tuple[str, str, str, TensorStats], ...]  # (name, kind, encoding, stats)
    n_model_params: int
    n_unchanged: int
    is_calibrated: bool = False  # per-tensor errors then describe the closed-form scales, before calibration

    def _sum(self, kind: str | None, attr: str) -> int:
        return sum(getattr(s, attr) for _, k, _, s in self.rows if kind is None or k == kind)

    def summary(self) -> dict[str, Any]:
        n_bytes, n_params = self._sum(None, "n_bytes"), self._sum(None, "n_params")
        lin_bytes, lin_params = self._sum("linear", "n_bytes"), self._sum("linear", "n_params")
        linear = [s for _, k, _, s in self.rows if k == "linear"]
        kept = [name for name, _, _, s in self.rows if s.note]
        return {
            "method": self.method,
            "n_bytes": n_bytes,
            "n_delta_params": n_params,
            "bits_per_param": 8.0 * n_bytes / n_params if n_params else 0.0,
            "ratio_vs_fp16_delta": 2.0 * n_params / n_bytes if n_bytes else float("inf"),
            "ratio_vs_fp16_model": 2.0 * self.n_model_params / n_bytes if n_bytes else float("inf"),
            "linear_n_bytes": lin_bytes,
            "linear_n_params": lin_params,
            "linear_bits_per_param": 8.0 * lin_bytes / lin_params if lin_params else 0.0,
            "linear_ratio_vs_fp16_delta": 2.0 * lin_params / lin_bytes if lin_bytes else float("inf"),
            "linear_mean_rel_error": sum(s.rel_error for s in linear) / len(linear) if linear else 0.0,
            "linear_mean_cosine": sum(s.cosine for s in linear) / len(linear) if linear else 1.0,
            "n_tensors": len(self.rows),
            "n_unchanged_tensors": self.n_unchanged,
            "kept_uncompressed": kept,
            "errors_measured_before_calibration": self.is_calibrated,
        }

    def table(self, *, max_rows: int = 12) -> Table:
        """A rich table: the worst tensors by error, then the totals."""
        table = Table(title=f"{self.method}: per-tensor (worst {max_rows} by error) and totals")
        for column in ("tensor", "kind", "encoding", "params", "bytes", "bits/param", "rel. error", "cosine"):
            table.add_column(column, justify="left" if column in ("tensor", "kind", "encoding") else "right")
        worst = sorted(self.rows, key=lambda r: -r[3].rel_error)[:max_rows]
        for name, kind, encoding, stats in worst:
            table.add_row(name + (f" ({stats.note})" if stats.note else ""), kind, encoding, f"{stats.n_params:,}",
                          f"{stats.n_bytes:,}", f"{stats.bits_per_param:.3f}", f"{stats.rel_error:.4f}", f"{stats.cosine:.4f}")
        s = self.summary()
        table.add_section()
        table.add_row("linear layers", "", "", f"{s['linear_n_params']:,}", f"{s['linear_n_bytes']:,}",
                      f"{s['linear_bits_per_param']:.3f}", f"{s['linear_mean_rel_error']:.4f}", f"{s['linear_mean_cosine']:.4f}")
        table.add_row("all stored deltas", "", "", f"{s['n_delta_params']:,}", f"{s['n_bytes']:,}",
                      f"{s['bits_per_param']:.3f}", "", "")
        table.caption = (
            f"{s['ratio_vs_fp16_delta']:.2f}x smaller than the fp16 delta (linear layers {s['linear_ratio_vs_fp16_delta']:.2f}x), "
            f"{s['ratio_vs_fp16_model']:.2f}x smaller than the fp16 model; {s['n_unchanged_tensors']} unchanged tensors not stored"
        )
        if self.is_calibrated:
            table.caption += "; errors are of the closed-form scales (calibration then minimised the logit error)"
        return table
