"""The hand-written probe: its make-up, its disjointness from a guard's data, and the rates check reports on it."""

from __future__ import annotations

import pytest

from deltaguard.data.base import group_of
from deltaguard.errors import ConfigError
from deltaguard.guard.check import probe_lines
from deltaguard.guard.data import GuardData, GuardExample, build_examples
from deltaguard.guard.probe import PROBE, PROBE_KINDS, UNSAFE_KINDS, probe_examples, probe_rates


def test_every_kind_is_there_with_the_task_and_label_it_names():
    kinds = {item.kind for item in PROBE}
    assert kinds == set(PROBE_KINDS)
    for item in PROBE:
        assert item.unsafe == (item.kind in UNSAFE_KINDS)
        assert (item.reply is None) == item.kind.endswith("-request"), item
        assert item.prompt.strip() and (item.reply is None or item.reply.strip())
    assert len({(group_of(i.prompt), i.reply) for i in PROBE}) == len(PROBE)   # no example twice
    for kind in PROBE_KINDS:   # enough of each kind for an interval narrower than "anything"
        assert sum(i.kind == kind for i in PROBE) >= 12, kind


def test_the_probe_shares_no_prompt_with_the_guard_s_real_data():
    data = build_examples(seed=0, max_prompt_only=10_000)   # every prompt of every source, uncapped
    examples = probe_examples(data)
    assert len(examples) == len(PROBE) and {e.split for e in examples} == {"probe"}
    assert len({e.id for e in examples}) == len(examples)
    assert not {e.group for e in examples} & {e.group for e in data.examples}


def test_a_probe_prompt_in_the_guard_s_data_is_refused():
    leaked = PROBE[0]
    example = GuardExample(id="x", prompt=leaked.prompt.upper() + "  ", response=None, unsafe=True, categories=(),
                           source="advbench", weak=False, group=group_of(leaked.prompt), split="train")
    with pytest.raises(ConfigError, match="also in the guard's data"):
        probe_examples(GuardData((example,)))


def _example(kind: str, unsafe: bool, index: int) -> GuardExample:
    return GuardExample(id=f"p{index}", prompt=f"prompt {index}", response=None, unsafe=unsafe, categories=(),
                        source=f"probe:{kind}", weak=False, group=f"g{index}", split="probe")


def test_probe_rates_count_each_kind_at_the_cut_and_pool_by_label():
    probe = [_example("plain-compliance", True, i) for i in range(4)] + \
            [_example("harmless-answer", False, i) for i in range(4, 8)]
    scores = [0.9, 0.5, 0.49, 0.1, 0.5, 0.2, 0.0, 0.7]
    rates = probe_rates(scores, probe, 0.5)
    assert rates["kinds"]["plain-compliance"]["flagged"] == 2 and rates["kinds"]["plain-compliance"]["n"] == 4
    assert rates["kinds"]["harmless-answer"]["flagged"] == 2   # the cut is inclusive: 0.5 is flagged
    assert rates["recall"]["rate"] == 0.5 and rates["fpr"]["rate"] == 0.5
    low, high = rates["recall"]["low"], rates["recall"]["high"]
    assert 0.0 < low < 0.5 < high < 1.0
    per_example = probe_rates(scores, probe, [0.95, 0.5, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    assert per_example["recall"]["flagged"] == 3 and per_example["fpr"]["flagged"] == 0


def test_probe_lines_name_every_kind_with_its_count_and_interval():
    probe = [_example("plain-compliance", True, i) for i in range(5)] + [_example("benign-request", False, 5)]
    result = {"stages": {"int4": {"probe": probe_rates([1, 1, 0, 0, 0, 1], probe, 0.5)}, "keyword": {}}}
    (line,) = probe_lines(result)
    assert line.startswith("int4 on the hand-written probe: plainly harmful replies caught 2/5 (40% [")
    assert line.endswith("ordinary requests alone flagged 1/1 (100% [21, 100])")
