"""``awq``: activation-aware weight quantization (labels ``awq-<scheme>`` or ``awq<bits>``: ``awq4`` =
``awq-w4a16``): input channels with large activations are scaled up before rounding (``quant.awq``).
Calibration text as for GPTQ: ``calib-chat``'s calib split, 128 texts, checked against every evaluation
split.
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
class AWQConfig(CalibratedWeightConfig):
    """AWQ settings (and every ``CalibratedWeightConfig`` field).

    Args:
        grid: α values tried per scaling pair (0, 1/grid, …).
        search_batches: calibration batches the block error is measured on during the search.
    """

    name: ClassVar[str] = "awq"
    version: ClassVar[int] = 1
    grid: int = 20
    search_batches: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("awq.grid", self.grid, 1, 1000)
        check_range("awq.search_batches", self.search_batches, 1, 10_000)


@transforms.register("awq")
class AWQ(Transform[AWQConfig]):
    """AWQ: per-channel scales searched on calibration activations, folded, then round-to-nearest."""

    config_cls = AWQConfig

    def apply_(self, model: Any, config: AWQConfig, *, calib: list[str] | None = None, tokenizer: Any = None,
               reference: Any = None, workdir: Path | None = None) -> Any:
        from deltaguard.errors import ConfigError
        from deltaguard.quant.awq import quantize_awq
        from deltaguard.quant.fake import scheme

        if tokenizer is None:
            raise ConfigError(f"{config.label} needs the model's tokenizer for its calibration text")
        started = time.perf_counter()
        prompts = config.prompts()
        record = quantize_awq(model, tokenizer, prompts, plan=scheme(config.scheme), grid=config.grid,
                              search_batches=config.search_batches, batch_size=config.batch_size,
                              max_tokens=config.max_tokens, seed=config.seed, label=config.label)
        record["calibration_prompts"] = prompts.describe()
        record["seconds_total"] = round(time.perf_counter() - started, 1)
        model.deltaguard_quant_record = record
        return model

    def record(self, config: AWQConfig) -> dict[str, Any]:
        return scheme_record(config)


__all__ = ["AWQ", "AWQConfig"]
