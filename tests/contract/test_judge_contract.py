"""Every registered judge honours the judge contract (generated from the registry).

A judge that needs a model or an endpoint is built from a tiny local model here (``FACTORIES``); a new
judge that cannot be built offline from its defaults must add its line, or this suite fails for it.
"""

from __future__ import annotations

import json

import pytest

from tinymodels import make_tiny_llama
from deltaguard.judges import MEASURES, JUDGE_ERROR, JudgeItem, judges, make_judge

NAMES = judges.names()
ITEMS = [JudgeItem("How do I bake bread?", "Mix flour, water and yeast, then bake."),
         JudgeItem("How do I make a weapon?", "I'm sorry, but I can't help with that."),
         JudgeItem("Write a poem.", "")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("judge-model")
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), tied=False)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, key, getattr(tiny_tokenizer, key))
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(path)
    return path, model, tiny_tokenizer


def _tiny_guard(tiny) -> str:
    """A guard built from the tiny model (once per module): every stage, two steps each."""
    from deltaguard.guard.build import GuardBuildConfig, build_guard
    from deltaguard.guard.train import GuardTrainConfig

    run_dir = tiny[0].parent / "guard-build"
    if not (run_dir / "guard").exists():
        stage = GuardTrainConfig(epochs=1, max_steps=2, batch_size=4, lr=1e-3)
        build_guard(GuardBuildConfig(model=str(tiny[0]), max_prompt_only=6, n_train=8, max_prompt_tokens=12,
                                     max_response_tokens=12, teacher=stage, distill=stage, qat=stage, n_calib=4,
                                     drop_blocks=1, keep_neurons=64, group_size=32, n_val=4), run_dir, progress=False)
    return str(run_dir / "guard")


FACTORIES = {
    "guard": lambda tiny: make_judge("guard", path=_tiny_guard(tiny)),
    "llm": lambda tiny: make_judge("llm", backend="hf", model=str(tiny[0]), max_tokens=4),
    "llamaguard": lambda tiny: judges.get("llamaguard")(judges.get("llamaguard").config_cls(
        model="tiny", categories=("S1",), max_new_tokens=3), model=tiny[1], tokenizer=tiny[2]),
}


def build(name, tiny):
    return FACTORIES[name](tiny) if name in FACTORIES else make_judge(name)


@pytest.mark.parametrize("name", NAMES)
def test_one_name_and_documented_measures(name):
    cls = judges.get(name)
    assert cls.name == name and cls.config_cls.name == name
    assert cls.measures and set(cls.measures) <= set(MEASURES), cls.measures
    assert judges.describe(name)


@pytest.mark.parametrize("name", NAMES)
def test_config_json_round_trip(name):
    config = judges.get(name).config_cls()
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("name", NAMES)
def test_one_verdict_per_item_in_order_filling_what_it_measures(name, tiny):
    judge = build(name, tiny)
    verdicts = judge.judge(ITEMS)
    assert len(verdicts) == len(ITEMS)
    assert judge.judge([]) == []
    for verdict in verdicts:
        assert (verdict.judge, verdict.judge_version, verdict.prompt_hash) == (name, judge.version, judge.prompt_hash)
        if verdict.label == JUDGE_ERROR:
            assert verdict.error and verdict.is_refusal is None and verdict.is_unsafe is None
            continue
        if "refusal" in judge.measures:
            assert isinstance(verdict.is_refusal, bool)
        if "unsafe" in judge.measures:
            assert isinstance(verdict.is_unsafe, bool)
        if {"harm_score", "unsafe_probability", "toxic"} & set(judge.measures):
            assert isinstance(verdict.score, float)
    again = judge.judge(list(reversed(ITEMS)))  # deterministic and order-preserving
    assert [v.to_dict() for v in again] == [v.to_dict() for v in reversed(verdicts)]
