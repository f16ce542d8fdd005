"""Tenants: who they are, which delta serves them, which API keys reach them, and their policy.

A tenants file (YAML or JSON) lists them; delta paths are relative to the file::

    admin_key_sha256: 3b1f…            # optional; admin endpoints are off without an admin key
    tenants:
      - name: acme-support
        delta: deltas/acme               # a compressed delta directory (deltaguard compress)
        key_sha256: 9f86…                # or a list; one key may reach several tenants
        moderation: {judge: keyword, judge_options: {strings: [bomb]}, screen: [prompt], action: block}
        chat_template: templates/acme.jinja   # optional: Jinja text, or a .jinja file (relative to the file)

Keys are never stored: only ``sha256(key)`` in hex. A presented key is hashed and compared with
every stored hash by ``hmac.compare_digest`` (no early exit), so timing reveals neither which
tenant a key belongs to nor how much of a hash matched. ``deltaguard serve hash-key`` makes keys
(``new_key``: 256 random bits) and refuses to hash a key of its own shorter than ``MIN_KEY_LENGTH``
characters; a hash written into a tenants file by other means cannot be checked for the length of
its key, so keys made elsewhere are the operator's responsibility.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltaguard.delta.store import CompressedDelta, check_fingerprint, load_delta
from deltaguard.errors import ConfigError, FormatError
from deltaguard.io import atomic_write
from deltaguard.serve.moderation import ModerationConfig

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY_PREFIX = "dg-"
MIN_KEY_LENGTH = 16  # shortest key ``serve hash-key --key-stdin`` accepts; ``new_key`` makes 46 characters


def hash_key(key: str) -> str:
    """The stored form of an API key: sha256 of its UTF-8 bytes, 64 lowercase hex characters."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_key_hash(value: Any, *, where: str) -> str:
    text = str(value).strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(text):
        raise ConfigError(f"{where} must be a sha256 hex digest (64 hex characters; make one with "
                          f"'deltaguard serve hash-key'), not a plaintext key")
    return text


@dataclass(frozen=True)
class TenantSpec:
    """One tenant: its name (the OpenAI ``model`` field), delta directory, key hashes and policy."""

    name: str
    delta_dir: Path
    key_hashes: tuple[str, ...]
    moderation: ModerationConfig | None = None
    chat_template: str | None = None          # Jinja text for the tenant's chat requests (None: the base's)
    chat_template_path: Path | None = None    # the .jinja file it was read from, if any (kept when persisting)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(f"tenant name {self.name!r} must be 1-64 of a-z 0-9 . _ - (starting with a letter or digit)")
        if not self.key_hashes:
            raise ConfigError(f"tenant {self.name!r} needs at least one key_sha256")
        for value in self.key_hashes:
            check_key_hash(value, where=f"tenant {self.name!r} key_sha256")

    def to_dict(self, *, relative_to: Path | None = None) -> dict[str, Any]:
        delta = self.delta_dir
        if relative_to is not None and delta.is_relative_to(relative_to):
            delta = delta.relative_to(relative_to)
        entry: dict[str, Any] = {"name": self.name, "delta": str(delta),
                                 "key_sha256": list(self.key_hashes) if len(self.key_hashes) > 1 else self.key_hashes[0]}
        if self.moderation is not None:
            entry["moderation"] = self.moderation.to_dict()["fields"]
        if self.chat_template_path is not None:
            template_path = self.chat_template_path
            if relative_to is not None and template_path.is_relative_to(relative_to):
                template_path = template_path.relative_to(relative_to)
            entry["chat_template"] = str(template_path)
        elif self.chat_template is not None:
            entry["chat_template"] = self.chat_template
        return entry

    @classmethod
    def from_dict(cls, entry: Any, *, base_dir: Path, where: str) -> "TenantSpec":
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with name, delta and key_sha256")
        unknown = sorted(set(entry) - {"name", "delta", "key_sha256", "moderation", "chat_template"})
        if unknown:
            raise ConfigError(f"{where} has unknown field(s) {', '.join(unknown)}; fields: name, delta, key_sha256, "
                              f"moderation, chat_template")
        for required in ("name", "delta", "key_sha256"):
            if required not in entry:
                raise ConfigError(f"{where} lacks {required!r}")
        hashes = entry["key_sha256"]
        hashes = tuple(hashes) if isinstance(hashes, (list, tuple)) else (hashes,)
        name = str(entry["name"])
        hashes = tuple(check_key_hash(h, where=f"tenant {name!r} key_sha256") for h in hashes)
        delta_dir = Path(str(entry["delta"])).expanduser()
        if not delta_dir.is_absolute():
            delta_dir = (base_dir / delta_dir).resolve()
        moderation = entry.get("moderation")
        if moderation is not None:
            if not isinstance(moderation, dict):
                raise ConfigError(f"tenant {name!r} moderation must be a mapping (judge, screen, action, ...)")
            moderation = ModerationConfig.from_fields(moderation)
        template, template_path = None, None
        if entry.get("chat_template") is not None:
            template, template_path = read_chat_template(entry["chat_template"], base_dir=base_dir, tenant=name)
        return cls(name, delta_dir, hashes, moderation, template, template_path)


