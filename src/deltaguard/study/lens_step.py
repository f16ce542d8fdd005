"""The study's logit-lens step: where refusal forms in the aligned base, the fine-tune and one compressed
variant, on held-out prompts of the threat (cached under ``lens/<key>/``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from deltaguard.audit import AuditResult
from deltaguard.io import atomic_dir, content_key, read_json, write_json
from deltaguard.steps import Steps
from deltaguard.threats import ThreatConfig, get_threat

# Threats whose refusal the logit lens follows, and the evaluation set it reads.
LENS_SETS = {"harmful": "harmful", "backdoor": "triggered"}


def lens_step(steps: Steps, threat: ThreatConfig, audit_result: AuditResult, aligned_dir: Path, ft_dir: Path,
              run_dir: Path, *, align_key: str, n_prompts: int, variant: str | None,
              device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    """Logit lens on the aligned base, the fine-tune, the audit row ``variant`` (when it is a delta) and every
    saved whole-model quantization of the audit (Q-realign, OmniQuant)."""
    prompt_set = get_threat(threat.name).eval_sets(threat, n_prompts=n_prompts, seed=audit_result.config.seed)[
        LENS_SETS[threat.name]]
    rows = {r.label: r for r in audit_result.rows}
    delta_key = rows[variant].compression.get("delta_key") if variant in rows else None
    models = {"aligned base": align_key, "fine-tune": rows["finetuned"].model_key}
    if delta_key:
        models[str(variant)] = delta_key
    # saved whole-model quantizations (Q-realign and its OmniQuant ablation): does realignment bring the
    # refusal margin back?
    quantized = {r.label: r.model_key for r in audit_result.rows
                 if r.role == "transformed" and (run_dir / "quantized" / r.model_key / "quantized.json").is_file()}
    models.update(quantized)
    key = content_key("lens", {"models": models, "set": prompt_set.content_hash, "version": 1,
                               **({"dtype": dtype} if dtype != "float32" else {})})
    out_dir = run_dir / "lens" / key

    def work() -> None:
        from deltaguard.lens import LensConfig
        from deltaguard.lens.plots import save_all
        from deltaguard.lens.run import LensModel, lens_models

        plan = [LensModel("aligned base", str(aligned_dir)), LensModel("fine-tune", str(ft_dir))]
        if delta_key:
            plan.append(LensModel(str(variant), str(aligned_dir), str(run_dir / "deltas" / delta_key)))
        plan.extend(LensModel(label, str(run_dir / "quantized" / key)) for label, key in quantized.items())
        # one model at a time (three 135M models at once held 1.6 GB); the results are merged as one
        result = lens_models(plan, prompt_set, LensConfig(n_bootstrap=500), dtype=dtype, device=device)
        with atomic_dir(out_dir) as tmp:
            result.save(tmp)
            save_all(result, tmp / "plots")
            write_json(tmp / "summary.json", {"summaries": [dataclasses.asdict(s) for s in result.summaries()]})

    steps.run(f"lens {threat.name}", out_dir, work)
    return {"dir": str(out_dir.relative_to(run_dir)), "set": prompt_set.describe(), "models": models,
            "summaries": read_json(out_dir / "summary.json", what="lens summary")["summaries"],
            "plots": sorted(str(p.relative_to(run_dir)) for p in (out_dir / "plots").glob("*.png"))}


__all__ = ["LENS_SETS", "lens_step"]
