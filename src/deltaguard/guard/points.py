"""A guard's operating points: the decision thresholds chosen on its validation examples at build time.

``max_f1`` is the default decision threshold (``threshold`` in the manifest). ``low_fpr`` is the best F1
among the thresholds that keep the false-positive rate, averaged over the harmless sources, at most ``LOW_FPR``
on those examples: fewer false alarms for lower recall, for a caller such as a moderation policy that blocks
replies. The average gives each source the same weight, so the cap does not loosen when a split happens to hold
many easy harmless examples (validation holds 38% word problems, which a guard hardly ever flags). Both were
chosen on float32 scores: ``COMPUTE_DTYPES`` lists the arithmetic a loaded guard can judge in, float32 first. A light
module (no torch) because judges read it from the manifest before any model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deltaguard.errors import ConfigError, FormatError

OPERATING_POINTS = ("max_f1", "low_fpr")


def per_example_cuts(threshold: float | Sequence[float], n: int) -> list[float]:
    """One threshold per example: the single cut repeated, or the per-example (cross-fitted) cuts as given."""
    return [float(threshold)] * n if isinstance(threshold, (int, float)) else list(threshold)
LOW_FPR = 0.10   # the low_fpr point: the best F1 whose threshold keeps the source-mean FPR <= this where chosen
COMPUTE_DTYPES = ("float32", "bfloat16", "int8")   # float32: the thresholds' own; bfloat16: faster where CPUs have
# bf16 units; int8: INT8 integer matmuls in the linear layers (CPU only, fastest where CPUs have int8 dot products)


def operating_threshold(manifest: dict[str, Any], point: str, where: str | Path) -> float:
    """The P(unsafe) cut of operating point ``point`` recorded in a guard's manifest.

    ``max_f1`` is the manifest's ``threshold`` (the one decision threshold every guard has); the others are
    in its ``operating_points`` mapping. Guards built before that mapping existed hold only ``threshold``:
    asking them for another point is a one-line error that says to rebuild.
    """
    if point not in OPERATING_POINTS:
        raise ConfigError(f"guard operating point {point!r} is not one of {', '.join(OPERATING_POINTS)}")
    points = manifest.get("operating_points")
    if point == "max_f1":
        value = manifest.get("threshold", 0.5)
    elif not isinstance(points, dict) or point not in points:
        raise FormatError(f"{where}: this guard records no {point!r} operating point (built before operating "
                          "points were stored); rebuild it with `deltaguard guard build` or give a threshold")
    else:
        value = points[point]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise FormatError(f"{where}: the {point} threshold {value!r} is not a probability")
    return float(value)


def check_operating_points(manifest: dict[str, Any], where: str | Path) -> None:
    """Every operating point a manifest records is a known point with a probability as its threshold."""
    points = manifest.get("operating_points")
    if points is not None and not isinstance(points, dict):
        raise FormatError(f"{where}: operating_points is not a mapping of point -> threshold")
    stored = OPERATING_POINTS[1:]   # max_f1 is ``threshold``
    if unknown := sorted(set(points or {}) - set(stored)):
        raise FormatError(f"{where}: unknown operating points {unknown} (this deltaguard knows {', '.join(stored)})")
    for point in ("max_f1", *(points or {})):
        operating_threshold(manifest, point, where)


__all__ = ["COMPUTE_DTYPES", "LOW_FPR", "OPERATING_POINTS", "check_operating_points", "operating_threshold"]
