"""The guard's examples: labels follow their documented sources, and no prompt is in two splits."""

from __future__ import annotations

import pytest

from deltaguard.data.base import datasets, normalise_text
from deltaguard.errors import ConfigError
from deltaguard.guard.data import (
    GUARD_SPLITS, LABEL_SOURCES, UNSAFE_CUT, GuardData, GuardExample, add_replies, balance_labels, build_examples,
    check_disjoint, graded_refusals, group_of, hashed_split, prompts_to_answer, reply_prefixes,
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
    assert {e.source for e in prompt_only if not e.unsafe} <= {"benign", "arith", "requests"}
    assert UNSAFE_CUT == 0.5
    # human grades between "no harm at all" and the cut grade a mild depiction, not a policy: left out
    grades = {p.id: p.meta["harm"] for p in datasets.get("pyrit-harm")().load_pool()}
    assert all(grades[e.id] == 0.0 for e in harm if not e.unsafe)
    assert all(grades[e.id] >= UNSAFE_CUT for e in harm if e.unsafe)
    assert len(harm) < len(grades)


def test_everyday_requests_only_ever_train_the_guard(data):
    """``requests`` is a calibration-only set that no study evaluates: the guard may learn from all of it."""
    requests = [e for e in data.examples if e.source == "requests"]
    assert requests and all(e.split == "train" and not e.unsafe for e in requests)
    assert len(requests) >= 0.95 * len(datasets.get("requests")().load_pool())   # a few repeat another set's text


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
    benign_pool = {p.id for p in datasets.get("benign")().load_pool(seed=0)}
    for split in ("train", "val", "test"):
        for unsafe in (True, False):
            mine = [e for e in data.split(split) if e.response is None and e.unsafe == unsafe]
            benign = [e for e in mine if e.source in ("benign", "requests")]
            assert len(mine) - len(benign) <= max(50 - len(benign), 0)   # the cap thins the other sources
    kept = {e.id for e in data.examples if e.source == "benign"}
    assert kept <= benign_pool and len(kept) >= 0.85 * len(benign_pool)   # kept whole, but for prompts in check
    assert set(data.summary()["counts"]) == set(GUARD_SPLITS)


def test_hashed_split_is_stable_and_shares_are_close():
    groups = [group_of(f"prompt {i}") for i in range(4000)]
    splits = [hashed_split(g, seed=0) for g in groups]
    assert splits == [hashed_split(g, seed=0) for g in groups]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["test"] - 0.3) < 0.03 and abs(share["val"] - 0.2) < 0.02


def test_a_larger_validation_share_never_moves_a_test_group():
    """Validation grows out of train only: the test split (and every figure measured on it) stays put."""
    groups = [group_of(f"prompt {i}") for i in range(4000)]
    for g in groups:
        narrow, wide = hashed_split(g, seed=0, val=0.1), hashed_split(g, seed=0, val=0.2)
        assert (narrow == "test") == (wide == "test")
        assert narrow != "val" or wide == "val"


def _example(i: int, source: str, unsafe: bool) -> GuardExample:
    return GuardExample(id=f"{source}:{i}", prompt=f"p{i}", response="r", unsafe=unsafe, categories=(), source=source,
                        weak=False, group=f"g{i}", split="train")


def test_balance_labels_repeats_the_rarer_label_of_mixed_sources_only():
    mixed = [_example(i, "pyrit-harm", i >= 3) for i in range(10)]          # 3 safe, 7 unsafe
    single = [_example(100 + i, "advbench", True) for i in range(5)]
    balanced = balance_labels(mixed + single, seed=0)
    assert balanced[:15] == mixed + single                                    # the originals first, unchanged
    extra = balanced[15:]
    assert len(extra) == 4 and all(e.source == "pyrit-harm" and not e.unsafe for e in extra)
    assert sum(not e.unsafe for e in balanced) == sum(e.unsafe and e.source == "pyrit-harm" for e in balanced)
    assert len({e.id for e in extra[:3]}) == 3                                # every safe example once before any twice
    assert balance_labels(mixed + single, seed=0) == balanced                 # seeded
    assert balance_labels(single, seed=0) == single                           # one label: nothing added
    assert balance_labels([], seed=0) == []