def read_chat_template(value: Any, *, base_dir: Path, tenant: str) -> tuple[str, Path | None]:
    """A tenant's ``chat_template`` setting as (Jinja text, the file it came from or None), syntax checked.

    A one-line string ending in ``.jinja`` with no Jinja markup names a file (relative to ``base_dir``);
    anything else is the template itself. Whether it renders a conversation is checked when the server
    loads the tenant (``Server.add_tenant``), with the base tokenizer's special tokens.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"tenant {tenant!r} chat_template must be Jinja text or the path of a .jinja file")
    path = None
    text = value
    if value.strip().endswith(".jinja") and "\n" not in value and "{" not in value:
        path = Path(value.strip()).expanduser()
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"tenant {tenant!r} chat_template file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"tenant {tenant!r} chat_template file {path} cannot be read as UTF-8 text "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    check_template_syntax(text, tenant=tenant, where=str(path) if path else "chat_template")
    return text, path


def check_template_syntax(text: str, *, tenant: str, where: str = "chat_template") -> None:
    """Raise ConfigError (one line, naming the tenant) if ``text`` is not a Jinja template."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except TemplateSyntaxError as exc:
        raise ConfigError(f"tenant {tenant!r} chat_template ({where}) is not valid Jinja: "
                          f"{str(exc.message or exc).splitlines()[0]} (line {exc.lineno})") from None


@dataclass(frozen=True)
class TenantsFile:
    """The parsed tenants file."""

    tenants: tuple[TenantSpec, ...]
    admin_key_hash: str | None
    path: Path | None = None


def load_tenants_file(path: str | Path) -> TenantsFile:
    """Parse and validate a YAML or JSON tenants file (duplicate names and plaintext keys are rejected)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tenants file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise FormatError(f"tenants file {path} is not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise FormatError(f"tenants file {path} is not UTF-8 text (a binary file?)") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"tenants file {path} must be a mapping with 'tenants' (and optionally 'admin_key_sha256')")
    unknown = sorted(set(data) - {"tenants", "admin_key_sha256"})
    if unknown:
        raise ConfigError(f"tenants file {path} has unknown field(s) {', '.join(unknown)}; fields: tenants, admin_key_sha256")
    raw = data.get("tenants") or []
    if isinstance(raw, dict):  # name → entry form
        raw = [{"name": name, **(entry or {})} for name, entry in raw.items()]
    if not isinstance(raw, list):
        raise ConfigError(f"tenants file {path}: 'tenants' must be a list (or a mapping name → entry)")
    specs = [TenantSpec.from_dict(entry, base_dir=path.parent.resolve(), where=f"{path} tenants[{i}]")
             for i, entry in enumerate(raw)]
    names = [s.name for s in specs]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"tenants file {path} names tenant(s) {', '.join(duplicates)} more than once")
    admin = data.get("admin_key_sha256")
    admin_hash = check_key_hash(admin, where=f"{path} admin_key_sha256") if admin is not None else None
    return TenantsFile(tuple(specs), admin_hash, path)


def write_tenants_file(path: str | Path, specs: list[TenantSpec], admin_key_hash: str | None) -> Path:
    """Atomically write a tenants file (YAML) holding ``specs``; delta paths relative to the file when possible."""
    import yaml

    path = Path(path)
    data: dict[str, Any] = {}
    if admin_key_hash:
        data["admin_key_sha256"] = admin_key_hash
    data["tenants"] = [s.to_dict(relative_to=path.parent.resolve()) for s in specs]
    with atomic_write(path) as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    return path


def load_tenant_delta(spec: TenantSpec, *, fingerprint: str) -> CompressedDelta:
    """Read and verify a tenant's delta (format, checksums) and check it was made from the served base."""
    delta = load_delta(spec.delta_dir)
    check_fingerprint(delta, fingerprint, where=f"tenant {spec.name!r}: delta {spec.delta_dir}",
                      base_name="the served base")
    return delta


class TenantRegistry:
    """Tenant specs and access control; thread-safe; tenants can be added and removed at runtime."""

    def __init__(self, *, admin_key_hash: str | None = None) -> None:
        self.admin_key_hash = admin_key_hash
        self._specs: dict[str, TenantSpec] = {}
        self._lock = threading.Lock()

    def add(self, spec: TenantSpec) -> None:
        with self._lock:
            if spec.name in self._specs:
                raise ConfigError(f"tenant {spec.name!r} already exists")
            self._specs[spec.name] = spec

    def remove(self, name: str) -> TenantSpec:
        with self._lock:
            try:
                return self._specs.pop(name)
            except KeyError:
                raise ConfigError(f"tenant {name!r} does not exist") from None

    def get(self, name: str) -> TenantSpec | None:
        with self._lock:
            return self._specs.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._specs)

    def specs(self) -> list[TenantSpec]:
        with self._lock:
            return [self._specs[n] for n in sorted(self._specs)]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._specs

    def tenants_for_key(self, key: str | None) -> set[str]:
        """Every tenant the key reaches (empty for a missing or unknown key); constant-time per hash."""
        if not key:
            return set()
        presented = hash_key(key).encode()
        reached = set()
        with self._lock:
            specs = list(self._specs.values())
        for spec in specs:
            matched = False
            for stored in spec.key_hashes:
                matched |= hmac.compare_digest(presented, stored.encode())
            if matched:
                reached.add(spec.name)
        return reached

    def can_access(self, key: str | None, tenant: str) -> bool:
        return tenant in self.tenants_for_key(key)

    def is_admin(self, key: str | None) -> bool:
        if not key or self.admin_key_hash is None:
            return False
        return hmac.compare_digest(hash_key(key).encode(), self.admin_key_hash.encode())
