"""Running an audit (``audit``) and reading a cached one back (``load_audit``)."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

from deltaguard.audit.cache import CachedJudge, generate_cached, generation_configs
from deltaguard.audit.compare import recommend, with_comparisons
from deltaguard.audit.config import FULL, UNCOMPRESSED, AuditConfig, _method_config
from deltaguard.audit.result import AuditResult, Interval, ModelRow
from deltaguard.io import content_key, read_json, write_json
from deltaguard.threats.base import ThreatConfig, ThreatScore, model_identity, threats


def audit_path(run_dir: str | Path, base_key: str, finetuned_key: str, threat: ThreatConfig,
               config: AuditConfig) -> Path:
    """Where the audit of this (base, fine-tune, threat, settings) is cached."""
    key = content_key("audit", {"base": base_key, "finetuned": finetuned_key, "threat": threat.to_dict(),
                                "config": config.to_dict()})
    return Path(run_dir) / "audits" / f"{key}.json"


class _Evaluator:
    """Generates (cached) replies of one model on the audit's sets and scores them with the threat."""

    def __init__(self, threat_cfg: ThreatConfig, config: AuditConfig, run_dir: Path, *, progress: bool) -> None:
        self.threat_cfg = threat_cfg
        self.threat = threats.get(threat_cfg.name)()
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        self.sets = self.threat.eval_sets(threat_cfg, n_prompts=config.n_prompts, seed=config.seed)
        self.gen_configs = generation_configs(config, self.sets)
        self.judge = CachedJudge(config.judge, run_dir / "judgments")

    def outputs(self, model_key: str, load: Any) -> dict[str, list[str]]:
        return generate_cached(load, model_key, self.sets, self.gen_configs, self.run_dir, progress=self.progress)

    def evaluate(self, label: str, role: str, model_key: str, load: Any,
                 compression: dict[str, Any] | None = None) -> ModelRow:
        outputs = self.outputs(model_key, load)
        score = self.threat.score(self.threat_cfg, outputs, self.sets, self.judge)
        flags = {"attack": tuple(score.attack_flags), "utility": tuple(score.utility_flags)}
        examples = {name: [{"prompt_id": pid, "prompt": p.text, "response": outputs[name][i]}
                           for i, (pid, p) in enumerate(zip(self.sets[name].ids, self.sets[name].prompts))
                           if i < self.config.n_examples]
                    for name in self.sets}
        return ModelRow(label, role, model_key, score, flags, compression or {}, examples=examples)


