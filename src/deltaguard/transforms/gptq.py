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
from deltaguard.transforms.quantize import CalibratedWeightConfig, scheme_record


@dataclass(frozen=True, kw_only=True)
class GPTQConfig(CalibratedWeightConfig):
    """GPTQ settings (and every ``CalibratedWeightConfig`` field).

    Args:
        act_order: quantize columns in order of decreasing Hessian diagonal.
        damp: diagonal damping as a fraction of the mean diagonal.
    """

    name: ClassVar[str] = "gptq"
    version: ClassVar[int] = 1
    act_order: bool = True
    damp: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("gptq.damp", self.damp, 0.0, 1.0, high_inclusive=False)


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
        return scheme_record(config)


__all__ = ["GPTQ", "GPTQConfig"]
