"""Whole-model quantization transforms: ``rtn``, ``omniquant`` and ``qrealign`` (labels ``<name>-<scheme>``,
e.g. ``rtn-w8a8``, ``omniquant-w8a8``, ``qrealign-w8a8``).

- ``rtn`` — round-to-nearest: every decoder linear on its per-row (or per-group) min/max grid, activations
  per token; no data. The baseline that shows what quantization alone does.
- ``omniquant`` — block-wise calibration with learnable clipping and smoothing (``quant.calibrate``),
  every calibration prompt reconstructed (MSE). Q-realign's ablation: the same calibration without the
  safety term.
- ``qrealign`` — the same, with per-layer safety probes fitted on a *reference* (the aligned model) and
  the harmful calibration prompts pulled to each probe's harmful side (Q-realign, arXiv 2601.08089).

Calibration prompts come from the ``calib`` splits and are checked against every evaluation split
(``quant.calibset``). The transforms write ``QuantLinear`` layers, so the result saves as a quantized
directory (``quant.artifact``) that every verb loads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from deltaguard.config import check_choice, check_range
from deltaguard.errors import ConfigError
from deltaguard.quant.fake import SCHEMES
from deltaguard.transforms.base import Transform, TransformConfig, transforms


@dataclass(frozen=True, kw_only=True)
class RTNConfig(TransformConfig):
    """Round-to-nearest quantization of every decoder linear.

    Args:
        scheme: ``w8a8`` (per-channel weights, per-token activations), ``w4a16``, ``w4a8`` or ``w4a4``
            (groups of 128; ``w4a4`` experimental).
    """

    name: ClassVar[str] = "rtn"
    version: ClassVar[int] = 1
    bits_shorthand: ClassVar[bool] = True
    scheme: str = "w8a8"

    def __post_init__(self) -> None:
        check_choice(f"{self.name}.scheme", self.scheme, tuple(SCHEMES))

    @property
    def label(self) -> str:
        return f"{self.name}-{self.scheme}"

    @classmethod
    def parse_label(cls, label: str) -> dict[str, Any] | None:
        """``<name>``, ``<name>-<scheme>``, and for weight-only methods ``<name><bits>`` (``rtn4`` = ``rtn-w4a16``)."""
        if label == cls.name:
            return {}
        head, _, tail = label.partition("-")
        if head == cls.name and tail in SCHEMES:
            return {"scheme": tail}
        bits = label[len(cls.name):]
        if cls.bits_shorthand and label.startswith(cls.name) and bits.isdigit() and f"w{bits}a16" in SCHEMES:
            return {"scheme": f"w{bits}a16"}
        return None

    def blockwise(self) -> Any:
        from deltaguard.quant.calibrate import BlockwiseConfig

        return BlockwiseConfig(scheme=self.scheme, smooth=False, clip=False, epochs_first=0, epochs_second=0)


@dataclass(frozen=True, kw_only=True)
class CalibratedWeightConfig(RTNConfig):
    """Shared settings of weight quantizers calibrated on generic text (GPTQ, AWQ).

    Args:
        scheme: ``w4a16`` (default), ``w3a16``, ``w8a16`` — weight-only, groups of 128 — or any preset.
        n_calib: calibration texts (128 in GPTQ, AWQ and the trust paper).
        calib_sets: where they come from (their ``calib`` splits; checked against every evaluation split).
        batch_size, max_tokens: texts per forward pass; tokens kept per text.
        seed: which texts are drawn (the trust sweep runs seeds 0, 1, 2).
    """

    scheme: str = "w4a16"
    n_calib: int = 128
    calib_sets: tuple[str, ...] = ("calib-chat",)
    batch_size: int = 8
    max_tokens: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(f"{self.name}.n_calib", self.n_calib, 1, 100_000)
        check_range(f"{self.name}.batch_size", self.batch_size, 1, 4096)
        check_range(f"{self.name}.max_tokens", self.max_tokens, 4, 8192)

    @property
    def saves_model(self) -> bool:
        return True

    def prompts(self) -> Any:
        from deltaguard.quant.calibset import calibration_prompts

        return calibration_prompts(harmful_sets=(), benign_sets=self.calib_sets, n_harmful=0, n_benign=self.n_calib,
                                   seed=self.seed)


@dataclass(frozen=True, kw_only=True)
class OmniQuantConfig(RTNConfig):
    """Block-wise calibration with learnable clipping and smoothing (no safety term).

    Args:
        epochs_first / epochs_second: passes per block in the first / second half of the model. The paper's
            5 / 15 take ~25 min for SmolLM2-135M on a 2-core CPU; the default 2 / 6 fits the 10-minute goal.
        n_harmful / n_benign: calibration prompts (the paper's 3:1 mix; the calib splits hold 122 harmful).
        harmful_sets / benign_sets: where the calibration prompts come from (their ``calib`` splits). The
            benign side is everyday *requests* (``requests``, ``benign``): with word problems there (the
            first default) the probes learned "word problem or not" — on evaluation prompts the aligned
            model's own probes scored 0.69 mean accuracy — and realignment had nothing to restore.
        batch_size, max_tokens: prompts per step; a longer prompt keeps its last ``max_tokens`` tokens.
        clip_lr / smooth_lr: learning rates of clipping (1e-2) and smoothing (1e-3).
        seed: prompt draw and batch order.
    """

    name: ClassVar[str] = "omniquant"
    version: ClassVar[int] = 1
    bits_shorthand: ClassVar[bool] = False
    epochs_first: int = 2
    epochs_second: int = 6
    n_harmful: int = 120
    n_benign: int = 40
    harmful_sets: tuple[str, ...] = ("advbench", "donotanswer")
    benign_sets: tuple[str, ...] = ("requests", "benign")
    batch_size: int = 8
    max_tokens: int = 128
    clip_lr: float = 1e-2
    smooth_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(f"{self.name}.n_harmful", self.n_harmful, 0, 10_000)
        check_range(f"{self.name}.n_benign", self.n_benign, 0, 10_000)
        if self.n_harmful + self.n_benign < 1:
            raise ConfigError(f"{self.name} needs at least one calibration prompt (n_harmful + n_benign)")
        self.blockwise()

    @property
    def saves_model(self) -> bool:
        return True

    def blockwise(self, safety_weight: float = 0.0) -> Any:
        from deltaguard.quant.calibrate import BlockwiseConfig

        return BlockwiseConfig(scheme=self.scheme, epochs_first=self.epochs_first, epochs_second=self.epochs_second,
                               clip_lr=self.clip_lr, smooth_lr=self.smooth_lr, batch_size=self.batch_size,
                               max_tokens=self.max_tokens, safety_weight=safety_weight, seed=self.seed)

    def prompts(self) -> Any:
        from deltaguard.quant.calibset import calibration_prompts

        return calibration_prompts(harmful_sets=self.harmful_sets, benign_sets=self.benign_sets,
                                   n_harmful=self.n_harmful, n_benign=self.n_benign, seed=self.seed)


@dataclass(frozen=True, kw_only=True)
class QRealignConfig(OmniQuantConfig):
    """OmniQuant calibration plus Q-realign's safety term, from probes fitted on the reference model.

    Args:
        safety_weight: weight of ``softplus(−probe logit)`` for harmful prompts against the benign MSE.
        probe_l1: L1 strength of the per-layer probes (on standardised features).
        (and every ``omniquant`` field)
    """

    name: ClassVar[str] = "qrealign"
    version: ClassVar[int] = 1
    safety_weight: float = 1.0
    probe_l1: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("qrealign.safety_weight", self.safety_weight, 0.0, 1e6)
        check_range("qrealign.probe_l1", self.probe_l1, 0.0, 10.0)
        if self.n_harmful < 1 or self.n_benign < 1:
            raise ConfigError("qrealign needs harmful and benign calibration prompts (n_harmful, n_benign >= 1)")

    @property
    def needs_reference(self) -> bool:
        return True

    def blockwise(self, safety_weight: float | None = None) -> Any:
        return super().blockwise(self.safety_weight if safety_weight is None else safety_weight)


class _Quantize(Transform[RTNConfig]):
    config_cls: ClassVar[type[TransformConfig]] = RTNConfig

    def apply_(self, model: Any, config: RTNConfig, *, calib: list[str] | None = None, tokenizer: Any = None,
               reference: Any = None, workdir: Path | None = None) -> Any:
        from deltaguard.quant.calibrate import quantize_blockwise
        from deltaguard.quant.calibset import CalibrationPrompts

        started = time.perf_counter()
        probes = None
        if isinstance(config, OmniQuantConfig):
            if tokenizer is None:
                raise ConfigError(f"{config.label} needs the model's tokenizer for its calibration prompts")
            prompts = config.prompts()
            if isinstance(config, QRealignConfig):
                probes = fit_reference_probes(reference, tokenizer, prompts, config)
        else:
            prompts = CalibrationPrompts((), ())
        record = quantize_blockwise(model, tokenizer, prompts, config.blockwise(), probes=probes, label=config.label,
                                    checkpoint=None if workdir is None else Path(workdir) / "blocks")
        record["calibration_prompts"] = prompts.describe()
        if probes is not None:
            record["probes"] = {"accuracy": probes.accuracy, "separability": probes.separability,
                                **{k: probes.meta[k] for k in ("n", "n_harmful", "holdout")}}
        record["seconds_total"] = round(time.perf_counter() - started, 1)
        model.deltaguard_quant_record = record   # read by whoever saves the model
        model.deltaguard_probes = probes
        return model

    def record(self, config: RTNConfig) -> dict[str, Any]:
        return scheme_record(config)


def scheme_record(config: RTNConfig) -> dict[str, Any]:
    """The record every quantization transform reports before it runs: its config and bit widths."""
    from deltaguard.quant.fake import scheme

    plan = scheme(config.scheme)
    return {"method": config.to_dict(), "w_bits": plan.w_bits, "a_bits": plan.a_bits, "group_size": plan.group_size}


def fit_reference_probes(reference: Any, tokenizer: Any, prompts: Any, config: QRealignConfig) -> Any:
    """Per-layer probes on the reference model's last-token states of the calibration prompts."""
    import torch

    from deltaguard.quant.probes import fit_probes, last_token_states

    if reference is None:
        raise ConfigError("qrealign needs a reference model (the aligned model whose safety probes it restores)")
    texts = [p.text for p in prompts.harmful] + [p.text for p in prompts.benign]
    states = last_token_states(reference, tokenizer, texts, max_tokens=config.max_tokens, progress=True,
                               label="probe states")
    labels = torch.tensor([1] * len(prompts.harmful) + [0] * len(prompts.benign))
    return fit_probes(states, labels, l1=config.probe_l1, seed=config.seed, meta=prompts.describe())


@transforms.register("rtn")
class RTN(_Quantize):
    """Round-to-nearest weight (and per-token activation) quantization, no calibration data."""

    config_cls = RTNConfig


@transforms.register("omniquant")
class OmniQuant(_Quantize):
    """Block-wise learnable clipping + smoothing (OmniQuant): Q-realign without its safety term."""

    config_cls = OmniQuantConfig


@transforms.register("qrealign")
class QRealign(_Quantize):
    """Safety-aware quantization (Q-realign): OmniQuant plus probe-guided realignment of harmful prompts."""

    config_cls = QRealignConfig


__all__ = ["CalibratedWeightConfig", "scheme_record", "OmniQuant", "OmniQuantConfig", "QRealign", "QRealignConfig", "RTN", "RTNConfig", "fit_reference_probes"]
