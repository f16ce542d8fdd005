"""Registry, config, atomic IO: the shared mechanisms every family relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from deltaguard.config import Config, check_range
from deltaguard.errors import ConfigError, FormatError, RegistryError
from deltaguard.io import atomic_dir, atomic_write, content_key, read_json, read_jsonl, write_json
from deltaguard.registry import Registry


@dataclass(frozen=True, kw_only=True)
class DemoConfig(Config):
    name: ClassVar[str] = "demo"
    bits: int = 4
    rate: float = 0.5
    targets: tuple[str, ...] = ("*_proj",)
    label: str | None = None
    flag: bool = False

    def __post_init__(self) -> None:
        check_range("demo.rate", self.rate, 0.0, 1.0, high_inclusive=False)


def test_registry_get_names_and_did_you_mean():
    reg: Registry[type] = Registry("widgets")
    reg.register("bit-delta", int)
    reg.register("kbit", float)
    assert reg.names() == ["bit-delta", "kbit"]
    assert reg.get("kbit") is float
    with pytest.raises(ConfigError, match="did you mean bit-delta"):
        reg.get("bitdelta")
    with pytest.raises(RegistryError):
        reg.register("kbit", str)


def test_registry_lazy_member_is_imported_on_get():
    reg: Registry[object] = Registry("things")
    reg.register_lazy("od", "collections:OrderedDict")
    import collections

    assert reg.get("od") is collections.OrderedDict


def test_config_round_trip_and_overrides():
    cfg = DemoConfig(bits=3, targets=("a", "b"))
    assert DemoConfig.from_dict(cfg.to_dict()) == cfg
    changed = cfg.with_overrides(["rate=0.25", "targets=x,y", "label=none", "flag=yes"])
    assert (changed.rate, changed.targets, changed.label, changed.flag) == (0.25, ("x", "y"), None, True)
    assert cfg.rate == 0.5  # the original is never mutated


def test_nested_configs_round_trip_as_configs_not_dicts():
    import json

    from deltaguard.guard.build import guard_profile
    from deltaguard.guard.train import GuardTrainConfig

    config = guard_profile("default")
    back = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and isinstance(back.qat, GuardTrainConfig)


@pytest.mark.parametrize("override,match", [
    ("bits=four", "not a valid int"),
    ("nope=1", "has no field 'nope'"),
    ("rate", "field=value"),
    ("rate=1.0", r"must be in \[0.0, 1.0\)"),
])
def test_config_override_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        DemoConfig().with_overrides([override])


def test_config_version_mismatch_is_format_error():
    data = DemoConfig().to_dict()
    data["version"] = 99
    with pytest.raises(FormatError, match="version 99"):
        DemoConfig.from_dict(data)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("partial")
            raise RuntimeError("boom")
    assert read_json(target) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_dir_keeps_old_dir_when_interrupted(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "f").write_text("v2")
            raise RuntimeError("boom")
    assert (target / "f").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_read_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        read_json(bad)
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(FormatError, match="line 2"):
        read_jsonl(lines)


def test_content_key_depends_on_settings_only():
    assert content_key("gen", {"b": 1, "a": 2}) == content_key("gen", {"a": 2, "b": 1})
    assert content_key("gen", {"a": 1}) != content_key("gen", {"a": 2})
    assert content_key("gen", {}).startswith("gen-") and len(content_key("gen", {})) == 14
