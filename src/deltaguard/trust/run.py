"""``run_trust``: compress one model many ways and score every trust dimension of every variant.

Inside the run directory (every step keyed by its inputs, so a rerun does no work and an interrupted
run resumes — the generation and judgment caches are the evaluation core's ``Runner``):

    quantized/<key>/    calibrated whole-model quantizations (GPTQ, AWQ), saved once (the audit's layout)
    deltas/<key>/       compressed deltas, when the sweep has a base
    evals/<key>/        one variant's ``results.json`` (every dimension's records)
    generations/, judgments/, choices/   the Runner's caches
    trust.json, trust.md, trust.png      the table, the flags and the heatmap (rewritten on every run)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from deltaguard.audit import AuditConfig, Sweep
from deltaguard.errors import ConfigError
from deltaguard.eval import ModelDir, ModelSource, Runner, Variant, evaluate
from deltaguard.io import content_key, read_json, write_json
from deltaguard.steps import Steps
from deltaguard.trust.config import TrustConfig

REFERENCE = "uncompressed"


@dataclass
class TrustRow:
    """One evaluated variant: what it is, its compression record and every metric record (as dicts)."""

    label: str
    kind: str                   # reference | base | whole-model | delta
    seed: int | None
    model_key: str
    compression: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "seed": self.seed, "model_key": self.model_key,
                "compression": self.compression, "metrics": self.metrics}


def is_seeded(spec: str, config: AuditConfig) -> bool:
    """Whether a method draws calibration data (so its seed matters): GPTQ, AWQ, Wanda, SparseGPT and
    distilled BitDelta do; RTN, magnitude pruning and k-bit deltas do not."""
    from deltaguard.transforms import is_transform_spec

    if is_transform_spec(spec):
        transform = config.transform_config(spec)
        return hasattr(transform, "seed") and getattr(transform, "uses_data", True) and hasattr(transform, "n_calib")
    return bool(config.method_config(spec).needs_calibration)


def sweep_config(config: TrustConfig, seed: int) -> AuditConfig:
    """The audit-side settings that build the variants of one seed (calibration seeds of every method)."""
    from deltaguard.transforms import is_transform_spec

    plain = AuditConfig(methods=config.methods, seed=seed, method_overrides=config.method_overrides)
    names = sorted({plain.transform_config(s).name for s in config.methods
                    if is_transform_spec(s) and is_seeded(s, plain)})
    return AuditConfig(methods=config.methods, seed=seed,
                       method_overrides=(*config.method_overrides, *(f"{n}.seed={seed}" for n in names)))


def check_methods(config: TrustConfig, *, has_base: bool) -> None:
    """Every spec is known; delta compressors need a base (they compress the model's difference from it)."""
    from deltaguard.transforms import is_transform_spec

    if not config.methods:
        return                            # only the model itself is scored
    AuditConfig(methods=config.methods, method_overrides=config.method_overrides)   # unknown specs raise here
    deltas = [s for s in config.methods if not is_transform_spec(s)]
    if deltas and not has_base:
        raise ConfigError(f"{', '.join(deltas)} compress a delta: give --base (the model the fine-tune was made from), "
                          "or use whole-model methods only")


def run_trust(model: str | Path | ModelSource, config: TrustConfig = TrustConfig(), *, run_dir: str | Path,
              base: str | Path | None = None, device: str = "cpu", dtype: str = "float32", progress: bool = True,
              log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Evaluate ``model`` and every compression of it on every dimension; write ``trust.json/.md/.png``.

    With ``base``, ``model`` is a fine-tune of it: delta compressors compress (model − base) and the base
    itself is evaluated too, so delta-only and whole-model compression sit in one table. ``model`` may be
    an ``eval.Endpoint`` (a model served over HTTP): its weights are not here, so ``config.methods`` must be
    empty and there is no base — the table holds that one model.
    """
    from deltaguard.trust.summary import summarise, write_outputs

    started = time.perf_counter()
    run_dir = Path(run_dir)
    dense = model if isinstance(model, ModelSource) else ModelDir(model)
    if not dense.has_weights and (config.methods or base is not None):
        raise ConfigError("a model behind an endpoint cannot be compressed (its weights are not here): "
                          "use trust.methods=() and no base")
    check_methods(config, has_base=base is not None)
    steps = Steps(log)
    if "guard" in config.judges:
        from deltaguard.study.judges_step import ensure_guard

        ensure_guard(steps, AuditConfig(harm_judge="guard"), device=device, progress=progress, log=log)
    eval_config = config.eval_config()
    # the judges' identities key each evaluation too: a rebuilt guard (other weights, threshold) re-judges
    # the cached replies instead of reusing numbers the old one produced
    from deltaguard.judges import judge_from_overrides

    judge_ids = {name: judge_from_overrides(name, eval_config.options_for(name)).prompt_hash for name in config.judges}
    runner = Runner(run_dir, device=device, dtype=dtype, progress=progress)
    base_src = ModelDir(base) if base is not None else None

    def evaluated(variant: Variant, kind: str, seed: int | None) -> TrustRow:
        key = content_key("trust-eval", {"model": variant.key, "eval": eval_config.to_dict(), "dtype": dtype,
                                         "judges": judge_ids})
        out = run_dir / "evals" / key
        steps.run(f"evaluate {variant.label}" + (f" (seed {seed})" if seed is not None else ""), out / "results.json",
                  lambda: evaluate(variant, eval_config, out_dir=out, runner=runner, progress=progress))
        results = read_json(out / "results.json", what="evaluation results")
        return TrustRow(variant.label, kind, seed, variant.key, dict(variant.record), results["metrics"])

    rows = [evaluated(Variant(REFERENCE, "reference", dense), "reference", None)]
    if base_src is not None:
        rows.append(evaluated(Variant("base", "base", base_src), "base", None))
    for seed in config.seeds if config.methods else ():
        audit_config = sweep_config(config, seed)
        sweep = Sweep(base_src or dense, dense, audit_config, run_dir, device=device, progress=progress, steps=steps,
                      before_compress=runner.release)
        for spec in config.methods:
            seeded = is_seeded(spec, audit_config)
            if not seeded and seed != config.seeds[0]:
                continue      # data-free: one run stands for every seed
            variant = sweep.variant(spec)
            kind = "whole-model" if variant.role == "transformed" else "delta"
            rows.append(evaluated(variant, kind, seed if seeded else None))
    runner.release()
    summary = summarise(rows, config)
    described = {"endpoint": dense.describe()} if not dense.has_weights else {}
    name = f"{dense.model_name} @ {dense.base_url}" if described else str(model)   # type: ignore[attr-defined]
    result = {"model": name, **described, "base": str(base) if base is not None else None, "config": config.to_dict(),
              "rows": [r.to_dict() for r in rows], "summary": summary, "timings": steps.timings,
              "seconds": round(time.perf_counter() - started, 1), "n_steps_run": steps.n_run}
    write_outputs(result, run_dir)
    write_json(run_dir / "trust.json", result)
    return result


def rerender_trust(run_dir: str | Path) -> dict[str, Any]:
    """Rebuild the table, flags, claims and plot of a finished sweep from its ``trust.json`` (no model runs):
    the numbers are cached, their summary is recomputed by the current code."""
    from deltaguard.trust.summary import summarise, write_outputs

    run_dir = Path(run_dir)
    result = read_json(run_dir / "trust.json", what="trust results")
    try:
        config = TrustConfig.from_dict(result["config"])
        rows = [TrustRow(**row) for row in result["rows"]]
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{run_dir / 'trust.json'} is not a trust sweep's result ({exc})") from None
    result["summary"] = summarise(rows, config)
    write_outputs(result, run_dir)
    write_json(run_dir / "trust.json", result)
    return result


__all__ = ["REFERENCE", "TrustRow", "check_methods", "is_seeded", "rerender_trust", "run_trust", "sweep_config"]
