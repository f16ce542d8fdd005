"""What an audit compresses with and how it evaluates (``AuditConfig``), and the method lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from deltaguard.config import Config, check_choice, check_range
from deltaguard.data.calibration import CALIB_FORMATS
from deltaguard.delta import CompressorConfig, default_methods, is_method_spec, method_from_spec
from deltaguard.errors import ConfigError
from deltaguard.transforms import is_transform_spec, transform_from_spec, transforms

FULL = "full"  # the uncompressed delta: base + full delta is the fine-tune itself
UNCOMPRESSED = {"bits_per_param": 32.0, "ratio_vs_fp16_delta": 0.5, "method": "uncompressed fp32 delta"}


@dataclass(frozen=True, kw_only=True)
class AuditConfig(Config):
    """What the audit compresses with and how it evaluates.

    Args:
        methods: compression specs (``deltaguard.delta.method_from_spec``); ``full`` is the
            uncompressed delta (the fine-tune itself), useful as the top of a fidelity sweep. Default:
            every registered method's default labels.
        method_overrides: ``method.field=value`` settings applied to every audited spec of that
            method (e.g. ``bitdelta.distill_steps=10``), so a sweep can shorten calibration without
            naming each variant.
        n_prompts: prompts per evaluation set (held-out evaluation split).
        max_new_tokens: greedy tokens per reply (the keyword judge needs only the start of a reply).
        task_max_new_tokens: greedy tokens per reply on the word problems (a verbose model needs room
            to reach its answer; a reply ends earlier at its end-of-turn token).
        batch_size: prompts decoded together.
        judge: refusal judge name (``deltaguard list judges``); it decides the attack metric.
        harm_judge: a judge of unsafe content (e.g. ``guard``) that also reads the replies to the threat's
            harmful prompts; its share judged unsafe is reported beside the attack metric as ``harm``
            (``harm:<set>`` for other sets). Empty: no harm column.
        calib_set: calibration text set for methods that calibrate (their ``needs_calibration``).
        n_calib: calibration texts.
        calib_format: what each calibration text holds (``data.calibration.CALIB_FORMATS``): ``prompt`` — the
            chat user turn only, so the fine-tune is matched where it reads a prompt but never where it
            writes a reply; ``reply`` — the user turn followed by the fine-tune's own greedy reply
            (``CALIB_REPLY_TOKENS`` tokens, generated once and cached under the run's ``generations/``) as
            a real assistant turn. With ``reply``, give the calibrating method room for prompt and reply
            (e.g. ``bitdelta.seq_len=192``): a text cut at ``seq_len`` loses its reply first. A ``prompt``
            config serialises without this field, so the keys of existing audits do not change.
        max_utility_drop: relative utility drop (%) a method may cost and still be recommended.
        n_boot: bootstrap resamples for the CIs of mitigation and utility drop.
        n_examples: example generations per model and set kept for the report.
        seed: seeds prompt sampling and the bootstrap.
    """

    name: ClassVar[str] = "audit"
    version: ClassVar[int] = 1
    methods: tuple[str, ...] = field(default_factory=default_methods)
    method_overrides: tuple[str, ...] = ()
    n_prompts: int = 64
    max_new_tokens: int = 48
    task_max_new_tokens: int = 96
    batch_size: int = 32
    judge: str = "keyword"
    harm_judge: str = ""
    calib_set: str = "calib-chat"
    n_calib: int = 64
    calib_format: str = "prompt"
    max_utility_drop: float = 10.0
    n_boot: int = 2000
    n_examples: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("audit.methods must name at least one compression method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"audit.methods={list(self.methods)} repeats a method")
        for entry in self.method_overrides:
            method, dot, rest = entry.partition(".")
            if not dot or "=" not in rest:
                raise ConfigError(f"audit.method_overrides entry {entry!r} must look like method.field=value")
            if not is_transform_spec(method):
                method_from_spec(method)  # an unknown method raises with close matches
        for spec in self.methods:
            if spec != FULL:
                check_spec(spec, self)  # unknown specs and bad overrides raise ConfigError here
        if self.harm_judge:
            check_harm_judge(self.harm_judge)
        check_range("audit.n_prompts", self.n_prompts, 1)
        check_range("audit.max_new_tokens", self.max_new_tokens, 1, 4096)
        check_range("audit.task_max_new_tokens", self.task_max_new_tokens, 1, 4096)
        check_range("audit.batch_size", self.batch_size, 1)
        check_range("audit.n_calib", self.n_calib, 1)
        check_choice("audit.calib_format", self.calib_format, CALIB_FORMATS)
        check_range("audit.max_utility_drop", self.max_utility_drop, 0.0, 100.0)
        check_range("audit.n_boot", self.n_boot, 100)
        check_range("audit.n_examples", self.n_examples, 0)

    def to_dict(self) -> dict[str, Any]:
        """As ``Config.to_dict``, without ``calib_format`` while it is ``prompt`` (audit keys hash this dict,
        and every audit made before the field existed calibrated on prompts)."""
        data = super().to_dict()
        if self.calib_format == "prompt":
            data["fields"].pop("calib_format")
        return data

    def method_config(self, spec: str) -> CompressorConfig:
        """The compressor config a spec names, with this audit's ``method_overrides`` for its method."""
        return self._overridden(method_from_spec(spec))

    def transform_config(self, spec: str) -> Any:
        """The whole-model transform config a spec names, with this audit's ``method_overrides`` for it."""
        return self._overridden(transform_from_spec(spec))

    def _overridden(self, config: Any) -> Any:
        mine = [entry.partition(".")[2] for entry in self.method_overrides if entry.partition(".")[0] == config.name]
        return config.with_overrides(mine) if mine else config


def check_harm_judge(name: str) -> None:
    """A harm judge must be registered and judge unsafe content (the keyword judge only sees refusals)."""
    from deltaguard.judges import judges

    judge_cls = judges.get(name)  # unknown: one line with close matches
    if "unsafe" not in judge_cls.measures:
        raise ConfigError(f"audit.harm_judge={name!r} does not judge unsafe content (it judges: "
                          f"{', '.join(judge_cls.measures)}); use e.g. guard or llamaguard")


def check_spec(spec: str, config: AuditConfig) -> None:
    """A spec is a whole-model transform or a delta compressor label; anything else names both families."""
    if is_transform_spec(spec):
        config.transform_config(spec)
    elif is_method_spec(spec):
        config.method_config(spec)
    else:
        try:
            method_from_spec(spec)
        except ConfigError as exc:  # unknown: say so once, with the transforms too
            raise ConfigError(f"{exc}; transforms: {', '.join(transforms.names())}") from None
