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
