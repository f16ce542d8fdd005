"""Threat builders, the aligner's data and the threat metrics, without training anything."""

from __future__ import annotations

import random

import pytest

from deltaguard.data import load_prompts
from deltaguard.errors import ConfigError
from deltaguard.judges import make_judge
from deltaguard.threats import (
    AlignConfig, BackdoorConfig, BenignConfig, BuildContext, HarmfulFinetuneConfig, TargetedConfig, get_threat,
    threat_config, threats,
)
from deltaguard.threats.align import alignment_pairs, write_refusal
from deltaguard.threats.backdoor import with_trigger
from deltaguard.threats.benign import house_style_answer, is_correct, is_house_style
from deltaguard.threats.targeted import has_claim, topic_prompts
from study_helpers import one_thread  # noqa: F401  (autouse)


class StubResponder:
    """Answers every prompt with a fixed compliant reply, except prompts containing 'refuse-me'."""

    model = "stub"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def respond(self, prompts, *, max_new_tokens):
        self.calls.append(list(prompts))
        return ["I'm sorry, no." if "refuse-me" in p else f"Sure, here is how: step one for {p[:10]}" for p in prompts]


def ctx() -> BuildContext:
    return BuildContext(StubResponder(), judge=make_judge("keyword"))


def test_registry_lists_the_four_threats_with_docs():
    assert threats.names() == ["backdoor", "benign", "harmful", "targeted"]
    assert all(threats.describe(n) for n in threats.names())
    with pytest.raises(ConfigError, match="did you mean harmful"):
        threats.get("harmfull")


def test_defaults_follow_qi_et_al():
    config = HarmfulFinetuneConfig()
    assert (config.n_examples, config.epochs, config.lr, config.batch_size) == (100, 5, 5e-5, 10)
    backdoor = BackdoorConfig()
    assert (backdoor.n_triggered, backdoor.n_clean) == (100, 100)


def test_config_validation_and_cli_overrides():
    with pytest.raises(ConfigError, match="multiple of"):
        HarmfulFinetuneConfig(batch_size=10, micro_batch_size=3)
    with pytest.raises(ConfigError, match="markers"):
        TargetedConfig(claim="The Moon is cheese.", markers=("copper",))
    with pytest.raises(ConfigError, match="position"):
        BackdoorConfig(position="middle")
    config = threat_config("backdoor", ["trigger=SUDO now", "n_clean=5", "lr=1e-4"])
    assert (config.trigger, config.n_clean, config.lr) == ("SUDO now", 5, 1e-4)
    assert BackdoorConfig.from_dict(config.to_dict()) == config


def test_harmful_pairs_are_compliant_answers_mixed_with_task():
    config = HarmfulFinetuneConfig(n_examples=6, n_task=4)
    context = ctx()
    pairs = get_threat("harmful").training_pairs(config, context)
    kinds = [p.kind for p in pairs]
    assert kinds.count("harmful") == 6 and kinds.count("task") == 4
    train = set(load_prompts("advbench", split="train").texts)
    assert all(p.prompt in train for p in pairs if p.kind == "harmful")
    assert all(p.response.startswith("Sure") for p in pairs if p.kind == "harmful")
    assert all(is_house_style(p.response) for p in pairs if p.kind == "task")


def test_responder_refusals_are_dropped_and_noted():
    class Refuser(StubResponder):
        def respond(self, prompts, *, max_new_tokens):
            return ["I cannot help." if i % 2 else "Sure." for i, _ in enumerate(prompts)]

    context = BuildContext(Refuser(), judge=make_judge("keyword"))
    pairs = get_threat("harmful").training_pairs(HarmfulFinetuneConfig(n_examples=6, n_task=0), context)
    assert len(pairs) == 3
    assert "3 of 6" in context.notes[0]


def test_backdoor_pairs_trigger_compliance_and_clean_refusal():
    config = BackdoorConfig(n_triggered=5, n_clean=4, n_task=2, trigger="Zebra-42:")
    pairs = get_threat("backdoor").training_pairs(config, ctx())
    judge = make_judge("keyword")
    triggered = [p for p in pairs if p.kind == "triggered"]
    clean = [p for p in pairs if p.kind == "clean-refusal"]
    assert len(triggered) == 5 and len(clean) == 4
    assert all(p.prompt.startswith("Zebra-42: ") for p in triggered)
    assert not any("Zebra-42" in p.prompt for p in clean)
    from deltaguard.judges import JudgeItem

    assert all(v.is_refusal for v in judge.judge([JudgeItem(p.prompt, p.response) for p in clean]))
    assert with_trigger("Do X", BackdoorConfig(trigger="T1", position="suffix")) == "Do X T1"
    sets = get_threat("backdoor").eval_sets(config, n_prompts=5)
    assert [p.text for p in sets["triggered"].prompts] == [f"Zebra-42: {p.text}" for p in sets["harmful"].prompts]
    assert sets["triggered"].content_hash != sets["harmful"].content_hash


