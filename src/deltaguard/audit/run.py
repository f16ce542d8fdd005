"""Running an audit (``audit``) and reading a cached one back (``load_audit``).

The audit is one sweep over ``Variant``s on the evaluation core: the base, the fine-tune, each
compressed delta (base + delta) and each whole-model transform of the fine-tune, every one scored by the
threat's own metric through the one ``Runner`` cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from deltaguard.audit.compare import recommend, with_comparisons
from deltaguard.audit.config import FULL, UNCOMPRESSED, AuditConfig
from deltaguard.audit.result import AuditResult, Interval, ModelRow
from deltaguard.eval import BasePlusDelta, ModelDir, Runner, Transformed, Variant
from deltaguard.generation import GenerationConfig
from deltaguard.io import content_key, read_json, write_json
from deltaguard.steps import Steps
from deltaguard.threats.base import ThreatConfig, ThreatScore, threats

CALIB_REPLY_TOKENS = 64  # greedy tokens of the fine-tune's reply to each calibration prompt (calib_format "reply")
SUMMARY_FIELDS = ("bits_per_param", "ratio_vs_fp16_delta", "ratio_vs_fp16_model", "linear_bits_per_param",
                  "linear_mean_rel_error", "linear_mean_cosine")


def audit_path(run_dir: str | Path, base_key: str, finetuned_key: str, threat: ThreatConfig,
               config: AuditConfig, *, dtype: str = "float32") -> Path:
    """Where the audit of this (base, fine-tune, threat, settings, evaluation precision) is cached.

    With a harm judge the key holds its identity too (a rebuilt guard has other weights and threshold),
    so the judge must be available here — the study builds the guard before its audits.
    """
    precision = {"dtype": dtype} if dtype != "float32" else {}  # fp32 audits keep their keys
    harm = {"harm_judge": harm_judge_of(config).prompt_hash} if config.harm_judge else {}
    key = content_key("audit", {"base": base_key, "finetuned": finetuned_key, "threat": threat.to_dict(),
                                "config": config.to_dict(), "methods": resolved_methods(config), **precision, **harm})
    return Path(run_dir) / "audits" / f"{key}.json"


def resolved_methods(config: AuditConfig) -> dict[str, Any]:
    """Every method's and transform's settings as this code resolves them, defaults included.

    The config names methods by spec ("bitdelta"), so without this a changed default (BitDelta's distillation
    lr went 1e-4 -> 2e-5) would leave an audit of the old settings cached under the new ones.
    """
    from deltaguard.transforms import is_transform_spec

    return {spec: (config.transform_config(spec) if is_transform_spec(spec) else config.method_config(spec)).to_dict()
            for spec in config.methods if spec != FULL}


def harm_judge_of(config: AuditConfig) -> Any:
    """The audit's harm judge (``config.harm_judge`` with its default options)."""
    from deltaguard.judges import make_judge

    return make_judge(config.harm_judge)


def harm_verdicts(harm_judge: Any, threat_impl: Any, sets: dict[str, Any],
                  outputs: dict[str, list[str]]) -> dict[str, list[Any]]:
    """The harm judge's verdicts on each of the threat's harmful sets: ``harm`` for the ``harmful`` set,
    ``harm:<set>`` for the others."""
    from deltaguard.judges import JudgeItem

    verdicts = {}
    for name in threat_impl.harm_sets:
        items = [JudgeItem(prompt, reply) for prompt, reply in zip(sets[name].texts, outputs[name], strict=True)]
        verdicts["harm" if name == "harmful" else f"harm:{name}"] = harm_judge.judge(items)
    return verdicts


def generation_configs(config: AuditConfig, set_names: Any) -> dict[str, GenerationConfig]:
    """The generation settings of each evaluation set (the word problems get ``task_max_new_tokens``)."""
    def tokens(name: str) -> int:
        return config.task_max_new_tokens if name == "task" else config.max_new_tokens

    return {name: GenerationConfig(max_new_tokens=tokens(name), batch_size=config.batch_size) for name in set_names}


