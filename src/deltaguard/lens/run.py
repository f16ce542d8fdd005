"""The lens over model specs (base models and base + delta, loaded one at a time) and its output directory.

This is what ``deltaguard lens`` calls: ``read_prompts`` → ``lens_models`` → ``save_lens_dir``.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from deltaguard.errors import ConfigError
from deltaguard.io import atomic_dir, read_text_lines
from deltaguard.lens.api import logit_lens
from deltaguard.lens.config import LensConfig
from deltaguard.lens.result import LensResult, merge_results


@dataclass(frozen=True)
class LensModel:
    """One model to read: ``model`` is a model spec; with ``delta`` the delta is merged into it in memory."""

    label: str
    model: str
    delta: str | None = None


def _spec_label(spec: str) -> str:
    return Path(spec.rstrip("/")).name or spec


def plan_models(models: Sequence[str], deltas: Sequence[str]) -> tuple[LensModel, ...]:
    """Every ``--model`` as is, then the first model plus each ``--delta``; labels made unique."""
    if not models:
        raise ConfigError("lens needs at least one model")
    for delta in deltas:
        if not Path(delta).expanduser().is_dir():
            raise ConfigError(f"delta {delta} is not a directory (expected a compressed delta saved by deltaguard)")
    plan = [LensModel(_spec_label(m), m) for m in models]
    plan += [LensModel(f"{_spec_label(models[0])}+{_spec_label(d)}", models[0], d) for d in deltas]
    seen: dict[str, int] = {}
    unique = []
    for item in plan:
        seen[item.label] = seen.get(item.label, 0) + 1
        label = item.label if seen[item.label] == 1 else f"{item.label}#{seen[item.label]}"
        unique.append(dataclasses.replace(item, label=label))
    return tuple(unique)


def read_prompts(spec: str, *, limit: int | None = None, seed: int = 0) -> Any:
    """A ``.txt`` file (one prompt per line, first ``limit`` lines) or anything ``deltaguard.data`` loads."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit} must be >= 1")
    path = Path(spec).expanduser()
    if path.suffix == ".txt" or (path.is_file() and path.suffix == ""):
        lines = read_text_lines(path, what="prompt file")
        return lines[:limit] if limit is not None else lines
    from deltaguard.data import load_prompts

    return load_prompts(spec, limit=limit, seed=seed)


def _load(item: LensModel, dtype: str, device: str) -> tuple[Any, Any]:
    from deltaguard.models import load_model, load_tokenizer

    model = load_model(item.model, dtype=dtype, device=device)
    tokenizer = load_tokenizer(item.model)
    if item.delta is not None:
        from deltaguard.delta import apply_delta_, load_delta
        delta = load_delta(item.delta)
        apply_delta_(model, delta)
        tokenizer_dir = getattr(delta, "tokenizer_dir", None)
        if tokenizer_dir is not None:
            tokenizer = load_tokenizer(tokenizer_dir)
    return model.eval(), tokenizer


def lens_models(models: Sequence[LensModel], prompts: Any, config: LensConfig = LensConfig(), *,
                dtype: str = "float32", device: str = "cpu") -> LensResult:
    """Load each model in turn (base + delta merged in memory), run the lens, free it; one merged result."""
    if not models:
        raise ConfigError("lens needs at least one model")
    results = []
    for item in models:
        model, tokenizer = _load(item, dtype, device)
        try:
            results.append(logit_lens(model, tokenizer, prompts, config, label=item.label))
        finally:
            del model
            gc.collect()
    merged = merge_results(results)
    provenance = {item.label: {"model": item.model, "delta": item.delta} for item in models}
    return dataclasses.replace(merged, source={**merged.source, "models": provenance})


def save_lens_dir(result: LensResult, out_dir: str | Path, *, overwrite: bool = False,
                  plots: bool = True) -> list[Path]:
    """Write lens.json, the CSV tables and (optionally) the plots; the directory appears only when complete."""
    from deltaguard.lens.plots import save_all

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"output directory {out_dir} already exists (pass --overwrite or choose another -o)")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        written = result.save(tmp)
        if plots:
            written += save_all(result, tmp)
    return [out_dir / p.name for p in written]
