"""The study's figures, as PNG bytes (matplotlib's object API with the Agg canvas; no pyplot state).

Each function takes the ``results.json`` dictionary a study writes, so a report can be redrawn from
that file alone.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

_DPI = 110


def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _rows(audit: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    rows = audit["rows"]
    return rows[0], rows[1], [r for r in rows[2:] if r["label"] != "full"]


def _err(rate: dict[str, Any]) -> tuple[list[float], list[float]]:
    value = 100 * rate["value"]
    return [max(0.0, value - 100 * rate["low"])], [max(0.0, 100 * rate["high"] - value)]


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 2)
    return math.ceil(n / cols), cols


def attack_vs_bits(results: dict[str, Any]) -> bytes:
    """Per threat: each method's attack metric against its bits per delta parameter, with 95% CIs."""
    audits = results["audits"]
    n_rows, n_cols = _grid(len(audits))
    fig = new_figure(5.2 * n_cols, 3.6 * n_rows)
    for index, (threat, audit) in enumerate(audits.items()):
        ax = fig.add_subplot(n_rows, n_cols, index + 1)
        base, finetuned, compressed = _rows(audit)
        ax.axhline(100 * base["rates"]["attack"]["value"], color="tab:green", ls="--", lw=1, label="aligned base")
        ax.axhline(100 * finetuned["rates"]["attack"]["value"], color="tab:red", ls="--", lw=1,
                   label="fine-tune (full Δ)")
        markers = "osD^vP*Xhp<>"
        for i, row in enumerate(compressed):
            bits = row["compression"].get("bits_per_param")
            if bits is None:
                continue
            low, high = _err(row["rates"]["attack"])
            # methods with equal bits (e.g. BitDelta with and without distillation) are nudged apart
            x = bits * (1 + 0.015 * (i - len(compressed) / 2))
            ax.errorbar([x], [100 * row["rates"]["attack"]["value"]], yerr=[low, high], fmt=markers[i % len(markers)],
                        capsize=3, label=row["label"])
        ax.set_xlabel("bits per delta parameter (all stored deltas)")
        ax.set_ylabel("attack metric (%)")
        ax.set_ylim(-5, 105)
        ax.set_xlim(left=0)
        ax.set_title(threat, fontsize=10)
        ax.legend(fontsize=6.5, loc="best", ncol=2)
    return to_png(fig)


def utility_vs_attack(results: dict[str, Any]) -> bytes:
    """Per threat: utility (task accuracy) against the attack metric for every model, with 95% CIs."""
    audits = results["audits"]
    n_rows, n_cols = _grid(len(audits))
    fig = new_figure(5.2 * n_cols, 3.6 * n_rows)
    for index, (threat, audit) in enumerate(audits.items()):
        ax = fig.add_subplot(n_rows, n_cols, index + 1)
        markers = "osD^vP*Xhp<>"
        for i, row in enumerate(r for r in audit["rows"] if r["label"] != "full"):
            utility, attack_rate = row["rates"]["utility"], row["rates"]["attack"]
            color = {"base": "tab:green", "finetuned": "tab:red"}.get(row["role"])
            ax.errorbar([100 * utility["value"]], [100 * attack_rate["value"]], xerr=_err(utility),
                        yerr=_err(attack_rate), fmt=markers[i % len(markers)], color=color, capsize=2, alpha=0.85,
                        label=row["label"])
        ax.legend(fontsize=6.5, loc="best", ncol=2)
        ax.set_xlabel("utility: task accuracy (%)")
        ax.set_ylabel("attack metric (%)")
        ax.set_xlim(-5, 105)
        ax.set_ylim(-5, 105)
        ax.set_title(f"{threat} (good: bottom right)", fontsize=10)
    return to_png(fig)


def bitdelta_passes(label: str) -> tuple[int, bool] | None:
    """``(k, is_distilled)`` for a BitDelta spec label (``bitdelta-k3-nodistill`` → (3, False)), else None."""
    match = re.fullmatch(r"bitdelta(?:-k([1-4]))?(-nodistill)?", label)
    if match is None:
        return None
    return int(match.group(1) or 1), match.group(2) is None


