"""``gptq``: GPTQ weight quantization (labels ``gptq-<scheme>`` or ``gptq<bits>``: ``gptq4`` = ``gptq-w4a16``).

Each decoder linear is quantized with second-order error correction from its calibration inputs
(``quant.gptq``): groups of 128, ``act_order``, 1% damping, 128 calibration texts by default — the
setting Decoding Compressed Trust evaluates. Calibration text comes from the ``calib`` split of
``calib-chat`` (generic everyday-advice paragraphs; the paper used C4, which is not available offline)
and is checked against every evaluation split. A calibrated method takes a seed (which texts, in which
order); the trust sweep runs seeds 0, 1, 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from deltaguard.config import check_range
from deltaguard.transforms.base import Transform, transforms
from deltaguard.transforms.quantize import RTNConfig


@dataclass(frozen=True, kw_only=True)
class GPTQConfig(RTNConfig):
    """GPTQ settings.

    Args:
        scheme: ``w4a16`` (default), ``w3a16``, ``w8a16`` — weight-only, groups of 128 — or any other preset.
        n_calib: calibration texts (128 in GPTQ and the trust paper).
        calib_sets: where they come from (``calib`` split).
        act_order: quantize columns in order of decreasing Hessian diagonal.
        damp: diagonal damping as a fraction of the mean diagonal.
        batch_size, max_tokens: texts per forward pass; tokens kept per text.
        seed: which texts are drawn.
    """

    name: ClassVar[str] = "gptq"
    version: ClassVar[int] = 1
    scheme: str = "w4a16"
    n_calib: int = 128
    calib_sets: tuple[str, ...] = ("calib-chat",)
    act_order: bool = True
    damp: float = 0.01
    batch_size: int = 8
    max_tokens: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("gptq.n_calib", self.n_calib, 1, 100_000)
        check_range("gptq.damp", self.damp, 0.0, 1.0, high_inclusive=False)
        check_range("gptq.batch_size", self.batch_size, 1, 4096)
        check_range("gptq.max_tokens", self.max_tokens, 4, 8192)

    @property
    def saves_model(self) -> bool:
        return True

    def prompts(self) -> Any:
        from deltaguard.quant.calibset import calibration_prompts

        return calibration_prompts(harmful_sets=(), benign_sets=self.calib_sets, n_harmful=0, n_benign=self.n_calib,
                                   seed=self.seed)


@transforms.register("gptq")
class GPTQ(Transform[GPTQConfig]):
    """GPTQ: per-column rounding with second-order error correction from calibration inputs."""

    config_cls = GPTQConfig

    def apply_(self, model: Any, config: GPTQConfig, *, calib: list[str] | None = None, tokenizer: Any = None,
               reference: Any = None, workdir: Path | None = None) -> Any:
        from deltaguard.errors import ConfigError
        from deltaguard.quant.fake import scheme
        from deltaguard.quant.gptq import quantize_gptq

        if tokenizer is None:
            raise ConfigError(f"{config.label} needs the model's tokenizer for its calibration text")
        started = time.perf_counter()
        prompts = config.prompts()
        record = quantize_gptq(model, tokenizer, prompts, plan=scheme(config.scheme), act_order=config.act_order,
                               damp=config.damp, batch_size=config.batch_size, max_tokens=config.max_tokens,
                               seed=config.seed, label=config.label)
        record["calibration_prompts"] = prompts.describe()
        record["seconds_total"] = round(time.perf_counter() - started, 1)
        model.deltaguard_quant_record = record
        model.deltaguard_probes = None
        return model

    def record(self, config: GPTQConfig) -> dict[str, Any]:
        from deltaguard.quant.fake import scheme

        plan = scheme(config.scheme)
        return {"method": config.to_dict(), "w_bits": plan.w_bits, "a_bits": plan.a_bits, "group_size": plan.group_size}


__all__ = ["GPTQ", "GPTQConfig"]
