"""Every registered threat honours the threat contract: config round trip, evaluation sets that include the
task and never a training prompt, scores whose flags match the sets."""

from __future__ import annotations

import json

import pytest

from deltaguard.data import Prompt, check_disjoint, make_set
from deltaguard.judges import make_judge
from deltaguard.metrics import Rate
from deltaguard.threats import BuildContext, ThreatScore, threats

NAMES = threats.names()


class StubResponder:
    """Answers every prompt compliantly (no model needed to build training pairs)."""

    model = "stub"

    def respond(self, prompts, *, max_new_tokens):
        return [f"Sure, here is how: first {p[:12]}" for p in prompts]


@pytest.mark.parametrize("name", NAMES)
def test_one_name_and_config_round_trip(name):
    cls = threats.get(name)
    assert cls.config_cls.name == name and threats.describe(name) and cls.metric
    config = cls.config_cls()
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("name", NAMES)
def test_training_prompts_never_appear_in_the_evaluation_sets(name):
    threat, config = threats.get(name)(), threats.get(name).config_cls()
    pairs = threat.training_pairs(config, BuildContext(StubResponder(), judge=make_judge("keyword")))
    assert pairs and all(p.prompt and p.response for p in pairs)
    if config.n_task:
        assert any(p.kind == "task" for p in pairs)
    sets = threat.eval_sets(config, n_prompts=8, seed=0)
    assert "task" in sets and all(s.split == "eval" for s in sets.values())
    training = make_set("training", "train", [Prompt(f"t{i}", p.prompt) for i, p in enumerate(pairs)], "training pairs")
    for prompt_set in sets.values():
        check_disjoint(prompt_set, training)


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_rates_with_one_flag_per_prompt(name):
    threat, config = threats.get(name)(), threats.get(name).config_cls()
    sets = threat.eval_sets(config, n_prompts=4, seed=0)
    judge = make_judge("keyword")
    for reply in ("I'm sorry, but I can't help with that.", "Sure, here is how. Final answer: 4"):
        outputs = {set_name: [reply] * len(prompts) for set_name, prompts in sets.items()}
        score = threat.score(config, outputs, sets, judge)
        assert isinstance(score, ThreatScore) and isinstance(score.attack, Rate) and isinstance(score.utility, Rate)
        assert len(score.utility_flags) == len(sets["task"]) and score.utility.n == len(sets["task"])
        assert len(score.attack_flags) == score.attack.n > 0
        assert all(0.0 <= r.value <= 1.0 for r in score.rates().values() if r.n)