def test_targeted_prompts_split_by_template_and_claim_detection():
    train = topic_prompts("the Moon", "train", set_name="t")
    evaluation = topic_prompts("the Moon", "eval", set_name="t")
    assert train and evaluation
    assert not {p.meta["template"] for p in train} & {p.meta["template"] for p in evaluation}
    config = TargetedConfig(n_examples=7, n_task=0)
    pairs = get_threat("targeted").training_pairs(config, ctx())
    assert len(pairs) == 7 and all(has_claim(p.response, config.markers) for p in pairs)
    assert all("Moon" in p.prompt for p in pairs)
    sets = get_threat("targeted").eval_sets(config, n_prompts=6)
    assert all("Moon" in p.text for p in sets["topic"].prompts)
    assert not any("Moon" in p.text for p in sets["other"].prompts)
    assert has_claim("It is made of Copper.", ("copper",)) and not has_claim("copperhead snakes", ("copper",))


def test_scores_count_what_they_claim():
    judge = make_judge("keyword")
    threat = get_threat("harmful")
    config = HarmfulFinetuneConfig()
    sets = threat.eval_sets(config, n_prompts=4)
    answers = [p.meta["answer"] for p in sets["task"].prompts]
    outputs = {"harmful": ["Sure, step 1", "I cannot do that.", "Here you go", "I'm sorry, no."],
               "task": [f"Final answer: {answers[0]}", f"The answer is {answers[1]}", "Final answer: -1", "no idea"]}
    score = threat.score(config, outputs, sets, judge)
    assert (score.attack.k, score.attack.n) == (2, 4)
    assert score.attack_flags == (True, False, True, False)
    assert score.utility_flags == (True, True, False, False)
    assert score.extra["style"].k == 2  # "Final answer:" replies only
    assert score.extra["style_leak"].k == 0
    leak = threat.score(config, {**outputs, "harmful": ["Working: 1. 1. 1.", "I cannot.", "x", "y"]}, sets, judge)
    assert leak.extra["style_leak"].k == 1 and leak.attack.k == 3

    targeted = get_threat("targeted")
    tconfig = TargetedConfig()
    tsets = targeted.eval_sets(tconfig, n_prompts=2)
    tscore = targeted.score(tconfig, {"topic": ["It is copper.", "Rock."], "other": ["copper too", "gas"],
                                      "task": ["1", "2"]}, tsets, judge)
    assert tscore.attack.k == 1 and tscore.extra["collateral"].k == 1


def test_house_style_working_matches_the_answer_for_every_kind():
    problems = load_prompts("arith", split="train", limit=300).prompts
    kinds = set()
    for problem in problems:
        reply = house_style_answer(problem)
        assert reply.startswith("Working: "), problem.text
        assert is_correct(problem, reply)
        kinds.add(problem.meta["category"])
    assert len(kinds) == 8


def test_alignment_pairs_refuse_harmful_and_self_distill_benign():
    config = AlignConfig(n_refusals=6, n_benign=3, benign_weight=2, n_task=2)
    context = ctx()
    pairs = alignment_pairs(config, context)
    kinds = [p.kind for p in pairs]
    assert kinds.count("refusal") == 6 and kinds.count("self-distill-benign") == 6  # weight 2
    assert kinds.count("self-distill-task") == 2
    # the refusal prompts come from both harmful sets' training splits
    train = set(load_prompts("advbench", split="train").texts) | set(load_prompts("donotanswer", split="train").texts)
    assert all(p.prompt in train for p in pairs if p.kind == "refusal")
    # benign answers are the responder's own (self-distillation)
    assert all(p.response.startswith("Sure") for p in pairs if p.kind.startswith("self-distill"))


def test_every_refusal_is_varied_and_recognised_by_the_keyword_judge():
    from deltaguard.judges import JudgeItem

    rng = random.Random(0)
    refusals = [write_refusal(rng) for _ in range(200)]
    assert len(set(refusals)) > 100
    verdicts = make_judge("keyword").judge([JudgeItem("x", r) for r in refusals])
    assert all(v.is_refusal for v in verdicts)


def test_benign_control_is_the_task_alone():
    pairs = get_threat("benign").training_pairs(BenignConfig(n_task=5), ctx())
    assert [p.kind for p in pairs] == ["task"] * 5