def test_graded_refusals_pair_each_graded_unsafe_prompt_once_with_a_safe_refusal():
    graded = [_example(i, "pyrit-harm", i >= 3) for i in range(6)]          # g0-g2 safe, g3-g5 unsafe
    twice = GuardExample(id="pyrit-harm:33", prompt="p3", response="another", unsafe=True, categories=(),
                         source="pyrit-harm", weak=False, group="g3", split="train")
    other = [_example(100 + i, "advbench", True) for i in range(3)]          # not graded: left alone
    examples = graded + [twice] + other
    out = graded_refusals(examples, seed=0)
    assert out[:len(examples)] == examples                                    # the originals first, unchanged
    added = out[len(examples):]
    assert [e.group for e in added] == ["g3", "g4", "g5"]                     # one per graded unsafe prompt
    for e in added:
        assert e.source == "graded-refusal" and not e.unsafe and e.categories == () and not e.weak
        assert e.split == "train" and e.prompt == f"p{e.group[1:]}" and e.response.strip()
    assert "graded-refusal" in LABEL_SOURCES
    assert graded_refusals(examples, seed=0) == out                           # seeded
    assert graded_refusals(other, seed=0) == other and graded_refusals([], seed=0) == []


def _reply(index: int, unsafe: bool, response: str | None) -> GuardExample:
    return GuardExample(id=f"x:{index}", prompt=f"p{index}", response=response, unsafe=unsafe, categories=("S1",) if unsafe
                        else (), source="pyrit-harm", weak=False, group=f"g{index}", split="train")


def test_reply_prefixes_cut_unsafe_replies_to_their_leading_sentences_only():
    long_reply = ("First you gather the things you need for it. Then you put them together in the garage. "
                  "After that you wait until night. Finally you do it when nobody is watching.")
    examples = ([_reply(i, True, long_reply) for i in range(40)] + [_reply(100 + i, False, long_reply) for i in range(10)]
                + [_reply(200, True, "One sentence that is long enough to count but has nowhere to cut"),
                   _reply(201, True, None)])
    out = reply_prefixes(examples, seed=0, share=0.5)
    assert len(out) == len(examples) and [e.group for e in out] == [e.group for e in examples]
    assert out[40:] == examples[40:]            # harmless replies, one-sentence replies and prompts alone: untouched
    cut = [e for e in out if e.id.endswith(":prefix")]
    assert 10 <= len(cut) <= 30                 # about half of the 40, seeded
    sentence_ends = {long_reply.index(". ") + 1, long_reply.index(". ", long_reply.index(". ") + 1) + 1}
    for e in cut:
        assert e.unsafe and e.weak and e.categories == ("S1",) and e.split == "train"
        assert long_reply.startswith(e.response) and len(e.response) in sentence_ends   # one or two whole sentences
    assert reply_prefixes(examples, seed=0, share=0.5) == out                # seeded
    assert reply_prefixes(examples, seed=1, share=0.5) != out
    assert reply_prefixes(examples, seed=0, share=0.0) == examples
    assert all(e.id.endswith(":prefix") for e in reply_prefixes(examples[:40], seed=0, share=1.0))
    with pytest.raises(ConfigError, match="share"):
        reply_prefixes(examples, seed=0, share=1.5)


def test_errors():
    with pytest.raises(ConfigError, match="max_prompt_only"):
        build_examples(max_prompt_only=-1)
    with pytest.raises(ConfigError, match="guard split 'dev'"):
        GuardData(()).split("dev")