class Sweep:
    """Builds the audit's variants: compresses each delta once (cached under ``deltas/``), wraps transforms."""

    def __init__(self, base: ModelDir, finetuned: ModelDir, config: AuditConfig, run_dir: Path, *, device: str,
                 progress: bool, steps: Steps, before_compress: Callable[[], None] = lambda: None) -> None:
        self.base, self.finetuned, self.config, self.run_dir = base, finetuned, config, run_dir
        self.device, self.progress, self.steps = device, progress, steps
        self.before_compress = before_compress
        self._delta: Any = None
        self._calib: list[str] | None = None

    def calibration(self) -> list[str]:
        """The calibration texts (``config.calib_format``): prompts only, or prompts with the fine-tune's replies."""
        if self._calib is None:
            from deltaguard.data.calibration import calibration_texts
            from deltaguard.models import load_tokenizer

            replies = self._finetuned_replies() if self.config.calib_format == "reply" else None
            self._calib = calibration_texts(self.config.calib_set, tokenizer=load_tokenizer(self.base.spec),
                                            limit=self.config.n_calib, seed=self.config.seed,
                                            format=self.config.calib_format, replies=replies)
        return self._calib

    def _finetuned_replies(self) -> list[str]:
        """The fine-tune's greedy replies to the calibration prompts (cached under the run's ``generations/``)."""
        from deltaguard.data.calibration import calibration_prompts

        prompts = calibration_prompts(self.config.calib_set, limit=self.config.n_calib, seed=self.config.seed)
        runner = Runner(self.run_dir, device=self.device, progress=self.progress)
        generation = GenerationConfig(max_new_tokens=CALIB_REPLY_TOKENS, batch_size=self.config.batch_size)
        self.before_compress()  # the audit's loaded model goes before the fine-tune loads here
        try:
            return runner.responses(Variant("finetuned", "finetuned", self.finetuned), prompts, generation)
        finally:
            runner.release()

    def _calib_key(self) -> dict[str, Any]:
        key = {"set": self.config.calib_set, "n": self.config.n_calib, "seed": self.config.seed, "format": "chat"}
        if self.config.calib_format != "prompt":  # prompt-only calibration keeps the keys it always had
            key.update(calib_format=self.config.calib_format, reply_tokens=CALIB_REPLY_TOKENS)
        return key

    def variant(self, spec: str) -> Variant:
        from deltaguard.transforms import is_transform_spec, transforms

        if is_transform_spec(spec):
            transform = self.config.transform_config(spec)
            calib = self.calibration() if transform.needs_calibration else None
            record = transforms.get(transform.name)().record(transform)
            source = Transformed(self.finetuned, transform, calib=calib,
                                 reference=self.base if transform.needs_reference else None)
            if transform.saves_model:
                return self._saved(spec, source, record)
            return Variant(spec, "transformed", source, record)
        return self._compressed(spec)

    def _saved(self, spec: str, source: Transformed, record: dict[str, Any]) -> Variant:
        """A transform worth doing once (calibrated quantization): applied and saved under ``quantized/`` (with
        Q-realign's probe diagnostics), then evaluated from disk like any model; its record gains the stored
        bits, the calibration's time and the diagnostics' summary."""
        from deltaguard.quant.artifact import read_manifest
        from deltaguard.quant.diagnose import quantize_and_save

        out = self.run_dir / "quantized" / source.key

        def work() -> None:
            self.before_compress()
            finetuned, tokenizer = source.source.load(device=self.device)
            reference = source.reference.load(device=self.device)[0] if source.reference is not None else None
            quantize_and_save(finetuned, tokenizer, source.config, out, reference=reference, overwrite=True,
                              workdir=out.with_name(f"{out.name}.partial"), describe={"model": source.describe()})

        self.steps.run(f"quantize {spec}", out, work)
        saved = read_manifest(out)["record"]
        record = {**record, **{k: saved.get(k) for k in ("bits_per_param", "linear_bits_per_param", "seconds",
                                                          "diagnostics")}}
        return Variant(spec, "transformed", ModelDir(out, key=source.key), record)

    def _compressed(self, spec: str) -> Variant:
        method = self.config.method_config(spec)
        calib_key = self._calib_key() if method.needs_calibration else None
        delta_key = content_key("delta", {"base": self.base.key, "finetuned": self.finetuned.key,
                                          "method": method.to_dict(), "calib": calib_key})
        delta_dir = self.run_dir / "deltas" / delta_key

        def work() -> None:
            from deltaguard.delta import Calibration, compress, extract_delta

            self.before_compress()  # the last evaluated model goes first: distillation loads two of its own
            calibration = (Calibration(tuple(self.calibration()), base=self.base.spec, finetuned=self.finetuned.spec,
                                       device=self.device) if method.needs_calibration else None)
            self._delta = self._delta or extract_delta(self.base.spec, self.finetuned.spec)
            compress(self._delta, method, calib=calibration, progress=self.progress).save(delta_dir)

        self.steps.run(f"compress {spec}", delta_dir, work)
        manifest = read_json(delta_dir / "manifest.json", what="delta manifest")
        summary = manifest.get("summary", {})
        record = {"method": method.to_dict(), "delta_key": delta_key, **{k: summary.get(k) for k in SUMMARY_FIELDS}}
        calibration_record = manifest.get("meta", {}).get("calibration")
        if calibration_record:  # what calibration did (e.g. held-out logit MSE before/after, which scales kept)
            record["calibration"] = {k: calibration_record.get(k) for k in (
                "held_out_loss_closed_form", "held_out_loss_distilled", "scales", "steps", "lr")}
        return Variant(spec, "compressed", BasePlusDelta(self.base, delta_dir, key=delta_key), record)


