"""``StudyConfig`` and the profiles it is built from.

Profiles are data (``profiles/<name>.yaml``), not code: one file holds every setting of a profile and the
notes that explain each reduction, and a profile may ``extends:`` another (mappings merge key by key,
lists and values replace). ``study_profile(name)`` reads one into a validated ``StudyConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deltaguard.audit import AuditConfig
from deltaguard.config import Config, check_choice, check_range
from deltaguard.errors import ConfigError
from deltaguard.models import DEFAULT_MODEL
from deltaguard.threats import AlignConfig, ThreatConfig, threats

PROFILE_DIR = Path(__file__).parent / "profiles"
PROFILES = ("default", "full")


@dataclass(frozen=True, kw_only=True)
class StudyConfig(Config):
    """Everything one study run does (built by ``study_profile``; every part is a validated config).

    Args:
        profile: the profile the settings came from (``default``, ``full`` or ``custom``).
        model: the unaligned original model (embedded name, directory or hub id).
        align: how the safety-aligned base is made.
        threats: the fine-tunes to build and audit (each mixed with the customisation task).
        audit: evaluation settings and the method sweep shared by every threat's audit.
        align_prompts: prompts per set for the alignment check's refusal and over-refusal.
        align_task_prompts: word problems for the alignment check's task accuracy. The small model
            solves only ~15% of them, so 32 problems cannot tell a 10% relative drop from noise.
        lens_prompts: held-out harmful prompts for the logit lens (aligned base, fine-tune and the
            ``lens_variant`` of the ``harmful`` and ``backdoor`` threats); 0 disables the lens.
        lens_variant: the audited method (a row label of ``audit.methods``) the lens follows beside the
            base and the fine-tune; None follows only those two.
        threat_methods: more methods for one threat's audit only, ``"threat=spec,spec"`` (e.g.
            ``"harmful=rtn-w8a8,omniquant-w8a8,qrealign-w8a8"``: Q-realign and its baselines where the paper
            evaluates them, without calibrating them for every threat).
        notes: what the profile reduced relative to the paper-sized settings, and why.
    """

    name: ClassVar[str] = "study"
    version: ClassVar[int] = 1
    profile: str = "default"
    model: str = DEFAULT_MODEL
    align: AlignConfig = field(default_factory=AlignConfig)
    threats: tuple[ThreatConfig, ...] = ()
    audit: AuditConfig = field(default_factory=AuditConfig)
    align_prompts: int = 64
    align_task_prompts: int = 128
    lens_prompts: int = 0
    lens_variant: str | None = None
    threat_methods: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_choice("study.profile", self.profile, (*PROFILES, "custom"))
        if not self.threats:
            raise ConfigError("study.threats must list at least one threat")
        names = [t.name for t in self.threats]
        if len(set(names)) != len(names):
            raise ConfigError(f"study.threats={names} lists a threat twice")
        check_range("study.align_prompts", self.align_prompts, 1)
        check_range("study.align_task_prompts", self.align_task_prompts, 1)
        check_range("study.lens_prompts", self.lens_prompts, 0)
        if not all(isinstance(note, str) for note in self.notes):  # a YAML "a: b" line reads as a mapping
            raise ConfigError(f"study.notes must be strings, got {[type(n).__name__ for n in self.notes]}; "
                              "quote a note that holds ': ' (or write it as a >- block)")
        for entry in self.threat_methods:
            threat, sep, specs = entry.partition("=")
            if not sep or threat.strip() not in names or not specs.strip():
                raise ConfigError(f"study.threat_methods entry {entry!r} must look like threat=spec,spec with a "
                                  f"threat of this study ({', '.join(names)})")
            self.audit_for(threat.strip())   # validates the specs
        if self.lens_variant is not None and self.lens_variant not in self.audit.methods:
            raise ConfigError(f"study.lens_variant={self.lens_variant!r} is not one of audit.methods "
                              f"({', '.join(self.audit.methods)})")


    def audit_for(self, threat: str) -> AuditConfig:
        """The audit settings of one threat: the shared ones plus its ``threat_methods``."""
        extra = [spec.strip() for entry in self.threat_methods if entry.partition("=")[0].strip() == threat
                 for spec in entry.partition("=")[2].split(",") if spec.strip()]
        if not extra:
            return self.audit
        return self.audit.replace(methods=tuple(dict.fromkeys((*self.audit.methods, *extra))))


def profile_data(name: str) -> dict[str, Any]:
    """A profile's settings as a plain mapping, with ``extends`` resolved."""
    check_choice("study.profile", name, PROFILES)
    return _read_profile(name, seen=())


def _read_profile(name: str, *, seen: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    if name in seen:
        raise ConfigError(f"study profiles extend each other in a circle: {' → '.join((*seen, name))}")
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"study profile {name!r} does not exist (looked for {path})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    parent = data.pop("extends", None)
    return _merge(_read_profile(parent, seen=(*seen, name)), data) if parent else data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key (recursively); anything else in ``override`` replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def study_profile(profile: str = "default", *, model: str = DEFAULT_MODEL) -> StudyConfig:
    """The settings of a named profile (``profiles/<profile>.yaml``) for ``model``."""
    data = profile_data(profile)
    known = {"description", "align", "threat_defaults", "threats", "audit", "align_prompts", "align_task_prompts",
             "lens_prompts", "lens_variant", "threat_methods", "notes"}
    if unknown := sorted(set(data) - known):
        raise ConfigError(f"study profile {profile!r} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    shared = {**data.get("threat_defaults", {}), "responder": model}
    threat_configs = tuple(threats.get(name).config_cls.from_fields({**shared, **(fields or {})})
                           for name, fields in data.get("threats", {}).items())
    return StudyConfig(
        profile=profile, model=model, align=AlignConfig.from_fields(data.get("align", {})), threats=threat_configs,
        audit=AuditConfig.from_fields(data.get("audit", {})), align_prompts=data.get("align_prompts", 64),
        align_task_prompts=data.get("align_task_prompts", 128), lens_prompts=data.get("lens_prompts", 0),
        lens_variant=data.get("lens_variant"), threat_methods=tuple(data.get("threat_methods", ())),
        notes=tuple(data.get("notes", ())),
    )


__all__ = ["PROFILES", "StudyConfig", "profile_data", "study_profile"]
