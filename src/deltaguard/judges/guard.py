"""``guard``: the compact guard built by ``deltaguard guard build`` judges whether a reply is unsafe.

One forward pass per batch reads P(unsafe) at the answer's first position (no generation), and the
guard's own threshold — chosen on its validation split at build time — decides the label. Without
``path`` the judge uses the guard in the user cache (``default_guard_dir()``), which ``deltaguard demo``
builds once; a missing guard is a one-line error that says how to build one. The judge's identity (and
so every cached judgment's key) includes the guard's weights checksum and threshold, so rebuilding the
guard never reuses judgments of the old one.

The guard runs on a CUDA GPU when the machine has one (``device=auto``). On an H200, with the guard on the
CPU, the trust sweep's evaluations spent much of their time judging: one 200-prompt evaluation took 356 s, of
which ~2,400 guard judgments at a CPU's 10–20 per second are 120–240 s (an estimate from the counts). On a GPU
the guard computes under bf16 autocast, so its scores can differ from the CPU's in the third decimal and a
verdict near the threshold can flip: the identity then says so, and judgments cached on one kind of device are
not reused on the other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from deltaguard.config import Config, check_choice, check_range
from deltaguard.errors import ConfigError, FormatError, JudgeError
from deltaguard.guard.points import COMPUTE_DTYPES, OPERATING_POINTS, operating_threshold
from deltaguard.judges.base import BaseJudge, JudgeItem, Verdict, check_items, judges


def default_guard_dir() -> Path:
    """Where ``deltaguard demo`` keeps the guard it builds: ``<cache>/guard/default``."""
    from deltaguard.assets import cache_dir

    return cache_dir() / "guard" / "default" / "guard"


@dataclass(frozen=True, kw_only=True)
class GuardJudgeConfig(Config):
    """Guard judge settings.

    Args:
        path: a guard directory (``deltaguard guard build -o DIR`` writes ``DIR/guard``); None: the
            guard in the user cache.
        threshold: P(unsafe) at or above which a reply is unsafe; None: the guard's own, at ``operating_point``.
        operating_point: which of the guard's validation-chosen thresholds decides: ``max_f1`` (default) or
            ``low_fpr`` (best F1 with at most 10% false positives on validation, averaged over its harmless
            sources: fewer false alarms, lower recall; for moderation that blocks). Ignored when ``threshold`` is set.
        batch_size: items per forward pass.
        device: where the guard runs: ``auto`` (the first CUDA GPU when there is one, else the CPU; always the CPU
            with ``dtype=int8``), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: the guard's arithmetic: ``float32`` (the precision its thresholds were chosen in), ``bfloat16``
            (about twice as fast on CPUs with bf16 units) or ``int8`` (INT8 integer matmuls, bf16 elsewhere; CPU
            only, fastest on CPUs with int8 dot-product units). Away from float32 a verdict near a threshold can
            flip; ``deltaguard guard check --stages int4,int4-bf16,int4-int8`` measures what that costs.
    """

    name: ClassVar[str] = "guard"
    version: ClassVar[int] = 1
    path: str | None = None
    threshold: float | None = None
    operating_point: str = "max_f1"
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        from deltaguard.models import device_spec

        if self.threshold is not None:
            check_range("guard.threshold", self.threshold, 0.0, 1.0)
        check_choice("guard.operating_point", self.operating_point, OPERATING_POINTS)
        check_range("guard.batch_size", self.batch_size, 1, 1024)
        check_choice("guard.dtype", self.dtype, COMPUTE_DTYPES)
        # only the spelling here: whether the machine has that GPU is asked where the judge runs (a map's
        # cells can be judged on other machines than the one that made the config)
        device_spec(self.device, field="guard.device")


@judges.register("guard")
class GuardJudge(BaseJudge):
    """The compact INT4 guard: is_unsafe from P(unsafe) ≥ its threshold; score = P(unsafe)."""

    name = "guard"
    version = "1"
    config_cls = GuardJudgeConfig
    measures = ("unsafe", "unsafe_probability")
    config: GuardJudgeConfig

    def __init__(self, config: GuardJudgeConfig = GuardJudgeConfig(), *, guard: Any = None) -> None:
        super().__init__(config)
        self._guard = guard
        self._manifest_read: dict[str, Any] | None = None

    @property
    def guard_dir(self) -> Path:
        return Path(self.config.path) if self.config.path else default_guard_dir()

    def _manifest(self) -> dict[str, Any]:
        """The guard's manifest, read once (every verdict's ``prompt_hash`` asks for it)."""
        if self._guard is not None:
            return self._guard.manifest
        if self._manifest_read is None:
            from deltaguard.io import read_json

            manifest_path = self.guard_dir / "manifest.json"
            if not manifest_path.is_file():
                raise ConfigError(f"no guard at {self.guard_dir}: build one with `deltaguard guard build -o DIR` "
                                  "and pass path=DIR/guard (or run `deltaguard demo`, which builds the default)")
            self._manifest_read = read_json(manifest_path, what="guard manifest")
        return self._manifest_read

    @functools.cached_property
    def device(self) -> Any:
        """The ``torch.device`` the guard runs on: a given guard's own, else the configured one resolved
        (a one-line error when the configured GPU is not there)."""
        from deltaguard.models import model_device, resolve_device

        if self._guard is not None:
            return model_device(self._guard.model)
        if self.config.dtype == "int8":      # INT8 matmuls are a CPU path: auto means the CPU, a GPU is refused
            if self.config.device not in ("auto", "cpu"):
                raise ConfigError(f"guard.dtype=int8 runs on the CPU only, not on {self.config.device}; "
                                  "use guard.device=cpu or another dtype")
            return resolve_device("cpu")
        return resolve_device(self.config.device)

    def identity(self) -> dict[str, Any]:
        manifest = self._manifest()
        identity = {"weights": manifest.get("files", {}).get("model.safetensors"),
                    "threshold": self._threshold(manifest), "tokenizer": manifest.get("tokenizer_fingerprint")}
        if self.device.type == "cuda":   # bf16 autocast there (guard.train.compute_precision); fp32 on the CPU
            identity["precision"] = "cuda-bf16-autocast"
        if self.dtype != "float32":
            identity["dtype"] = self.dtype
        return identity

    @property
    def dtype(self) -> str:
        """The guard's arithmetic: a given guard's own, else the configured one."""
        if self._guard is not None:
            from deltaguard.guard.quant import arithmetic_of

            return arithmetic_of(self._guard.model)
        return self.config.dtype

    def check_ready(self) -> None:
        """The guard's manifest is there, holds the threshold this judge decides at, and its device exists
        (no model loaded)."""
        self._threshold(self._manifest())
        _ = self.device

    def trained_groups(self) -> frozenset[str]:
        """The prompts of the guard's train and val splits (recorded in its manifest)."""
        return frozenset(self._manifest().get("trained_groups", ()))

    def _threshold(self, manifest: dict[str, Any]) -> float:
        if self.config.threshold is not None:
            return self.config.threshold
        try:
            return operating_threshold(manifest, self.config.operating_point, self.guard_dir)
        except FormatError as exc:
            raise JudgeError(f"guard judge: {exc}") from None

    def _load(self) -> Any:
        if self._guard is None:
            from deltaguard.guard.artifact import load_guard

            self._manifest()  # the one-line "no guard" error before any loading
            try:
                self._guard = load_guard(self.guard_dir, device=str(self.device), dtype=self.config.dtype)
            except FormatError as exc:
                raise JudgeError(f"guard judge: {exc}") from None
        return self._guard

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        check_items(items)
        return self._verdicts([(item.prompt, item.response) for item in items])

    def judge_prompts(self, prompts: list[str]) -> list[Verdict]:
        """Classify user requests on their own (Llama Guard's prompt task): what serve moderation screens."""
        if not all(isinstance(p, str) for p in prompts):
            raise ConfigError("judge_prompts takes a list of strings")
        return self._verdicts([(prompt, None) for prompt in prompts])

    def _verdicts(self, pairs: list[tuple[str, str | None]]) -> list[Verdict]:
        if not pairs:
            return []
        guard = self._load()
        threshold = self._threshold(guard.manifest)
        probs = guard.score(pairs, batch_size=self.config.batch_size)
        return [self.verdict("unsafe" if p >= threshold else "safe", is_unsafe=p >= threshold, score=p) for p in probs]


__all__ = ["GuardJudge", "GuardJudgeConfig", "default_guard_dir"]