def fidelity_sweep(results: dict[str, Any]) -> bytes | None:
    """Attack metric as BitDelta keeps more sign passes (k = 1..4), then the full delta.

    Distilled variants are joined by solid lines, undistilled ones by dashed lines; a variant alone in
    its group shows as a single marker.
    """
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for threat, audit in results["audits"].items():
        rows = {r["label"]: r for r in audit["rows"]}
        color = None
        for is_distilled, style, marker in ((True, "-", "o"), (False, "--", "x")):
            points = sorted((passes[0], row) for label, row in rows.items()
                            if (passes := bitdelta_passes(label)) is not None and passes[1] == is_distilled)
            if not points:
                continue
            xs = [k for k, _ in points]
            ys = [100 * r["rates"]["attack"]["value"] for _, r in points]
            if len(points) > 1 or is_distilled:
                xs.append(5)
                ys.append(100 * rows["finetuned"]["rates"]["attack"]["value"])
            line = ax.plot(xs, ys, ls=style if len(points) > 1 else "none", marker=marker, ms=7, color=color,
                           label=f"{threat}{'' if is_distilled else ' (no distillation)'}")[0]
            color = line.get_color()
            drawn = True
        if color is not None:
            ax.axhline(100 * rows["base"]["rates"]["attack"]["value"], color=color, ls=":", lw=1)
    if not drawn:
        return None
    ax.set_xticks([1, 2, 3, 4, 5], ["k=1", "k=2", "k=3", "k=4", "full Δ"])
    ax.set_xlabel("BitDelta sign passes k (higher fidelity →)")
    ax.set_title("solid/o: scales distilled; dashed/x: closed-form scales; dotted: aligned base", fontsize=9)
    ax.set_ylabel("attack metric (%)")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=7)
    return to_png(fig)


THREAT_ORDER = ("harmful", "backdoor", "targeted", "benign")
_THREAT_NAMES = {"benign": "benign (control)"}


def _finite(value: Any) -> float:
    """``value`` as a float, or nan when it is missing, not a number or not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def interval_triplet(record: Any) -> tuple[float, float, float]:
    """``(value, low, high)`` of an interval record (``{"value", "low", "high"}``, any of them null); nan where
    missing, and nan bounds when they do not bracket the value (an interval that would draw garbage)."""
    if not isinstance(record, dict):
        return math.nan, math.nan, math.nan
    value, low, high = (_finite(record.get(k)) for k in ("value", "low", "high"))
    if math.isnan(value) or math.isnan(low) or math.isnan(high) or not low - 1e-9 <= value <= high + 1e-9:
        low = high = math.nan
    return value, low, high


def headline_threats(results: dict[str, Any]) -> list[str]:
    """The audited threats in the study's order (harmful, backdoor, targeted, benign control, then others)."""
    audits = results.get("audits") or {}
    known = [t for t in THREAT_ORDER if t in audits]
    return known + [t for t in audits if t not in THREAT_ORDER]


def headline_methods(results: dict[str, Any]) -> list[str]:
    """Every compression method audited for any threat, in first-seen order (not the base, the fine-tune or the
    uncompressed ``full`` delta, whose mitigation is 0 by construction)."""
    methods: list[str] = []
    for threat in headline_threats(results):
        for row in (results["audits"][threat] or {}).get("rows", []):
            label = row.get("label")
            if row.get("role") not in ("base", "finetuned") and label != "full" and label not in methods:
                methods.append(label)
    return methods


