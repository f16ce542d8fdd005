"""Base class for frozen, typed, JSON-serialisable configs, and ``--set field=value`` parsing.

A config records its own family member name and version; it serialises as
``{"method", "version", "fields"}`` and is rebuilt only through a registry, never by importing an
arbitrary class named in a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from deltaguard.errors import ConfigError, FormatError


@dataclass(frozen=True, kw_only=True)
class Config:
    """A frozen settings object; subclasses validate every field in ``__post_init__``."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every config's own ``__post_init__`` runs after the finiteness check of all its numbers, so no
        subclass can forget it: ``nan < low`` is False, and NaN passed every range check written as one."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_checks_finite", False):
            def __post_init__(self: Any, _own: Any = own) -> None:
                check_finite_fields(self)
                _own(self)

            __post_init__._checks_finite = True  # type: ignore[attr-defined]
            cls.__post_init__ = __post_init__  # type: ignore[attr-defined]

    def __post_init__(self) -> None:
        check_finite_fields(self)

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"method": self.name, "version": self.version, "fields": fields}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild from ``to_dict`` output; a version or name mismatch raises FormatError."""
        if data.get("method") != cls.name:
            raise FormatError(f"config is for {data.get('method')!r}, expected {cls.name!r}")
        if data.get("version") != cls.version:
            raise FormatError(
                f"{cls.name} config version {data.get('version')} is not supported (this deltaguard reads {cls.version})"
            )
        return cls.from_fields(data.get("fields", {}))

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Self:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ConfigError(f"{cls.name or cls.__name__} has no field(s) {', '.join(unknown)}{_did_you_mean(unknown[0], known)}; "
                              f"fields: {', '.join(known)}")
        hints = typing.get_type_hints(cls)
        values = {k: _from_json(v, hints[k]) for k, v in fields.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: list[str]) -> Self:
        """Apply ``field=value`` strings, converting each value by the field's declared type."""
        hints = typing.get_type_hints(type(self))
        names = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for item in overrides:
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ConfigError(f"--set expects field=value, got {item!r}")
            if key not in names:
                raise ConfigError(f"{self.name or type(self).__name__} has no field {key!r}{_did_you_mean(key, names)}; "
                                  f"fields: {', '.join(sorted(names))}")
            changes[key] = parse_value(raw.strip(), hints[key], field=f"{self.name}.{key}")
        return self.replace(**changes)


def parse_value(raw: str, annotation: Any, *, field: str) -> Any:
    """Convert a command-line string to ``annotation`` (int, float, bool, str, tuples, optionals)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for candidate in inner:
            try:
                return parse_value(raw, candidate, field=field)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is tuple:
        item_type = args[0] if args else str
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        return tuple(parse_value(p, item_type, field=field) for p in parts)
    if origin is typing.Literal:
        if raw not in args:
            raise ConfigError(f"{field}={raw!r} is not one of {', '.join(map(str, args))}")
        return raw
    try:
        if annotation is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation in (int, float, str):
            value = annotation(raw)
    except ValueError:
        raise ConfigError(f"{field}={raw!r} is not a valid {annotation.__name__}") from None
    if annotation in (int, float, str):
        if annotation is float and not math.isfinite(value):
            raise ConfigError(f"{field}={raw!r} is not a finite number")
        return value
    raise ConfigError(f"{field} cannot be set from the command line")


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, Config):
        return value.to_dict()
    return value


def _from_json(value: Any, annotation: Any) -> Any:
    if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, Config):
        return annotation.from_dict(value)    # a nested config (``to_dict`` wrote it as a dict)
    origin = typing.get_origin(annotation)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        return tuple(_from_json(v, inner) for v in value)
    if origin in (typing.Union, types.UnionType) and isinstance(value, list):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is tuple:
                return _from_json(value, arg)
    return value


def _did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def check_finite_fields(config: Any) -> None:
    """Raise ConfigError if any float field (or float inside a tuple field) is NaN or infinite."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for item in (value if isinstance(value, tuple) else (value,)):
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{config.name or type(config).__name__}.{f.name}={item} is not a finite number")


def check_range(field: str, value: float, low: float | None = None, high: float | None = None, *,
                low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    """Raise ConfigError unless ``low <= value <= high`` (bounds optional, inclusivity selectable).

    NaN and ±inf are refused first: every comparison with NaN is False, so it would pass any bound.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}={value!r} must be a number")
    if not math.isfinite(value):
        raise ConfigError(f"{field}={value} is not a finite number")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        brackets = ("[" if low_inclusive else "(", "]" if high_inclusive else ")")
        raise ConfigError(f"{field}={value} must be in {brackets[0]}{lo}, {hi}{brackets[1]}")


def check_choice(field: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{field}={value!r} must be one of {', '.join(map(str, choices))}")
