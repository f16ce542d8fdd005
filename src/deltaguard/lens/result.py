"""``LensResult``: what a lens run measured, its aggregates over prompts, and its CSV/JSON files.

Records hold one decoded row each (model × prompt × position × site). Aggregates are computed from
the records at the *answer position* (the last prompt token, where the first answer token is
predicted): mean refusal margin per model and layer with bootstrap 95% CIs, the first layer where
the margin turns positive, and paired differences between models on the same prompts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from deltaguard.errors import ConfigError, FormatError
from deltaguard.io import atomic_write, read_json, write_json
from deltaguard.lens.measure import bootstrap_mean_ci, first_positive, settled_positive
from deltaguard.lens.tokens import TokenSet

if TYPE_CHECKING:
    from deltaguard.lens.config import LensConfig

FORMAT = "deltaguard-lens"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LensRecord:
    """One decoded residual: ``position`` counts real prompt tokens from 0; ``input_token`` is the token there."""

    model: str
    prompt_id: str
    position: int
    is_answer_position: bool
    input_token: str
    site: str
    depth: float
    top_ids: tuple[int, ...]
    top_tokens: tuple[str, ...]
    top_log_probs: tuple[float, ...]
    log_probs: dict[str, float]  # token set name → log p(set)
    ranks: dict[str, int]  # token set name → rank of the set's best token (1 = top)
    margin: float  # log p(refusal) − log p(compliance)


@dataclass(frozen=True)
class LensCheck:
    """The built-in checks for one model: worst absolute differences seen over all batches."""

    model: str
    n_layers: int
    final_norm_path: str
    head_path: str
    is_tied: bool
    dtype: str
    last_layer_max_abs_diff: float
    hidden_state_max_abs_diff: float | None  # None: the model returned no comparable hidden states


@dataclass(frozen=True)
class MarginCurve:
    """Mean over prompts at one (model, site), with a 95% bootstrap CI for the margin."""

    model: str
    site: str
    depth: float
    n: int
    margin_mean: float
    margin_low: float
    margin_high: float
    frac_positive: float
    mean_log_probs: dict[str, float]


@dataclass(frozen=True)
class FirstPositive:
    """Per (model, prompt): the first site with margin > 0 and the site from which it stays > 0."""

    model: str
    prompt_id: str
    first_site: str | None
    first_depth: float | None
    settled_site: str | None
    settled_depth: float | None
    final_margin: float
    final_top_token: str


@dataclass(frozen=True)
class Comparison:
    """Paired difference (model − reference) of the mean margin at one site, same prompts, 95% CI."""

    model: str
    reference: str
    site: str
    depth: float
    n: int
    diff_mean: float
    diff_low: float
    diff_high: float


@dataclass(frozen=True)
class ModelSummary:
    """Per model, at the last site: mean margin and the share of prompts whose margin is > 0 (CIs)."""

    model: str
    n: int
    final_margin_mean: float
    final_margin_low: float
    final_margin_high: float
    frac_refusal_favoured: float
    frac_refusal_favoured_low: float
    frac_refusal_favoured_high: float
    mean_first_positive_depth: float | None
    n_ever_positive: int


@dataclass(frozen=True)
class LensResult:
    """Everything one ``logit_lens`` call measured (see the module doc for what is aggregated)."""

    config: "LensConfig"
    models: tuple[str, ...]
    sites: tuple[str, ...]
    depths: tuple[float, ...]
    prompt_ids: tuple[str, ...]
    prompts: tuple[str, ...]
    token_sets: tuple[TokenSet, ...]
    checks: tuple[LensCheck, ...]
    records: tuple[LensRecord, ...]
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ---- lookups -------------------------------------------------------------------------------
    @cached_property
    def _answer(self) -> dict[tuple[str, str, str], LensRecord]:
        return {(r.model, r.prompt_id, r.site): r for r in self.records if r.is_answer_position}

    def _model(self, model: str) -> str:
        if model not in self.models:
            raise ConfigError(f"lens result has no model {model!r}; models: {', '.join(self.models)}")
        return model

    def answer_record(self, model: str, prompt_id: str, site: str) -> LensRecord:
        return self._answer[(self._model(model), prompt_id, site)]

    def margins(self, model: str) -> np.ndarray:
        """Refusal margin at the answer position: [n_prompts, n_sites] in ``sites`` order."""
        self._model(model)
        return np.array([[self._answer[(model, p, s)].margin for s in self.sites] for p in self.prompt_ids])

    def log_probs(self, model: str, token_set: str) -> np.ndarray:
        """log p(token set) at the answer position: [n_prompts, n_sites]."""
        self._model(model)
        return np.array([[self._answer[(model, p, s)].log_probs[token_set] for s in self.sites]
                         for p in self.prompt_ids])

    def detail_prompt_ids(self, model: str) -> tuple[str, ...]:
        """Prompts recorded at more than the answer position (for the top-token heatmap)."""
        seen = {r.prompt_id for r in self.records if r.model == model and not r.is_answer_position}
        return tuple(p for p in self.prompt_ids if p in seen)

    # ---- aggregates ----------------------------------------------------------------------------
    def curves(self) -> tuple[MarginCurve, ...]:
        rows = []
        for model in self.models:
            margins = self.margins(model)
            mean, low, high = bootstrap_mean_ci(margins, n_boot=self.config.n_bootstrap, seed=self.config.seed)
            set_means = {ts.name: self.log_probs(model, ts.name).mean(axis=0) for ts in self.token_sets}
            for j, (site, depth) in enumerate(zip(self.sites, self.depths)):
                rows.append(MarginCurve(model, site, depth, len(self.prompt_ids), float(mean[j]), float(low[j]),
                                        float(high[j]), float((margins[:, j] > 0).mean()),
                                        {name: float(v[j]) for name, v in set_means.items()}))
        return tuple(rows)

    def first_positive(self) -> tuple[FirstPositive, ...]:
        rows = []
        last = self.sites[-1]
        for model in self.models:
            for prompt_id, margins in zip(self.prompt_ids, self.margins(model)):
                first, settled = first_positive(margins), settled_positive(margins)
                final = self._answer[(model, prompt_id, last)]
                rows.append(FirstPositive(
                    model, prompt_id,
                    None if first is None else self.sites[first], None if first is None else self.depths[first],
                    None if settled is None else self.sites[settled],
                    None if settled is None else self.depths[settled],
                    float(margins[-1]), final.top_tokens[0],
                ))
        return tuple(rows)

    def comparisons(self, reference: str | None = None) -> tuple[Comparison, ...]:
        """Each model against ``reference`` (default: the first model), paired over prompts."""
        reference = self._model(reference or self.models[0])
        base = self.margins(reference)
        rows = []
        for model in self.models:
            if model == reference:
                continue
            diff = self.margins(model) - base
            mean, low, high = bootstrap_mean_ci(diff, n_boot=self.config.n_bootstrap, seed=self.config.seed)
            for j, (site, depth) in enumerate(zip(self.sites, self.depths)):
                rows.append(Comparison(model, reference, site, depth, diff.shape[0], float(mean[j]), float(low[j]),
                                       float(high[j])))
        return tuple(rows)

    def summaries(self) -> tuple[ModelSummary, ...]:
        rows = []
        firsts = self.first_positive()
        for model in self.models:
            final = self.margins(model)[:, -1]
            mean, low, high = bootstrap_mean_ci(final, n_boot=self.config.n_bootstrap, seed=self.config.seed)
            pos = (final > 0).astype(float)
            fmean, flow, fhigh = bootstrap_mean_ci(pos, n_boot=self.config.n_bootstrap, seed=self.config.seed)
            depths = [f.first_depth for f in firsts if f.model == model and f.first_depth is not None]
            rows.append(ModelSummary(model, len(final), float(mean[0]), float(low[0]), float(high[0]),
                                     float(fmean[0]), float(flow[0]), float(fhigh[0]),
                                     float(np.mean(depths)) if depths else None, len(depths)))
        return tuple(rows)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self, *, with_records: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config.to_dict(),
            "models": list(self.models), "sites": list(self.sites), "depths": list(self.depths),
            "prompt_ids": list(self.prompt_ids), "prompts": list(self.prompts),
            "token_sets": [ts.to_dict() for ts in self.token_sets],
            "checks": [dataclasses.asdict(c) for c in self.checks], "source": self.source,
            "summaries": [dataclasses.asdict(s) for s in self.summaries()],
            "curves": [dataclasses.asdict(c) for c in self.curves()],
            "first_positive": [dataclasses.asdict(f) for f in self.first_positive()],
            "comparisons": [dataclasses.asdict(c) for c in self.comparisons()],
        }
        if with_records:
            data["records"] = [dataclasses.asdict(r) for r in self.records]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LensResult":
        from deltaguard.lens.config import LensConfig

        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise FormatError(f"not a {FORMAT} v{FORMAT_VERSION} result (format={data.get('format')!r}, "
                              f"version={data.get('format_version')!r})")
        if "records" not in data:
            raise FormatError("lens result was saved without records; it cannot be reloaded")
        records = tuple(
            LensRecord(**{**r, "top_ids": tuple(r["top_ids"]), "top_tokens": tuple(r["top_tokens"]),
                          "top_log_probs": tuple(r["top_log_probs"])}) for r in data["records"]
        )
        return cls(
            config=LensConfig.from_dict(data["config"]), models=tuple(data["models"]), sites=tuple(data["sites"]),
            depths=tuple(data["depths"]), prompt_ids=tuple(data["prompt_ids"]), prompts=tuple(data["prompts"]),
            token_sets=tuple(TokenSet.from_dict(t) for t in data["token_sets"]),
            checks=tuple(LensCheck(**c) for c in data["checks"]), records=records, source=data.get("source", {}),
        )

    def to_json(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    def to_csv(self, out_dir: str | Path) -> list[Path]:
        """records.csv, curves.csv, first_positive.csv, comparisons.csv, summary.csv (atomic each)."""
        out_dir = Path(out_dir)
        set_names = [ts.name for ts in self.token_sets]
        record_rows = [
            {"model": r.model, "prompt_id": r.prompt_id, "position": r.position,
             "is_answer_position": r.is_answer_position, "input_token": r.input_token, "site": r.site,
             "depth": r.depth, "margin": r.margin,
             **{f"logp_{n}": r.log_probs[n] for n in set_names}, **{f"p_{n}": float(np.exp(r.log_probs[n]))
                                                                    for n in set_names},
             **{f"rank_{n}": r.ranks[n] for n in set_names},
             "top_tokens": " | ".join(r.top_tokens), "top_probs": " | ".join(f"{np.exp(v):.4f}" for v in r.top_log_probs)}
            for r in self.records
        ]
        curve_rows = [{k: v for k, v in dataclasses.asdict(c).items() if k != "mean_log_probs"}
                      | {f"mean_logp_{n}": c.mean_log_probs[n] for n in set_names} for c in self.curves()]
        tables = {
            "records.csv": record_rows, "curves.csv": curve_rows,
            "first_positive.csv": [dataclasses.asdict(f) for f in self.first_positive()],
            "comparisons.csv": [dataclasses.asdict(c) for c in self.comparisons()],
            "summary.csv": [dataclasses.asdict(s) for s in self.summaries()],
        }
        paths = []
        for name, rows in tables.items():
            paths.append(_write_csv(out_dir / name, rows))
        return paths

    def save(self, out_dir: str | Path) -> list[Path]:
        """``lens.json`` plus the CSV tables in ``out_dir``; returns the paths written."""
        out_dir = Path(out_dir)
        return [self.to_json(out_dir / "lens.json"), *self.to_csv(out_dir)]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))  # RFC 4180: \r\n, quotes any \r or \n
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())
    return path


def load_result(path: str | Path) -> LensResult:
    """Reload a saved ``lens.json`` (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "lens.json"
    return LensResult.from_dict(read_json(path, what="lens result"))


def merge_results(results: Sequence[LensResult]) -> LensResult:
    """One result over several models measured separately on the same prompts, sites and settings."""
    if not results:
        raise ConfigError("merge_results needs at least one lens result")
    first = results[0]
    models: list[str] = []
    for result in results:
        for attr in ("config", "sites", "prompt_ids", "token_sets"):
            if getattr(result, attr) != getattr(first, attr):
                raise ConfigError(f"lens results differ in {attr} ({result.models} vs {first.models}); "
                                  "only results on the same prompts, sites and token sets can be compared")
        for model in result.models:
            if model in models:
                raise ConfigError(f"model label {model!r} appears in two lens results; labels must be unique")
            models.append(model)
    return dataclasses.replace(
        first, models=tuple(models), checks=tuple(c for r in results for c in r.checks),
        records=tuple(rec for r in results for rec in r.records),
    )
