"""Pruning transforms: ``magnitude``, ``wanda`` and ``sparsegpt``, labelled ``<method>-<pattern>`` with the
pattern ``50`` (unstructured, 50% of each decoder linear), ``2:4`` or ``4:8`` (``wanda-2:4``,
``sparsegpt-50``).

- ``magnitude`` — drop the smallest ``|W|`` in each output row; no data.
- ``wanda`` — drop the smallest ``|W| · ‖X_j‖₂`` in each row, the input norms from calibration text
  (Sun et al., 2023); no weight update.
- ``sparsegpt`` — prune column by column and update the remaining weights to compensate (Frantar &
  Alistarh, 2023).

Calibration text (wanda, sparsegpt): 128 texts of ``calib-chat``'s calib split, checked against every
evaluation split; the inputs of each block come from the blocks already pruned. The pruned model keeps
its float layout (zeros stored as values): the point here is what pruning does to behaviour, not its size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from deltaguard.config import check_range
from deltaguard.errors import ConfigError
from deltaguard.transforms.base import Transform, TransformConfig, transforms


@dataclass(frozen=True, kw_only=True)
class PruneConfig(TransformConfig):
    """A pruning pattern plus calibration settings (the latter unused by magnitude pruning).

    Args:
        sparsity: share of each row pruned when unstructured (``n``/``m`` 0).
        n, m: the N:M pattern (``2:4``: 2 of every 4 input weights zero).
        n_calib, calib_sets, batch_size, max_tokens, damp, seed: calibration text and settings.
    """

    name: ClassVar[str] = "magnitude"
    version: ClassVar[int] = 1
    sparsity: float = 0.5
    n: int = 0
    m: int = 0
    n_calib: int = 128
    calib_sets: tuple[str, ...] = ("calib-chat",)
    batch_size: int = 8
    max_tokens: int = 128
    damp: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        self.pattern()
        check_range(f"{self.name}.n_calib", self.n_calib, 1, 100_000)
        check_range(f"{self.name}.damp", self.damp, 0.0, 1.0, high_inclusive=False)

    def pattern(self) -> Any:
        from deltaguard.prune.masks import Pattern

        return Pattern(sparsity=self.sparsity, n=self.n, m=self.m)

    @property
    def label(self) -> str:
        return f"{self.name}-{self.pattern().label}"

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        if label == cls.name:
            return {}
        head, _, tail = label.partition("-")
        if head != cls.name:
            return None
        if ":" in tail:
            n, _, m = tail.partition(":")
            return {"n": int(n), "m": int(m)} if n.isdigit() and m.isdigit() else None
        return {"sparsity": int(tail) / 100} if tail.isdigit() else None

    @property
    def uses_data(self) -> bool:
        return self.name != "magnitude"

    def prompts(self) -> Any:
        from deltaguard.quant.calibset import calibration_prompts

        return calibration_prompts(harmful_sets=(), benign_sets=self.calib_sets, n_harmful=0, n_benign=self.n_calib,
                                   seed=self.seed)


@dataclass(frozen=True, kw_only=True)
class WandaConfig(PruneConfig):
    name: ClassVar[str] = "wanda"


@dataclass(frozen=True, kw_only=True)
class SparseGPTConfig(PruneConfig):
    name: ClassVar[str] = "sparsegpt"


class _Prune(Transform[PruneConfig]):
    config_cls: ClassVar[type[TransformConfig]] = PruneConfig

    @torch.no_grad()
    def apply_(self, model: Any, config: PruneConfig, *, calib: list[str] | None = None, tokenizer: Any = None,
               reference: Any = None, workdir: Path | None = None) -> Any:
        from deltaguard.prune.masks import mask_from_scores, sparsegpt_prune
        from deltaguard.quant.block import LINEARS
        from deltaguard.quant.gptq import rewrite_sequentially
        from deltaguard.quant.probes import decoder_layers

        started = time.perf_counter()
        pattern = config.pattern()
        linears = [m for layer in decoder_layers(model) for n, m in layer.named_modules() if n in LINEARS]
        for linear in linears:   # an N:M pattern that does not fit: fail before any work
            pattern.check_fits(linear.in_features)
        record: dict[str, Any] = {}
        if not config.uses_data:
            for linear in linears:
                linear.weight[mask_from_scores(linear.weight.abs(), pattern)] = 0.0
        else:
            if tokenizer is None:
                raise ConfigError(f"{config.label} needs the model's tokenizer for its calibration text")

            def rewrite(_name: str, linear: Any, hessian: torch.Tensor) -> None:
                if config.name == "wanda":
                    norms = torch.diag(hessian).clamp(min=0).sqrt().to(linear.weight.dtype)   # ∝ ‖X_j‖₂
                    linear.weight[mask_from_scores(linear.weight.abs() * norms[None, :], pattern)] = 0.0
                else:
                    linear.weight.copy_(sparsegpt_prune(linear.weight, hessian, pattern, damp=config.damp))

            prompts = config.prompts()
            record = rewrite_sequentially(model, tokenizer, prompts, rewrite, batch_size=config.batch_size,
                                          max_tokens=config.max_tokens, seed=config.seed, label=config.label)
            record["calibration_prompts"] = prompts.describe()
        zeros = sum(int((m.weight == 0).sum()) for m in linears)
        record.update({"sparsity": zeros / sum(m.weight.numel() for m in linears),
                       "seconds_total": round(time.perf_counter() - started, 1)})
        model.deltaguard_quant_record = record
        return model

    def record(self, config: PruneConfig) -> dict[str, Any]:
        return {"method": config.to_dict(), "pattern": config.pattern().label}


@transforms.register("magnitude")
class Magnitude(_Prune):
    """Magnitude pruning: the smallest |W| of each row."""

    config_cls = PruneConfig


@transforms.register("wanda")
class Wanda(_Prune):
    """Wanda: the smallest |W|·‖X‖ of each row, from calibration inputs (no weight update)."""

    config_cls = WandaConfig


@transforms.register("sparsegpt")
class SparseGPT(_Prune):
    """SparseGPT: column-wise pruning with second-order compensation of the remaining weights."""

    config_cls = SparseGPTConfig


__all__ = ["Magnitude", "PruneConfig", "SparseGPT", "SparseGPTConfig", "Wanda", "WandaConfig"]
