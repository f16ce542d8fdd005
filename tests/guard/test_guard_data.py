"""The guard's examples: labels follow their documented sources, and no prompt is in two splits."""

from __future__ import annotations

import pytest

from deltaguard.data.base import normalise_text
from deltaguard.errors import ConfigError
from deltaguard.guard.data import (
    GUARD_SPLITS, UNSAFE_CUT, GuardData, build_examples, check_disjoint, group_of, hashed_split,
)


@pytest.fixture(scope="module")
def data() -> GuardData:
    return build_examples(seed=0, max_prompt_only=50)


def test_no_prompt_is_in_two_splits(data):
    splits_of_text: dict[str, set[str]] = {}
    for e in data.examples:
        splits_of_text.setdefault(normalise_text(e.prompt), set()).add(e.split)
    assert all(len(s) == 1 for s in splits_of_text.values())
    check_disjoint(data)


def test_check_disjoint_catches_a_leak(data):
    train = data.split("train")[0]
    leaked = GuardData(data.examples + (type(train)(**{**train.__dict__, "id": "leak", "split": "test"}),))
    with pytest.raises(ConfigError, match="is in both train and test"):
        check_disjoint(leaked)


def test_the_check_split_is_only_the_refusal_set_and_never_trained(data):
    check = data.split("check")
    assert check and {e.source for e in check} == {"pyrit-refusal"}
    assert all(e.weak for e in check)
    assert not [e for e in data.examples if e.source == "pyrit-refusal" and e.split != "check"]


def test_labels_follow_their_sources(data):
    harm = [e for e in data.examples if e.source == "pyrit-harm"]
    assert harm and all(e.response is not None and not e.weak for e in harm)
    assert all(not e.categories for e in harm if not e.unsafe)
    assert any(e.unsafe for e in harm) and any(not e.unsafe for e in harm)
    prompt_only = [e for e in data.examples if e.response is None]
    assert {e.source for e in prompt_only if e.unsafe} <= {"advbench", "donotanswer"}
    assert {e.source for e in prompt_only if not e.unsafe} <= {"benign", "arith"}
    assert UNSAFE_CUT == 0.5


def test_study_evaluation_prompts_are_only_in_the_test_split(data):
    """Sets the studies evaluate keep their split: an eval-split prompt never trains the guard."""
    from deltaguard.data.base import datasets, split_of

    source = datasets.get("advbench")()
    eval_texts = {normalise_text(p.text) for p in source.load_pool()
                  if split_of("advbench", p.id, source.fractions) == "eval"}
    trained = [e for e in data.examples if e.split in ("train", "val") and normalise_text(e.prompt) in eval_texts]
    assert not trained


def test_the_build_is_deterministic_and_capped(data):
    again = build_examples(seed=0, max_prompt_only=50)
    assert again.content_hash == data.content_hash and again.split_hashes() == data.split_hashes()
    for split in ("train", "val", "test"):
        for unsafe in (True, False):
            n = sum(1 for e in data.split(split) if e.response is None and e.unsafe == unsafe)
            assert n <= 50
    assert set(data.summary()["counts"]) == set(GUARD_SPLITS)


def test_hashed_split_is_stable_and_shares_are_close():
    groups = [group_of(f"prompt {i}") for i in range(4000)]
    splits = [hashed_split(g, seed=0) for g in groups]
    assert splits == [hashed_split(g, seed=0) for g in groups]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["test"] - 0.3) < 0.03 and abs(share["val"] - 0.1) < 0.02


def test_errors():
    with pytest.raises(ConfigError, match="max_prompt_only"):
        build_examples(max_prompt_only=-1)
    with pytest.raises(ConfigError, match="guard split 'dev'"):
        GuardData(()).split("dev")
