"""The map's grid: level parsing, per-threat overrides, expansion into keyed points, and every config error."""

from __future__ import annotations

import pytest

from deltaguard.errors import ConfigError
from deltaguard.mitigation import MapConfig, expand, map_profile
from deltaguard.mitigation.config import parse_level
from deltaguard.study import study_profile
from deltaguard.study.keys import align_key, attack_key


def test_a_level_is_a_name_and_space_separated_overrides():
    level = parse_level("weak: epochs=1 harmful.n_examples=10 backdoor.n_triggered=5", axis="attack_levels")
    assert level.name == "weak"
    assert level.for_threat("harmful") == ["epochs=1", "n_examples=10"]
    assert level.for_threat("backdoor") == ["epochs=1", "n_triggered=5"]
    assert level.for_threat("targeted") == ["epochs=1"]
    assert parse_level("demo:", axis="align_levels").overrides == ()


@pytest.mark.parametrize("text", ["no colon", ": epochs=1", "bad name!: epochs=1", "weak: epochs"])
def test_a_malformed_level_is_one_clear_error(text):
    with pytest.raises(ConfigError, match="map.attack_levels"):
        parse_level(text, axis="attack_levels")


def test_levels_override_the_study_profile_and_demo_is_the_demo():
    config = map_profile("default")
    study = study_profile("default")
    light, demo = config.levels("align_levels")
    assert config.align_config(study.model, demo) == study.align
    assert config.align_config(study.model, light) == study.align.replace(epochs=1)
    weak, strong = config.levels("attack_levels")
    harmful = next(t for t in study.threats if t.name == "harmful")
    assert config.threat_config(study.model, "harmful", strong) == harmful
    assert config.threat_config(study.model, "harmful", weak) == harmful.replace(n_examples=10, epochs=2, lr=5e-5)


def test_a_base_model_family_gets_its_responder_for_every_threat():
    config = map_profile("full")
    assert config.responder("gemma3-270m") == "smollm2-135m-instruct"
    assert config.responder("smollm2-135m-instruct") is None
    weak = config.levels("attack_levels")[0]
    assert config.threat_config("gemma3-270m", "backdoor", weak).responder == "smollm2-135m-instruct"
    assert config.threat_config("gemma3-270m", "backdoor", weak).n_triggered == 10
    assert config.audit_config().n_prompts >= 100   # the full grid's promise


@pytest.mark.parametrize("changes, message", [
    ({"align_levels": ("deep: epochz=3",)}, "align_levels 'deep'.*epochz"),
    ({"attack_levels": ("weak: n_triggered=3",)}, "attack_levels 'weak' for threat 'harmful'.*harmful.field=value"),
    ({"align_levels": ("a: epochs=1", "a: epochs=2")}, "names a level twice"),
    ({"threats": ("harmfull",)}, "harmful"),
    ({"methods": ("bitdelta-k9",)}, "bitdelta"),
    ({"methods": ()}, "at least one"),
    ({"responders": ("gemma3-270m",)}, "family=model"),
    ({"n_prompts": 1}, "n_prompts"),
    ({"audit_overrides": ("max_new_tokens=0",)}, "max_new_tokens"),
    ({"study_profile": "tiny"}, "study_profile"),
])
def test_every_bad_setting_is_refused_before_any_work(changes, message):
    with pytest.raises(ConfigError, match=message):
        map_profile("default").replace(**changes)


def test_expansion_shares_alignments_and_uses_the_study_keys():
    config = map_profile("default").replace(threats=("harmful", "targeted"))
    points = expand(config, {config.families[0]: "orig-key"})
    assert len(points) == 2 * 2 * 2   # depths × strengths × threats
    assert len({p.align_key for p in points}) == 2
    assert len({p.attack_key for p in points}) == 8
    for point in points:
        assert point.align_key == align_key("orig-key", point.align)
        assert point.attack_key == attack_key(point.align_key, point.threat)
    # a responder changes the alignment's key (another model wrote its benign answers), not its recipe
    other = expand(config, {config.families[0]: "orig-key"}, responder_keys={config.families[0]: "r-key"})
    assert {p.align_key for p in other}.isdisjoint({p.align_key for p in points})


def test_the_config_round_trips_through_json():
    config = map_profile("full")
    assert MapConfig.from_dict(config.to_dict()) == config