def audit(base: str | Path, finetuned: str | Path, threat: ThreatConfig, config: AuditConfig = AuditConfig(), *,
          run_dir: str | Path, base_key: str | None = None, finetuned_key: str | None = None,
          progress: bool = True) -> AuditResult:
    """Audit compression methods against one fine-tuning threat; results cached under ``run_dir``.

    ``base_key``/``finetuned_key`` name the models in cache keys (the study passes its step keys);
    by default they are derived from the model directories' paths, sizes and mtimes.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    base_key = base_key or model_identity(base)
    finetuned_key = finetuned_key or model_identity(finetuned)
    result_path = audit_path(run_dir, base_key, finetuned_key, threat, config)
    if result_path.exists():
        return load_audit(result_path)

    evaluator = _Evaluator(threat, config, run_dir, progress=progress)
    cache: dict[str, Any] = {}

    def load_base() -> tuple[Any, Any]:
        from deltaguard.models import load_model, load_tokenizer

        if "base" not in cache:
            cache["base"] = (load_model(base), load_tokenizer(base))
        return cache["base"]

    def load_finetuned() -> tuple[Any, Any]:
        from deltaguard.models import load_model, load_tokenizer

        return load_model(finetuned), load_tokenizer(finetuned)

    rows = [evaluator.evaluate("base", "base", base_key, load_base),
            evaluator.evaluate("finetuned", "finetuned", finetuned_key, load_finetuned, UNCOMPRESSED)]
    calib: list[str] | None = None
    delta = None
    for spec in config.methods:
        if spec == FULL:
            rows.append(ModelRow(FULL, "compressed", finetuned_key, rows[1].score, rows[1].flags,
                                 dict(rows[1].compression), examples=rows[1].examples))
            continue
        method = _method_config(spec, config)
        needs_calib = method.name == "bitdelta" and getattr(method, "distill", False)
        calib_key = ({"set": config.calib_set, "n": config.n_calib, "seed": config.seed, "format": "chat"}
                     if needs_calib else None)
        delta_key = content_key("delta", {"base": base_key, "finetuned": finetuned_key, "method": method.to_dict(),
                                          "calib": calib_key})
        delta_dir = run_dir / "deltas" / delta_key
        if not delta_dir.exists():
            from deltaguard.delta import compress, extract_delta

            if needs_calib and calib is None:
                calib = calibration_texts(base, config)
            delta = delta or extract_delta(base, finetuned)
            compress(delta, method, calib=calib if needs_calib else None, progress=progress).save(delta_dir)
        manifest = read_json(delta_dir / "manifest.json", what="delta manifest")
        summary = manifest.get("summary", {})
        compression = {"method": method.to_dict(), "delta_key": delta_key,
                       **{k: summary.get(k) for k in ("bits_per_param", "ratio_vs_fp16_delta", "ratio_vs_fp16_model",
                                                      "linear_bits_per_param", "linear_mean_rel_error",
                                                      "linear_mean_cosine")}}
        calibration = manifest.get("meta", {}).get("calibration")
        if calibration:  # what scale distillation did: held-out logit MSE before/after, and which scales were kept
            compression["calibration"] = {k: calibration.get(k) for k in (
                "held_out_loss_closed_form", "held_out_loss_distilled", "scales", "steps", "lr")}

        def load_variant(delta_dir: Path = delta_dir) -> tuple[Any, Any]:
            from deltaguard.delta import apply_delta_, load_delta

            model, tokenizer = load_base()
            variant = apply_delta_(copy.deepcopy(model), load_delta(delta_dir))
            return variant, tokenizer

        rows.append(evaluator.evaluate(spec, "compressed", delta_key, load_variant, compression))

    rows = with_comparisons(rows, n_boot=config.n_boot, seed=config.seed)
    recommendation, verdict = recommend(rows, max_utility_drop=config.max_utility_drop)
    result = AuditResult(
        threat=threat.name, threat_config=threat.to_dict(), config=config, rows=tuple(rows),
        recommendation=tuple(recommendation), verdict=verdict,
        sets={name: s.describe() for name, s in evaluator.sets.items()},
        judge=dict(evaluator.judge.info), metric=evaluator.threat.metric, path=result_path,
        seconds=time.perf_counter() - started,
    )
    write_json(result_path, result.to_dict())
    return result


def calibration_texts(base: str | Path, config: AuditConfig) -> list[str]:
    """Calibration-split texts, each formatted as a user turn with the base's chat template (as the
    ``compress`` command does)."""
    from deltaguard.data import load_prompts
    from deltaguard.models import chat_prompt, load_tokenizer

    tokenizer = load_tokenizer(base)
    prompts = load_prompts(config.calib_set, split="calib", limit=config.n_calib, seed=config.seed)
    return [chat_prompt(tokenizer, p.text) for p in prompts.prompts]


def load_audit(path: str | Path) -> AuditResult:
    """Rebuild an AuditResult from its JSON (used when a cached audit is reused)."""
    from deltaguard.metrics import Rate

    data = read_json(path, what="audit result")

    def rate(d: dict[str, Any]) -> Any:
        def num(x: Any) -> float:
            return math.nan if x is None else float(x)

        return Rate(value=num(d["value"]), low=num(d["low"]), high=num(d["high"]), n=d["n"], k=d["k"],
                    n_errors=d.get("n_errors", 0), method=d.get("ci_method", "bootstrap"))

    def interval(d: dict[str, Any] | None) -> Interval | None:
        if d is None:
            return None
        return Interval(*(math.nan if d[k] is None else d[k] for k in ("value", "low", "high")))

    rows = []
    for r in data["rows"]:
        rates = {k: rate(v) for k, v in r["rates"].items()}
        score = ThreatScore(attack=rates.pop("attack"), utility=rates.pop("utility"), extra=rates)
        rows.append(ModelRow(r["label"], r["role"], r["model_key"], score, {}, r["compression"],
                             interval(r["mitigation_pct"]), interval(r["mitigation_points"]),
                             interval(r["utility_drop_pct"]), r.get("examples", {})))
    config = AuditConfig.from_dict(data["audit_config"])
    # the numbers are cached; the ranking and its wording are recomputed by the current code
    recommendation, verdict = recommend(rows, max_utility_drop=config.max_utility_drop)
    return AuditResult(
        threat=data["threat"], threat_config=data["threat_config"], config=config,
        rows=tuple(rows), recommendation=tuple(recommendation), verdict=verdict, sets=data["sets"],
        judge=data["judge"], metric=data["metric"], path=Path(path), seconds=data.get("seconds", 0.0),
    )
