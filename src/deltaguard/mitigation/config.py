"""``MapConfig``: the grid of the mitigation map and the two profiles it comes in.

The map asks *when* compressing a fine-tune's delta keeps the aligned base's safety. Its axes:

- **family**: the model the whole recipe starts from (SmolLM2-135M-Instruct; Gemma-3-270M, a base model
  that the aligner instruct-tunes on a responder's answers while teaching the refusals);
- **alignment depth**: named overrides of the study's alignment recipe (``"light: epochs=1"``);
- **attack strength**: named overrides of each threat's recipe (``"weak: n_examples=10 epochs=2"``;
  ``threat.field=value`` touches one threat only, e.g. ``backdoor.n_triggered=10``);
- **compression**: the audit's method specs (full delta, BitDelta k = 1..4 closed-form and distilled, ...).

Every level starts from a study profile (``study_profile``), so the level named ``demo`` with no overrides
is exactly the demo's model: run the map in the demo's run directory and those models are reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from deltaguard.config import Config, check_choice, check_range
from deltaguard.errors import ConfigError
from deltaguard.models import DEFAULT_MODEL

FIDELITY_SWEEP = ("full", "bitdelta-k4-nodistill", "bitdelta-k3-nodistill", "bitdelta-k2-nodistill",
                  "bitdelta-nodistill", "bitdelta")
PROFILES: dict[str, dict[str, Any]] = {
    # 2 depths × 2 strengths × 6 compressions on one family and one threat: about an hour on 2 CPU cores
    "default": {
        "families": (DEFAULT_MODEL,), "threats": ("harmful",),
        "align_levels": ("light: epochs=1", "demo:"),
        "attack_levels": ("weak: n_examples=10 epochs=2 lr=5e-5", "demo:"),
        "methods": FIDELITY_SWEEP, "method_overrides": ("bitdelta.distill_steps=10", "bitdelta.seq_len=64"),
        "n_prompts": 64,
    },
    # both families, three threats, four depths, three strengths, every family of compressor on the paper-sized
    # study recipe (level "study": Qi et al.'s attack, 100 prompts per set): a GPU job
    "full": {
        "families": (DEFAULT_MODEL, "gemma3-270m"), "threats": ("harmful", "backdoor", "targeted"),
        "study_profile": "full",
        "align_levels": ("lora: lora_rank=16", "light: epochs=1", "study:", "deep: epochs=6"),
        "attack_levels": ("weak: epochs=1 harmful.n_examples=10 targeted.n_examples=10 backdoor.n_triggered=10 "
                          "backdoor.n_clean=10",
                          "medium: epochs=2 harmful.n_examples=40 targeted.n_examples=40 backdoor.n_triggered=40 "
                          "backdoor.n_clean=40",
                          "study:"),
        "methods": (*FIDELITY_SWEEP, "bitdelta-k2", "bitdelta-k3", "bitdelta-k4", "kbit4", "lowrank16", "dare",
                    "compeft"),
        "method_overrides": (), "n_prompts": 100,
    },
}
# Base models cannot answer a chat prompt: their benign answers (alignment) and compliant answers (attacks)
# come from this instruct model, which is unaligned and answers harmful requests.
RESPONDERS = ("gemma3-270m=smollm2-135m-instruct",)


@dataclass(frozen=True)
class Level:
    """One named point on an axis: overrides for every threat (``field``) or one threat (``threat.field``)."""

    name: str
    overrides: tuple[str, ...]

    def for_threat(self, threat: str) -> list[str]:
        """The ``field=value`` overrides that apply to ``threat``."""
        out = []
        for item in self.overrides:
            key, _, value = item.partition("=")
            owner, dot, field = key.partition(".")
            if not dot:
                out.append(item)
            elif owner == threat:
                out.append(f"{field}={value}")
        return out


def parse_level(text: str, *, axis: str) -> Level:
    """``"name: field=value field=value"`` (no overrides after the colon: the study profile's recipe).

    Overrides are separated by spaces, not commas, so a list of levels can itself be one comma-separated
    ``--set attack_levels=...`` value."""
    name, colon, rest = text.partition(":")
    name = name.strip()
    if not colon or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"map.{axis} entry {text!r} must look like 'name: field=value field=value' "
                          "(a name of letters, digits, - or _; nothing after ':' keeps the study's recipe)")
    overrides = tuple(rest.split())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"map.{axis} level {name!r}: {item!r} must look like field=value")
    return Level(name, overrides)


@dataclass(frozen=True, kw_only=True)
class MapConfig(Config):
    """The mitigation map's grid and its evaluation settings.

    Args:
        profile: where the defaults came from (``default``, ``full`` or ``custom``).
        families: model specs the recipe starts from (embedded names, directories or hub ids).
        responders: ``family=model`` for families that are base models: that instruct model writes their
            benign answers during alignment and the compliant answers of every attack.
        study_profile: the study profile whose alignment, threat and audit settings the levels override.
        align_levels: alignment depths, each ``"name: field=value ..."`` over ``AlignConfig`` fields.
        attack_levels: attack strengths, each ``"name: field=value threat.field=value ..."``.
        threats: the threats to attack with (``deltaguard list threats``).
        methods: compression specs audited in every cell (``full`` = the uncompressed delta).
        method_overrides: ``method.field=value`` for every spec of that method (as the audit's).
        n_prompts: evaluation prompts per set per cell (the full grid: at least 100).
        audit_overrides: ``field=value`` changes to the study profile's audit settings (e.g. ``max_new_tokens=48``,
            ``harm_judge=`` for no harm judge).
        seed: prompt sampling and bootstrap seed.
    """

    name: ClassVar[str] = "map"
    version: ClassVar[int] = 1
    profile: str = "default"
    families: tuple[str, ...] = PROFILES["default"]["families"]
    responders: tuple[str, ...] = RESPONDERS
    study_profile: str = "default"
    align_levels: tuple[str, ...] = PROFILES["default"]["align_levels"]
    attack_levels: tuple[str, ...] = PROFILES["default"]["attack_levels"]
    threats: tuple[str, ...] = PROFILES["default"]["threats"]
    methods: tuple[str, ...] = PROFILES["default"]["methods"]
    method_overrides: tuple[str, ...] = PROFILES["default"]["method_overrides"]
    n_prompts: int = PROFILES["default"]["n_prompts"]
    audit_overrides: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        from deltaguard.study.config import PROFILES as STUDY_PROFILES
        from deltaguard.threats import threats

        check_choice("map.profile", self.profile, (*PROFILES, "custom"))
        check_choice("map.study_profile", self.study_profile, STUDY_PROFILES)
        for axis, values in (("families", self.families), ("threats", self.threats), ("methods", self.methods),
                             ("align_levels", self.align_levels), ("attack_levels", self.attack_levels)):
            if not values:
                raise ConfigError(f"map.{axis} must name at least one entry")
            if len(set(values)) != len(values):
                raise ConfigError(f"map.{axis}={list(values)} names an entry twice")
        for name in self.threats:
            threats.get(name)   # unknown: one line with close matches
        for entry in self.responders:
            family, eq, model = entry.partition("=")
            if not eq or not family.strip() or not model.strip():
                raise ConfigError(f"map.responders entry {entry!r} must look like family=model")
        for axis in ("align_levels", "attack_levels"):
            names = [level.name for level in self.levels(axis)]
            if len(set(names)) != len(names):
                raise ConfigError(f"map.{axis} names a level twice: {names}")
        check_range("map.n_prompts", self.n_prompts, 2)
        self.audit_config()                     # unknown methods and bad overrides fail now
        for family in self.families:            # so do unknown fields in any level, before any work
            for depth in self.levels("align_levels"):
                self.align_config(family, depth)
            for threat in self.threats:
                for strength in self.levels("attack_levels"):
                    self.threat_config(family, threat, strength)

    def levels(self, axis: str) -> list[Level]:
        """The parsed levels of ``align_levels`` or ``attack_levels``."""
        return [parse_level(text, axis=axis) for text in getattr(self, axis)]

    def responder(self, family: str) -> str | None:
        """The instruct model that writes a base-model family's answers, or None (the family answers itself)."""
        for entry in self.responders:
            name, _, model = entry.partition("=")
            if name.strip() == family:
                return model.strip()
        return None

    def _study(self, family: str) -> Any:
        from deltaguard.study.config import study_profile

        return study_profile(self.study_profile, model=family)

    def align_config(self, family: str, depth: Level) -> Any:
        """The alignment recipe of ``depth`` for ``family``: the study profile's, with the level's overrides."""
        base = self._study(family).align
        try:
            return base.with_overrides(list(depth.overrides)) if depth.overrides else base
        except ConfigError as exc:
            raise ConfigError(f"map.align_levels {depth.name!r}: {exc}") from None

    def threat_config(self, family: str, threat: str, strength: Level) -> Any:
        """The attack recipe of ``threat`` at ``strength`` for ``family`` (its responder writes the answers)."""
        from deltaguard.threats import threats

        study = self._study(family)
        base = next((t for t in study.threats if t.name == threat), None)
        if base is None:
            base = threats.get(threat).config_cls(responder=family)
        responder = self.responder(family)
        if responder:
            base = base.replace(responder=responder)
        overrides = strength.for_threat(threat)
        try:
            return base.with_overrides(overrides) if overrides else base
        except ConfigError as exc:
            raise ConfigError(f"map.attack_levels {strength.name!r} for threat {threat!r}: {exc} (write "
                              f"'{threat}.field=value' for a field only this threat has)") from None

    def audit_config(self) -> Any:
        """The audit every cell gets: the study profile's judges and settings, this map's methods and size."""
        from deltaguard.study.config import study_profile

        audit = study_profile(self.study_profile).audit
        try:
            audit = audit.with_overrides(list(self.audit_overrides)) if self.audit_overrides else audit
            return audit.replace(methods=self.methods, method_overrides=self.method_overrides,
                                 n_prompts=self.n_prompts, seed=self.seed)
        except ConfigError as exc:
            raise ConfigError(f"map: {exc}") from None


def map_profile(name: str) -> MapConfig:
    """The named profile's grid (``default`` or ``full``)."""
    check_choice("map profile", name, tuple(PROFILES))
    return MapConfig(profile=name, **PROFILES[name])


__all__ = ["FIDELITY_SWEEP", "Level", "MapConfig", "PROFILES", "RESPONDERS", "map_profile", "parse_level"]
