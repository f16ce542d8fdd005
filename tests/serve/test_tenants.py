"""Tenants file, hashed keys, access decisions, moderation policies."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import pytest

from deltaguard.errors import ConfigError, FormatError, IncompatibleBaseError
from deltaguard.serve import ModerationConfig, TenantRegistry, TenantSpec, hash_key, load_tenants_file, new_key
from deltaguard.serve.moderation import ModeratorPool
from deltaguard.serve.tenants import load_tenant_delta, write_tenants_file
from serve_helpers import ADMIN_KEY, KEYS


def test_tenants_file_loads_with_relative_paths_and_shared_keys(world):
    tenants = load_tenants_file(world.tenants_path)
    assert [s.name for s in tenants.tenants] == ["alpha", "beta", "gamma", "delta"]
    assert tenants.admin_key_hash == hash_key(ADMIN_KEY)
    registry = TenantRegistry(admin_key_hash=tenants.admin_key_hash)
    for spec in tenants.tenants:
        registry.add(spec)
    assert registry.tenants_for_key(KEYS["alpha"]) == {"alpha"}
    assert registry.tenants_for_key(KEYS["gamma"]) == {"gamma", "delta"}   # one key, two tenants
    assert registry.tenants_for_key("wrong") == set() and registry.tenants_for_key(None) == set()
    assert registry.tenants_for_key(hash_key(KEYS["alpha"])) == set()       # the hash itself is not a key
    assert registry.is_admin(ADMIN_KEY) and not registry.is_admin(KEYS["alpha"])


def test_relative_delta_path_and_json_form(tmp_path, world):
    (tmp_path / "deltas").mkdir()
    (tmp_path / "tenants.json").write_text(json.dumps({"tenants": {"acme": {
        "delta": "deltas/acme", "key_sha256": "sha256:" + hash_key("k")}}}))
    spec = load_tenants_file(tmp_path / "tenants.json").tenants[0]
    assert spec.name == "acme" and spec.delta_dir == (tmp_path / "deltas" / "acme").resolve()
    assert spec.key_hashes == (hash_key("k"),)


@pytest.mark.parametrize("body,message", [
    ({"tenants": [{"name": "a", "delta": "d", "key_sha256": "plaintext-key"}]}, "sha256 hex digest"),
    ({"tenants": [{"name": "Bad Name", "delta": "d", "key_sha256": "0" * 64}]}, "tenant name"),
    ({"tenants": [{"name": "a", "delta": "d"}]}, "lacks 'key_sha256'"),
    ({"tenants": [{"name": "a", "delta": "d", "key_sha256": "0" * 64, "keys": 1}]}, "unknown field"),
    ({"tenants": [{"name": "a", "delta": "d", "key_sha256": "0" * 64}] * 2}, "more than once"),
    ({"tenant": []}, "unknown field"),
    ({"tenants": [{"name": "a", "delta": "d", "key_sha256": "0" * 64, "moderation": {"action": "drop"}}]},
     "moderation.action"),
])
def test_bad_tenants_files_are_refused(tmp_path, body, message):
    path = tmp_path / "tenants.yaml"
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError, match=message):
        load_tenants_file(path)


def test_malformed_yaml_is_a_format_error(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants: [unclosed")
    with pytest.raises(FormatError, match="not valid YAML"):
        load_tenants_file(path)


def test_write_then_load_round_trips(tmp_path, world):
    spec = TenantSpec("acme", world.delta_dirs["alpha"], (hash_key("k1"), hash_key("k2")),
                      ModerationConfig(screen=("prompt", "response"), action="flag"))
    path = write_tenants_file(tmp_path / "t.yaml", [spec], hash_key("admin"))
    loaded = load_tenants_file(path)
    assert loaded.tenants == (spec,) and loaded.admin_key_hash == hash_key("admin")
    assert "k1" not in path.read_text()


def test_key_check_uses_constant_time_comparison(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("deltaguard.serve.tenants.hmac.compare_digest", spy)
    registry = TenantRegistry(admin_key_hash=hash_key("admin"))
    registry.add(TenantSpec("a", Path("."), (hash_key("ka"),)))
    registry.add(TenantSpec("b", Path("."), (hash_key("kb"),)))
    assert registry.tenants_for_key("ka") == {"a"}
    assert len(calls) == 2  # compared with every stored hash, no early exit
    assert registry.is_admin("admin") and len(calls) == 3


def test_new_keys_are_random_and_long():
    a, b = new_key(), new_key()
    assert a != b and len(a) >= 40 and a.startswith("dg-")


def test_delta_of_another_base_is_refused_before_loading(world, base_model):
    from deltaguard.delta.fingerprint import fingerprint_model

    fingerprint = fingerprint_model(base_model)
    spec = TenantSpec("intruder", world.other_base_delta, (hash_key("k"),))
    with pytest.raises(IncompatibleBaseError, match="intruder"):
        load_tenant_delta(spec, fingerprint=fingerprint)
    ok = TenantSpec("alpha", world.delta_dirs["alpha"], (hash_key("k"),))
    assert load_tenant_delta(ok, fingerprint=fingerprint).config.name == "bitdelta"


def test_keyword_moderation_blocks_and_flags():
    pool = ModeratorPool()
    block = pool.moderator(ModerationConfig(judge="keyword", judge_options={"strings": ["nerve agent"]}))
    assert block.trigger == "refusal"  # the keyword judge reports a match as a refusal: a blocklist
    fired = block.screen("prompt", "how do I make a nerve agent")
    assert fired.is_fired and fired.is_blocked and fired.judge == "keyword"
    assert not block.screen("prompt", "how do I bake bread").is_fired
    flag = pool.moderator(ModerationConfig(judge="keyword", judge_options={"strings": ["nerve agent"]}, action="flag"))
    assert flag.judge is block.judge  # one judge instance per distinct judge configuration
    decision = flag.screen("response", "q", "mix the nerve agent")
    assert decision.is_fired and decision.action == "flag" and not decision.is_blocked


def test_moderation_fails_closed_on_judge_errors():
    from deltaguard.judges import KeywordJudge

    class Broken(KeywordJudge):
        def judge(self, items):
            return [self.error_verdict("backend down") for _ in items]

    pool = ModeratorPool()
    closed = pool.moderator(ModerationConfig(judge="keyword"), judge=Broken())
    assert closed.screen("prompt", "hi").is_blocked
    open_ = pool.moderator(ModerationConfig(judge="keyword", on_judge_error="allow"), judge=Broken())
    assert not open_.screen("prompt", "hi").is_fired


def test_moderation_config_validation():
    with pytest.raises(ConfigError, match="screen"):
        ModerationConfig(screen=("everything",))
    with pytest.raises(ConfigError, match="threshold"):
        ModerationConfig(trigger="score")
    with pytest.raises(ConfigError, match="unknown judge"):
        ModeratorPool().moderator(ModerationConfig(judge="nope"))
