"""A small generic name → object registry, one per plug-in family.

Families: compressors, judges, datasets, threats, backends. Heavy optional members register lazily as
``"module:Attr"`` strings and are imported on first ``get``.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from deltaguard.errors import ConfigError, RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lowercase-hyphenated names to members of one family."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._members: dict[str, T | str] = {}

    def register(self, name: str, member: T | None = None) -> Callable[[T], T] | T:
        """Register ``member`` under ``name``; usable as a decorator when ``member`` is omitted."""
        if name != name.lower() or " " in name or "_" in name:
            raise RegistryError(f"{self.family} name {name!r} must be lowercase with hyphens")

        def add(obj: T) -> T:
            if name in self._members:
                raise RegistryError(f"{self.family} {name!r} is registered twice")
            self._check_names(name, obj)
            self._members[name] = obj
            return obj

        return add if member is None else add(member)

    def _check_names(self, name: str, obj: object) -> None:
        """A member that also states its name (``name`` or ``config_cls.name``) must state the registered one,
        so one name is written once in effect and a mismatch fails at import, not in a results file."""
        for owner, stated in (("name", getattr(obj, "name", None)),
                              ("config_cls.name", getattr(getattr(obj, "config_cls", None), "name", None))):
            if isinstance(stated, str) and stated and stated != name:
                raise RegistryError(f"{self.family} registered as {name!r} but its {owner} is {stated!r}")

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:Attr"``, imported only when first looked up."""
        if ":" not in target:
            raise RegistryError(f"lazy target {target!r} must look like 'module:Attr'")
        self.register(name, target)  # type: ignore[arg-type]

    def get(self, name: str) -> T:
        """Look a member up; an unknown name raises ConfigError with close matches."""
        try:
            member = self._members[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._members, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"unknown {self.family} {name!r}{hint}; known: {', '.join(sorted(self._members))}"
            ) from None
        if isinstance(member, str):
            module_name, attr = member.split(":", 1)
            member = getattr(importlib.import_module(module_name), attr)
            self._members[name] = member
        return member  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def describe(self, name: str) -> str:
        """First line of the member's docstring, for ``deltaguard list``."""
        doc = getattr(self.get(name), "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""