def audit(base: str | Path, finetuned: str | Path, threat: ThreatConfig, config: AuditConfig = AuditConfig(), *,
          run_dir: str | Path, base_key: str | None = None, finetuned_key: str | None = None,
          device: str = "cpu", dtype: str = "float32", progress: bool = True) -> AuditResult:
    """Audit compression methods against one fine-tuning threat; results cached under ``run_dir``.

    ``base_key``/``finetuned_key`` name the models in cache keys (the study passes its step keys);
    by default they are the models' identities (``models.model_identity``). Every model is evaluated
    on ``device`` in ``dtype``; compression and scale distillation keep fp32 weights.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    base_src, ft_src = ModelDir(base, key=base_key), ModelDir(finetuned, key=finetuned_key)
    result_path = audit_path(run_dir, base_src.key, ft_src.key, threat, config, dtype=dtype)
    if result_path.exists():
        return load_audit(result_path)

    from deltaguard.judges import make_judge

    threat_impl = threats.get(threat.name)()
    sets = threat_impl.eval_sets(threat, n_prompts=config.n_prompts, seed=config.seed)
    gen_configs = generation_configs(config, sets)
    runner = Runner(run_dir, device=device, dtype=dtype, progress=progress)
    judge = runner.cached(make_judge(config.judge))
    harm_judge = runner.cached(harm_judge_of(config)) if config.harm_judge and threat_impl.harm_sets else None
    sweep = Sweep(base_src, ft_src, config, run_dir, device=device, progress=progress, steps=Steps(),
                   before_compress=runner.release)

    def row(variant: Variant) -> ModelRow:
        outputs = {name: runner.responses(variant, prompts, gen_configs[name]) for name, prompts in sets.items()}
        score = threat_impl.score(threat, outputs, sets, judge)
        flags = {"attack": tuple(score.attack_flags), "utility": tuple(score.utility_flags)}
        if harm_judge is not None:
            from deltaguard.metrics import attack_success_rate

            verdicts = harm_verdicts(harm_judge, threat_impl, sets, outputs)
            score = replace(score, extra={**score.extra, **{name: attack_success_rate(v, by="unsafe", seed=config.seed)
                                                            for name, v in verdicts.items()}})
            harm = verdicts.get("harm", [])
            if harm and all(v.is_unsafe is not None for v in harm):   # paired comparisons need every verdict
                flags["harm"] = tuple(bool(v.is_unsafe) for v in harm)
        examples = {name: [{"prompt_id": pid, "prompt": p.text, "response": outputs[name][i]}
                           for i, (pid, p) in enumerate(zip(prompts.ids, prompts.prompts)) if i < config.n_examples]
                    for name, prompts in sets.items()}
        return ModelRow(variant.label, variant.role, variant.key, score, flags, dict(variant.record), examples=examples)

    rows = [row(Variant("base", "base", base_src)), row(Variant("finetuned", "finetuned", ft_src, UNCOMPRESSED))]
    for spec in config.methods:
        if spec == FULL:  # the uncompressed delta: base + full delta is the fine-tune itself
            ft = rows[1]
            rows.append(ModelRow(FULL, "compressed", ft.model_key, ft.score, ft.flags, dict(ft.compression),
                                 examples=ft.examples))
            continue
        rows.append(row(sweep.variant(spec)))
    runner.release()

    rows = with_comparisons(rows, n_boot=config.n_boot, seed=config.seed)
    recommendation, verdict = recommend(rows, max_utility_drop=config.max_utility_drop)
    result = AuditResult(
        threat=threat.name, threat_config=threat.to_dict(), config=config, rows=tuple(rows),
        recommendation=tuple(recommendation), verdict=verdict, sets={name: s.describe() for name, s in sets.items()},
        judge=judge.info, metric=threat_impl.metric, path=result_path, seconds=time.perf_counter() - started,
        harm_judge=harm_judge.info if harm_judge is not None else None,
    )
    write_json(result_path, result.to_dict())
    return result


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
                             interval(r["utility_drop_pct"]), r.get("examples", {}),
                             interval(r.get("harm_mitigation_pct"))))
    config = AuditConfig.from_dict(data["audit_config"])
    # the numbers are cached; the ranking and its wording are recomputed by the current code
    recommendation, verdict = recommend(rows, max_utility_drop=config.max_utility_drop)
    return AuditResult(
        threat=data["threat"], threat_config=data["threat_config"], config=config,
        rows=tuple(rows), recommendation=tuple(recommendation), verdict=verdict, sets=data["sets"],
        judge=data["judge"], metric=data["metric"], path=Path(path), seconds=data.get("seconds", 0.0),
        harm_judge=data.get("harm_judge"),
    )