def headline(results: dict[str, Any]) -> bytes | None:
    """The report's opening figure: per threat and method, mitigation and utility drop with 95% intervals.

    Two panels share the x axis: one group per threat, one bar per method (the same colour in both
    panels). Top: mitigation, the % of the fine-tune's attack the compression removed (0: none, 100:
    back to the aligned base). Bottom: the utility drop relative to the fine-tune, with each threat's
    utility-drop limit. A missing or undefined value is written "n/a" in its slot instead of a bar; an
    interval with a missing bound gets no error bar. Values beyond the axis range are clipped to it and
    written out.
    """
    threats, methods = headline_threats(results), headline_methods(results)
    if not threats or not methods:
        return None
    n = len(methods)
    slot = 0.84 / n
    width = min(16.0, max(6.4, 1.2 + len(threats) * (0.3 * n + 0.7)))
    fig = new_figure(width, 6.2)
    top, bottom = fig.subplots(2, 1, sharex=True)
    if n <= 10:
        colors: list[Any] = [f"C{i}" for i in range(n)]
    else:   # the full profile's longer method lists: 20 distinct colours before any repeats
        from matplotlib import colormaps

        colors = [colormaps["tab20"](i % 20) for i in range(n)]
    limits = [_finite((((results["audits"][t] or {}).get("audit_config") or {}).get("fields") or {})
                      .get("max_utility_drop")) for t in threats]
    panels = ((top, "mitigation_pct", (-100.0, 150.0), (-10.0, 110.0)),
              (bottom, "utility_drop_pct", (-100.0, 100.0), (-20.0, 20.0)))
    for ax, key, (floor, ceiling), (low_default, high_default) in panels:
        points: list[tuple[float, float, float, float, int]] = []   # x, value, low, high, method index
        missing: list[float] = []
        for g, threat in enumerate(threats):
            rows = {r.get("label"): r for r in (results["audits"][threat] or {}).get("rows", [])}
            for i, method in enumerate(methods):
                if method not in rows:
                    continue
                x = g + (i - (n - 1) / 2) * slot
                value, low, high = interval_triplet(rows[method].get(key))
                if math.isnan(value):
                    missing.append(x)
                else:
                    points.append((x, value, low, high, i))
        extent = [v for _, value, low, high, _ in points for v in (value, low, high) if not math.isnan(v)]
        if ax is bottom:
            extent += [v + 5 for v in limits if not math.isnan(v)]
        y_low = max(floor, min([low_default, *[v - 5 for v in extent]]))
        y_high = min(ceiling, max([high_default, *[v + 5 for v in extent]]))
        for x, value, low, high, i in points:
            shown = min(max(value, y_low), y_high)
            ax.bar([x], [shown], slot * 0.9, color=colors[i], edgecolor="none")
            ax.plot([x - slot * 0.45, x + slot * 0.45], [shown, shown], color=colors[i], lw=2.5,
                    solid_capstyle="butt")   # a value of exactly 0 still shows as a coloured line
            if not math.isnan(low):
                ax.errorbar([x], [value], yerr=[[value - low], [high - value]], fmt="none", ecolor="#222",
                            elinewidth=0.9, capsize=2)
            if shown != value:   # clipped at the axis: the value is written inside the axis, at the clipped end
                ax.annotate(f"{value:.0f}", (x, shown), xytext=(0, -3 if value > shown else 3),
                            textcoords="offset points", ha="center", va="top" if value > shown else "bottom",
                            fontsize=6.5, rotation=90, bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                                             "ec": "none", "alpha": 0.85})
        for x in missing:
            ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=6.5, rotation=90, color="#666")
        ax.set_ylim(y_low, y_high)
        ax.axhline(0, color="#444", lw=0.8)
        for g in range(1, len(threats)):
            ax.axvline(g - 0.5, color="#ddd", lw=0.8)
        ax.grid(axis="y", color="#eee", lw=0.6)
        ax.set_axisbelow(True)
    top.axhline(100, color="tab:green", ls=":", lw=1, label="100% = back to the aligned base")
    top.set_ylabel("mitigation (% of attack removed)")
    top.set_title("Mitigation: share of the fine-tune's attack removed (higher is safer)", fontsize=10)
    labelled = False
    for g, limit in enumerate(limits):
        if not math.isnan(limit):
            bottom.plot([g - 0.46, g + 0.46], [limit, limit], color="tab:red", ls="--", lw=1,
                        label=None if labelled else "utility-drop limit (audit setting)")
            labelled = True
    bottom.set_ylabel("utility drop (% of fine-tune's)")
    bottom.set_title("Utility drop relative to the fine-tune (lower is better)", fontsize=10)
    bottom.set_xticks(range(len(threats)), [_THREAT_NAMES.get(t, t) for t in threats])
    bottom.set_xlim(-0.5, len(threats) - 0.5)
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[i], label=m) for i, m in enumerate(methods)]
    handles += [h for ax in (top, bottom) for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(4, len(handles)), fontsize=7.5, frameon=False)
    return to_png(fig)


def alignment_bars(results: dict[str, Any]) -> bytes:
    """Original vs aligned model: refusal, over-refusal and task accuracy with 95% CIs."""
    alignment = results["alignment"]
    names = [("refusal", "refusal (harmful)"), ("over_refusal", "over-refusal (benign)"),
             ("task_accuracy", "task accuracy")]
    fig = new_figure(6.4, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    for offset, label in ((-width / 2, "original"), (width / 2, "aligned")):
        values = [100 * alignment[label][n]["value"] for n, _ in names]
        errors = [_err(alignment[label][n]) for n, _ in names]
        lows, highs = [e[0][0] for e in errors], [e[1][0] for e in errors]
        ax.bar([i + offset for i in range(len(names))], values, width, yerr=[lows, highs], capsize=3, label=label)
    ax.set_xticks(range(len(names)), [t for _, t in names])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    return to_png(fig)


def training_losses(results: dict[str, Any]) -> bytes | None:
    attacks = results.get("attacks", {})
    if not attacks:
        return None
    fig = new_figure(6.4, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    for name, record in attacks.items():
        ax.plot(range(1, len(record["losses"]) + 1), record["losses"], label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss on reply tokens")
    ax.legend(fontsize=8)
    return to_png(fig)


__all__ = ["THREAT_ORDER", "alignment_bars", "attack_vs_bits", "bitdelta_passes", "fidelity_sweep", "headline",
           "headline_methods", "headline_threats", "interval_triplet", "training_losses", "utility_vs_attack"]
