"""What an audit compresses with and how it evaluates (``AuditConfig``), and the method lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from deltaguard.config import Config, check_range
from deltaguard.errors import ConfigError

FULL = "full"  # the uncompressed delta: base + full delta is the fine-tune itself
UNCOMPRESSED = {"bits_per_param": 32.0, "ratio_vs_fp16_delta": 0.5, "method": "uncompressed fp32 delta"}
DEFAULT_METHODS = ("bitdelta", "bitdelta-k2", "kbit4", "lowrank16", "mixed", "dare", "compeft")
FIDELITY_SWEEP = (FULL, "bitdelta-k4", "bitdelta-k3", "bitdelta-k2", "bitdelta", "bitdelta-nodistill")


@dataclass(frozen=True, kw_only=True)
class AuditConfig(Config):
    """What the audit compresses with and how it evaluates.

    Args:
        methods: compression specs (``deltaguard.delta.method_from_spec``); ``full`` is the
            uncompressed delta (the fine-tune itself), useful as the top of a fidelity sweep.
        n_prompts: prompts per evaluation set (held-out evaluation split).
        max_new_tokens: greedy tokens per reply (the keyword judge needs only the start of a reply).
        task_max_new_tokens: greedy tokens per reply on the word problems (a verbose model needs room
            to reach its answer; a reply ends earlier at its end-of-turn token).
        batch_size: prompts decoded together.
        judge: refusal judge name (``deltaguard list judges``).
        calib_set: calibration text set for methods that calibrate (BitDelta scale distillation).
        n_calib: calibration texts.
        distill_steps: override BitDelta's distillation steps (``None``: the method's default, 200).
        distill_seq_len: override BitDelta's calibration sequence length (``None``: the default).
        max_utility_drop: relative utility drop (%) a method may cost and still be recommended.
        n_boot: bootstrap resamples for the CIs of mitigation and utility drop.
        n_examples: example generations per model and set kept for the report.
        seed: seeds prompt sampling and the bootstrap.
    """

    name: ClassVar[str] = "audit"
    version: ClassVar[int] = 1
    methods: tuple[str, ...] = DEFAULT_METHODS
    n_prompts: int = 64
    max_new_tokens: int = 48
    task_max_new_tokens: int = 96
    batch_size: int = 32
    judge: str = "keyword"
    calib_set: str = "calib-chat"
    n_calib: int = 64
    distill_steps: int | None = None
    distill_seq_len: int | None = None
    max_utility_drop: float = 10.0
    n_boot: int = 2000
    n_examples: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("audit.methods must name at least one compression method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"audit.methods={list(self.methods)} repeats a method")
        for spec in self.methods:
            if spec != FULL:
                _method_config(spec, self)  # unknown specs raise ConfigError with close matches
        check_range("audit.n_prompts", self.n_prompts, 1)
        check_range("audit.max_new_tokens", self.max_new_tokens, 1, 4096)
        check_range("audit.task_max_new_tokens", self.task_max_new_tokens, 1, 4096)
        check_range("audit.batch_size", self.batch_size, 1)
        check_range("audit.n_calib", self.n_calib, 1)
        if self.distill_steps is not None:
            check_range("audit.distill_steps", self.distill_steps, 1)
        if self.distill_seq_len is not None:
            check_range("audit.distill_seq_len", self.distill_seq_len, 2)
        check_range("audit.max_utility_drop", self.max_utility_drop, 0.0, 100.0)
        check_range("audit.n_boot", self.n_boot, 100)
        check_range("audit.n_examples", self.n_examples, 0)


def _method_config(spec: str, config: AuditConfig) -> Any:
    from deltaguard.delta import method_from_spec

    method = method_from_spec(spec)
    if method.name == "bitdelta" and getattr(method, "distill", False):
        changes = {}
        if config.distill_steps is not None:
            changes["distill_steps"] = config.distill_steps
        if config.distill_seq_len is not None:
            changes["seq_len"] = config.distill_seq_len
        method = method.replace(**changes)
    return method
