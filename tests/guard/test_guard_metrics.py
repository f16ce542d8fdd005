"""The guard check's metrics: exact values on hand-made cases."""

from __future__ import annotations

import math

import pytest

from deltaguard.errors import ConfigError
from deltaguard.guard.check import average_precision, classification_metrics


def test_average_precision_exact():
    assert average_precision([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    # ranks: T(1/1), F, T(2/3) -> (1 + 2/3) / 2
    assert average_precision([0.9, 0.5, 0.4], [True, False, True]) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(average_precision([0.3], [False]))
    # a tie between a positive and a negative counts the negative first (pessimistic)
    assert average_precision([0.5, 0.5], [True, False]) == pytest.approx(0.5)


def test_classification_metrics_counts():
    scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.6]
    labels = [True, True, False, False, False, True]
    m = classification_metrics(scores, labels, 0.65)
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert m["f1"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["fpr"]["value"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["accuracy"]["value"] == pytest.approx(4 / 6, abs=1e-4)
    assert m["f1"]["low"] <= m["f1"]["value"] <= m["f1"]["high"]
    with pytest.raises(ConfigError, match="no examples"):
        classification_metrics([], [], 0.5)


def test_per_example_thresholds_equal_one_threshold_when_they_agree():
    scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.6]
    labels = [True, True, False, False, False, True]
    one = classification_metrics(scores, labels, 0.65)
    many = classification_metrics(scores, labels, [0.65] * 6)
    assert many["confusion"] == one["confusion"] and many["f1"] == one["f1"]
    # a per-example cut changes only its own example: 0.7 (a safe one) judged at 0.75 becomes a true negative
    moved = classification_metrics(scores, labels, [0.65, 0.65, 0.75, 0.65, 0.65, 0.65])
    assert moved["confusion"] == {"tp": 2, "fp": 0, "fn": 1, "tn": 3}
    with pytest.raises(ConfigError, match="2 thresholds for 6 scores"):
        classification_metrics(scores, labels, [0.5, 0.5])


def test_cross_fitted_thresholds_come_from_the_other_half():
    from deltaguard.guard.build import choose_threshold
    from deltaguard.guard.check import cross_fitted_thresholds, fold_of
    from deltaguard.guard.data import GuardExample

    groups = [f"prompt {i}" for i in range(40)]
    examples = [GuardExample(id=f"e{i}", prompt=g, response=None, unsafe=i % 3 == 0, categories=(), source="s", weak=False,
                             split="val", group=g) for i, g in enumerate(groups)]
    scores = [((i * 37) % 100) / 100 for i in range(40)]
    folds = [fold_of(g) for g in groups]
    assert set(folds) == {0, 1}
    cuts = cross_fitted_thresholds(scores, examples)
    for fold in (0, 1):
        other = [(s, e.unsafe) for s, e, f in zip(scores, examples, folds) if f != fold]
        expected = choose_threshold([s for s, _ in other], [y for _, y in other])
        assert {c for c, f in zip(cuts, folds) if f == fold} == {expected}
    # the same group always lands in the same half
    assert all(fold_of(g) == f for g, f in zip(groups, folds))
    with pytest.raises(ConfigError, match="one prompt group"):
        cross_fitted_thresholds([0.1, 0.9], [examples[0], examples[0]])
    strict = cross_fitted_thresholds(scores, examples, max_fpr=0.0)
    for fold in (0, 1):
        other = [(s, e.unsafe) for s, e, f in zip(scores, examples, folds) if f != fold]
        expected = choose_threshold([s for s, _ in other], [y for _, y in other], max_fpr=0.0)
        assert {c for c, f in zip(strict, folds) if f == fold} == {expected}
        assert not any(s >= expected and not y for s, y in other)   # no false alarm where it was chosen


def test_choose_threshold_under_a_false_positive_cap():
    from deltaguard.guard.build import choose_threshold

    probs = [0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95]
    labels = [False, False, True, False, True, False, True, True]
    assert choose_threshold(probs, labels) == 0.3                       # max F1 flags 2 of 4 safe ones
    assert choose_threshold(probs, labels, max_fpr=0.25) == 0.7         # at most 1 of 4 safe ones flagged
    assert choose_threshold(probs, labels, max_fpr=0.0) == 0.9          # none
    assert choose_threshold([0.2, 0.9], [True, False], max_fpr=0.0) > 0.9   # only flagging nothing keeps it
    with pytest.raises(ConfigError, match="max_fpr"):
        choose_threshold(probs, labels, max_fpr=1.5)


def _example(i: int, source: str, unsafe: bool):
    from deltaguard.guard.data import GuardExample

    return GuardExample(id=f"{source}{i}", prompt=f"{source} {i}", response=None, unsafe=unsafe, categories=(),
                        source=source, weak=False, split="test", group=f"{source} {i}")


def test_source_mean_fpr_weighs_each_harmless_source_equally_whatever_the_mix():
    from deltaguard.guard.check import classification_metrics, source_mean_fpr

    # source "hard": 1 of 2 harmless flagged; source "easy": 0 of 8; one unsafe example, never counted
    examples = ([_example(i, "hard", False) for i in range(2)] + [_example(i, "easy", False) for i in range(8)]
                + [_example(0, "bad", True)])
    scores = [0.9, 0.1] + [0.1] * 8 + [0.9]
    mean = source_mean_fpr(scores, examples, 0.5)
    assert mean["value"] == pytest.approx(0.25) and mean["n_sources"] == 2
    assert mean["low"] <= mean["value"] <= mean["high"]
    assert classification_metrics(scores, [e.unsafe for e in examples], 0.5)["fpr"]["value"] == pytest.approx(0.1)
    # four times as many easy examples: the plain FPR falls, the source mean does not move
    more = examples + [_example(i, "easy", False) for i in range(8, 32)]
    more_scores = scores + [0.1] * 24
    plain = classification_metrics(more_scores, [e.unsafe for e in more], 0.5)["fpr"]["value"]
    assert plain == pytest.approx(1 / 34, abs=1e-4)   # intervals keep 4 decimals
    assert source_mean_fpr(more_scores, more, 0.5)["value"] == pytest.approx(0.25)
    # per-example thresholds (cross-fitted) are honoured
    assert source_mean_fpr(scores, examples, [0.95] + [0.5] * 10)["value"] == 0.0
    assert source_mean_fpr([0.9], [_example(0, "bad", True)], 0.5) is None


def test_the_low_fpr_cap_on_the_source_mean_is_not_loosened_by_easy_examples():
    from deltaguard.guard.build import choose_threshold

    # 2 hard harmless examples (one scores 0.85), 8 easy ones, 4 unsafe
    probs = [0.85, 0.2] + [0.1] * 8 + [0.8, 0.9, 0.95, 0.99]
    labels = [False] * 10 + [True] * 4
    sources = ["hard"] * 2 + ["easy"] * 8 + ["bad"] * 4
    # the plain FPR at 0.8 is 1/10, inside the cap; averaged over the two harmless sources it is 0.25
    assert choose_threshold(probs, labels, max_fpr=0.10) == 0.8
    assert choose_threshold(probs, labels, max_fpr=0.10, sources=sources) == 0.9
    assert choose_threshold(probs, labels, sources=sources) == 0.8      # no cap: sources change nothing
    with pytest.raises(ConfigError, match="3 sources for 14 scores"):
        choose_threshold(probs, labels, max_fpr=0.10, sources=sources[:3])


def test_task_lines_give_each_task_its_recall_and_fpr_at_the_stage_s_cut():
    """The pooled figures hid a task with lower recall (prompts alone): each task gets its own line part."""
    from deltaguard.guard.check import task_lines

    def task(tp, fn, fp, tn):
        return {"confusion": {"tp": tp, "fn": fn, "fp": fp, "tn": tn}}

    result = {"stages": {
        "int4": {"response_task": task(224, 26, 26, 209), "prompt_task": task(120, 30, 2, 148)},
        "keyword": {"response_task": task(10, 0, 5, 5), "prompt_task": None},   # judges replies only
        "teacher": {"response_task": None, "prompt_task": None},                 # one label only: no line
    }}
    lines = task_lines(result)
    assert lines[0] == ("int4 by task: prompt with reply: recall 0.896 [0.852, 0.928] of 250, FPR 0.111 of 235; "
                        "prompt alone: recall 0.800 [0.729, 0.856] of 150, FPR 0.013 of 150")
    assert lines[1] == "keyword by task: prompt with reply: recall 1.000 [0.722, 1.000] of 10, FPR 0.500 of 10"
    assert len(lines) == 2