def test_prompts_to_answer_picks_a_seeded_capped_share_of_each_split(data):
    asked = prompts_to_answer(data, n_harmful=5, n_benign=2, seed=0)
    assert asked == prompts_to_answer(data, n_harmful=5, n_benign=2, seed=0)
    assert asked != prompts_to_answer(data, n_harmful=5, n_benign=2, seed=1)
    for split in ("train", "val", "test"):
        mine = [e for e in asked if e.split == split]
        assert sum(e.unsafe for e in mine) == 5 and sum(not e.unsafe for e in mine) == 2
        assert all(e.source == "benign" for e in mine if not e.unsafe)   # varied requests before arithmetic
    assert all(e.response is None and e.split != "check" for e in asked)
    assert prompts_to_answer(data, n_harmful=0, n_benign=0, seed=0) == []


def test_replies_make_contrastive_pairs_in_their_prompts_split(data):
    asked = sorted(prompts_to_answer(data, n_harmful=3, n_benign=1, seed=0), key=lambda e: not e.unsafe)
    replies = [f"reply {i}" for i in range(len(asked))]
    refused = [i == 0 for i in range(len(asked))]   # the first harmful reply was a refusal
    grown = add_replies(data, asked, replies, refused, seed=0)
    added = grown.examples[len(data.examples):]
    check_disjoint(grown)
    by_prompt = {e.id: e for e in asked}
    for e in added:
        prompt = by_prompt[e.id.rsplit(":", 1)[0]]
        assert (e.group, e.split, e.prompt) == (prompt.group, prompt.split, prompt.prompt)
        assert e.source in LABEL_SOURCES
    sources = {e.source for e in added}
    assert sources == {"reply-compliant", "constructed-refusal", "reply-benign"}
    assert not any(e.id == f"{asked[0].id}:reply" for e in added)   # a keyword "refusal" is left out
    for e in added:   # unsafe only for a harmful prompt's non-refused reply, and then it keeps the hazard codes
        assert e.unsafe == (e.source == "reply-compliant")
        assert e.weak == (e.source != "constructed-refusal")
        assert e.categories == (by_prompt[e.id.rsplit(":", 1)[0]].categories if e.unsafe else ())
    harmful = [e for e in asked if e.unsafe]
    assert sum(e.source == "constructed-refusal" for e in added) == len(harmful)
    again = add_replies(data, asked, replies, refused, seed=0)
    assert again.content_hash == grown.content_hash


def test_add_replies_refuses_mismatched_or_misplaced_inputs(data):
    asked = prompts_to_answer(data, n_harmful=1, n_benign=0, seed=0)[:1]
    with pytest.raises(ConfigError, match="1 prompts, 0 replies"):
        add_replies(data, asked, [], [], seed=0)
    answered = data.split("check")[:1]
    with pytest.raises(ConfigError, match="not a prompt-only example"):
        add_replies(data, answered, ["x"], [False], seed=0)
    empty = add_replies(data, asked, ["   "], [False], seed=0)   # an empty reply adds only the refusal
    assert [e.source for e in empty.examples[len(data.examples):]] == ["constructed-refusal"]


def test_compliant_sources_keep_only_the_named_sources_unsafe_replies(data):
    asked = prompts_to_answer(data, n_harmful=6, n_benign=1, seed=0)
    assert {e.source for e in asked if e.unsafe} == {"advbench", "donotanswer"}
    replies = [f"reply {i}" for i in range(len(asked))]
    refused = [False] * len(asked)
    every = add_replies(data, asked, replies, refused, seed=0)
    only = add_replies(data, asked, replies, refused, seed=0, compliant_sources=("advbench",))
    by_prompt = {e.id: e for e in asked}

    def prompt_sources(grown, source):
        return sorted(by_prompt[e.id.rsplit(":", 1)[0]].source for e in grown.examples[len(data.examples):]
                      if e.source == source)

    assert set(prompt_sources(every, "reply-compliant")) == {"advbench", "donotanswer"}
    assert set(prompt_sources(only, "reply-compliant")) == {"advbench"}
    # the left-out replies are dropped, not relabelled: their refusals and the benign replies stay
    assert prompt_sources(only, "constructed-refusal") == prompt_sources(every, "constructed-refusal")
    assert prompt_sources(only, "reply-benign") == prompt_sources(every, "reply-benign")
    assert not any(e.source == "reply-compliant" and not e.unsafe for e in only.examples)
