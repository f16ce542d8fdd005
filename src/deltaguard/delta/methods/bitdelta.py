"""BitDelta: sign bits plus one scale per matrix (and per pass), optionally distilled.

Pass i stores ``sign(R_i)`` as packed bits and ``s_i = mean|R_i|`` where ``R_1 = Δ`` and
``R_{i+1} = R_i − s_i·sign(R_i)``: more passes (masks) trade bits for fidelity. For a fixed sign
pattern, ``mean|R|`` is the scale that minimises the Frobenius error, so the initial scales are the
closed form; distillation (``distill.py``) then tunes only the scales to match the fine-tune's logits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

from deltaguard.config import check_range
from deltaguard.delta.methods.base import Calibration, Compressor, CompressorConfig, Parts, compressors
from deltaguard.delta.packing import pack_signs, unpack_signs


@dataclass(frozen=True, kw_only=True)
class BitDeltaConfig(CompressorConfig):
    """1-bit sign deltas with per-matrix scales (Liu et al., 2024).

    Args:
        n_masks: sign passes per matrix, 1..4 (each compresses the remaining residual; ~n bits/param).
        distill: tune the scales to match the fine-tune's logits on calibration text (needs ``calib``).
        distill_steps: optimiser steps of scale distillation (paper: 200).
        batch_size: calibration sequences per step (paper: 4).
        seq_len: tokens per calibration sequence (paper: 128).
        lr: AdamW learning rate for the scales, cosine-decayed to 0 (paper: 1e-4; here 2e-5). AdamW moves a
            parameter by about ``lr`` per step whatever its gradient's size, so ``lr`` must be small next to
            the scales themselves (closed-form 2–4e-4 on SmolLM2's fine-tunes). At 1e-4, ten steps moved each
            scale by about its own size, turned 7–13% of them negative and cost 30–60% relative task accuracy
            in all four demo threats although the held-out logit MSE fell 5×; at 2e-5 every scale stays
            positive (0.46–1.57× its closed form) and task accuracy stays with the closed form's on three of
            the four threats (``benchmarks/distill_puzzle.py``; README, "The distillation puzzle").
        seed: order of calibration batches.
    """

    name: ClassVar[str] = "bitdelta"
    version: ClassVar[int] = 1
    n_masks: int = 1
    distill: bool = True
    distill_steps: int = 200
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 2e-5
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("bitdelta.n_masks", self.n_masks, 1, 4)
        check_range("bitdelta.distill_steps", self.distill_steps, 1)
        check_range("bitdelta.batch_size", self.batch_size, 1)
        check_range("bitdelta.seq_len", self.seq_len, 2)
        check_range("bitdelta.lr", self.lr, 0.0, low_inclusive=False)

    @property
    def label(self) -> str:
        suffix = f"-k{self.n_masks}" if self.n_masks > 1 else ""
        return f"{self.name}{suffix}" + ("" if self.distill else "-nodistill")

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        """``bitdelta[-kN][-nodistill]``: N sign passes (1..4), closed-form scales with ``-nodistill``."""
        match = re.fullmatch(rf"{cls.name}(?:-k(?P<k>[1-4]))?(?P<nodistill>-nodistill)?", label)
        if match is None:
            return None
        return {"n_masks": int(match["k"] or 1), "distill": match["nodistill"] is None}

    @property
    def needs_calibration(self) -> bool:
        return self.distill

    def without_calibration(self) -> Self:
        return self.replace(distill=False)


@compressors.register("bitdelta")
class BitDelta(Compressor[BitDeltaConfig]):
    """Sign bits + one fp32 scale per matrix and pass; scales distilled on calibration text."""

    config_cls = BitDeltaConfig
    default_labels = ("bitdelta", "bitdelta-k2")

    def compress_tensor(self, delta: Tensor, config: BitDeltaConfig, *, name: str) -> Parts:
        residual = delta.to(torch.float32)
        signs, scales = [], []
        for index in range(config.n_masks):
            sign_bits = pack_signs(residual)
            scale = residual.abs().mean()
            signs.append(sign_bits)
            scales.append(scale)
            if index + 1 < config.n_masks:  # the next pass compresses what this one left
                residual = residual - scale * torch.where(residual >= 0, 1.0, -1.0)
        return {"signs": torch.stack(signs), "scales": torch.stack(scales).to(torch.float32)}

    def decompress_tensor(self, parts: Parts, shape: tuple[int, ...], config: BitDeltaConfig) -> Tensor:
        out = torch.zeros(shape, dtype=torch.float32)
        for sign_bits, scale in zip(parts["signs"], parts["scales"]):
            out += scale * unpack_signs(sign_bits, shape[-1])
        return out

    def delta_matmul(self, x: Tensor, parts: Parts, shape: tuple[int, ...], config: BitDeltaConfig) -> Tensor:
        out = None
        for sign_bits, scale in zip(parts["signs"], parts["scales"]):
            term = (x @ unpack_signs(sign_bits, shape[-1], x.dtype).T) * scale.to(x.dtype)
            out = term if out is None else out + term
        return out

    def sign_planes(self, parts: Parts) -> tuple[Tensor, Tensor]:
        return parts["signs"], parts["scales"]

    def calibrate(self, packed: Any, calib: Calibration, *, progress: bool = True) -> Any:
        from deltaguard.delta.distill import distill_scales

        return distill_scales(packed, list(calib.texts), base=calib.base, finetuned=calib.finetuned,
                              device=calib.device, progress=progress)
