"""Lens plots (matplotlib, Agg, no pyplot state): top-token heatmap, margin curves, margin heatmap.

``save_all(result, out_dir)`` writes every plot and returns the paths, for the CLI and the report.
"""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import numpy as np

from deltaguard.errors import ConfigError
from deltaguard.io import atomic_write
from deltaguard.lens.result import LensResult

_DPI = 120


@functools.lru_cache(maxsize=1)
def _font_chars() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    return frozenset(FT2Font(path).get_charmap())


def label_text(text: str, max_chars: int = 10) -> str:
    """A token as a short, drawable label: whitespace made visible, glyphs the font lacks escaped."""
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if text.startswith(" "):
        text = "␣" + text[1:] if ord("␣") in _font_chars() else "_" + text[1:]
    chars = _font_chars()
    text = "".join(c if ord(c) in chars and c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    text = text.replace("$", r"\$")  # matplotlib mathtext
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    with atomic_write(path, "wb", encoding=None) as handle:
        handle.write(buffer.getvalue())
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60] or "model"


def plot_top_tokens(result: LensResult, path: str | Path, *, model: str | None = None,
                    prompt_id: str | None = None) -> Path:
    """Layer × position heatmap for one prompt: the top-1 token in each cell, coloured by its probability."""
    from matplotlib.figure import Figure

    model = model or result.models[0]
    if model not in result.models:
        raise ConfigError(f"lens result has no model {model!r}; models: {', '.join(result.models)}")
    details = result.detail_prompt_ids(model)
    prompt_id = prompt_id or (details[0] if details else result.prompt_ids[0])
    records = [r for r in result.records if r.model == model and r.prompt_id == prompt_id]
    if not records:
        raise ConfigError(f"lens result has no records for prompt {prompt_id!r}")
    positions = sorted({r.position for r in records})
    site_index = {s: i for i, s in enumerate(result.sites)}
    col_index = {p: j for j, p in enumerate(positions)}
    probs = np.full((len(result.sites), len(positions)), np.nan)
    labels = [["" for _ in positions] for _ in result.sites]
    inputs = {}
    for r in records:
        i, j = site_index[r.site], col_index[r.position]
        probs[i, j] = float(np.exp(r.top_log_probs[0]))
        labels[i][j] = label_text(r.top_tokens[0], 8)
        inputs[r.position] = label_text(r.input_token, 10)
    height = 1.2 + 0.28 * len(result.sites)
    width = 2.5 + 0.85 * len(positions)
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    image = ax.imshow(probs, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0)
    font = 7 if len(positions) > 6 else 8
    for i in range(len(result.sites)):
        for j in range(len(positions)):
            if labels[i][j]:
                colour = "black" if probs[i, j] > 0.6 else "white"
                ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=font, color=colour)
    ax.set_yticks(range(len(result.sites)), [_short_site(s) for s in result.sites], fontsize=7)
    ax.set_xticks(range(len(positions)), [inputs[p] for p in positions], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("input token (the cell shows the next token predicted after it)")
    ax.set_ylabel("site")
    prompt = result.prompts[result.prompt_ids.index(prompt_id)]
    ax.set_title(f"{label_text(model, 40)}: top token per layer — {label_text(prompt, 60)}", fontsize=9)
    fig.colorbar(image, ax=ax, label="p(top token)", fraction=0.04)
    return _save(fig, Path(path))


def _short_site(site: str) -> str:
    if site == "layers.0.resid_pre":
        return "embed"
    return site.replace("layers.", "L").replace(".resid_post", "").replace(".resid_", ".").replace("_out", "")


def plot_margin_curves(result: LensResult, path: str | Path) -> Path:
    """Mean refusal margin vs layer at the answer position, one line per model, 95% CI bands."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    curves = result.curves()
    for model in result.models:
        rows = [c for c in curves if c.model == model]
        depth = np.array([c.depth for c in rows])
        mean = np.array([c.margin_mean for c in rows])
        ax.plot(depth, mean, marker="o", markersize=2.5, linewidth=1.4, label=label_text(model, 40))
        ax.fill_between(depth, [c.margin_low for c in rows], [c.margin_high for c in rows], alpha=0.2)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("layer (0 = embeddings, i = after decoder layer i-1)")
    ax.set_ylabel("log p(refusal) − log p(compliance)")
    ax.set_title(f"Refusal margin at the answer position (n={len(result.prompt_ids)} prompts, 95% CI)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_margin_heatmap(result: LensResult, path: str | Path) -> Path:
    """Model × layer heatmap of the mean refusal margin (red: refusal favoured, blue: compliance)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    means = np.array([result.margins(model).mean(axis=0) for model in result.models])  # [models, sites]
    limit = float(np.abs(means).max()) or 1.0
    fig = Figure(figsize=(2.5 + 0.28 * len(result.sites), 1.4 + 0.45 * len(result.models)))
    ax = fig.subplots()
    image = ax.imshow(means, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit))
    ax.set_yticks(range(len(result.models)), [label_text(m, 30) for m in result.models], fontsize=8)
    ax.set_xticks(range(len(result.sites)), [_short_site(s) for s in result.sites], rotation=90, fontsize=7)
    ax.set_xlabel("site")
    ax.set_title("Mean refusal margin per model and layer", fontsize=10)
    fig.colorbar(image, ax=ax, label="mean margin", fraction=0.03)
    return _save(fig, Path(path))


def save_all(result: LensResult, out_dir: str | Path) -> list[Path]:
    """Every lens plot into ``out_dir``: margin curves, margin heatmap, one top-token heatmap per model."""
    out_dir = Path(out_dir)
    paths = [plot_margin_curves(result, out_dir / "margin_curves.png"),
             plot_margin_heatmap(result, out_dir / "margin_heatmap.png")]
    for index, model in enumerate(result.models):
        paths.append(plot_top_tokens(result, out_dir / f"top_tokens_{index}_{_slug(model)}.png", model=model))
    return paths
