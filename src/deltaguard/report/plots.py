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


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Any) -> bytes:
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
    fig = _figure(5.2 * n_cols, 3.6 * n_rows)
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
    return _png(fig)


def utility_vs_attack(results: dict[str, Any]) -> bytes:
    """Per threat: utility (task accuracy) against the attack metric for every model, with 95% CIs."""
    audits = results["audits"]
    n_rows, n_cols = _grid(len(audits))
    fig = _figure(5.2 * n_cols, 3.6 * n_rows)
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
    return _png(fig)


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
    fig = _figure(6.4, 4.0)
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
    return _png(fig)


def alignment_bars(results: dict[str, Any]) -> bytes:
    """Original vs aligned model: refusal, over-refusal and task accuracy with 95% CIs."""
    alignment = results["alignment"]
    names = [("refusal", "refusal (harmful)"), ("over_refusal", "over-refusal (benign)"),
             ("task_accuracy", "task accuracy")]
    fig = _figure(6.4, 3.4)
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
    return _png(fig)


def training_losses(results: dict[str, Any]) -> bytes | None:
    attacks = results.get("attacks", {})
    if not attacks:
        return None
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    for name, record in attacks.items():
        ax.plot(range(1, len(record["losses"]) + 1), record["losses"], label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss on reply tokens")
    ax.legend(fontsize=8)
    return _png(fig)


__all__ = ["alignment_bars", "attack_vs_bits", "bitdelta_passes", "fidelity_sweep", "training_losses",
           "utility_vs_attack"]
