"""``run_map``: expand the grid, run it stage by stage on an executor, measure, summarise.

Stages (each a set of independent tasks; a stage starts when the one before it has finished):

    1. align     one aligned base per (family, depth)              models/align-<key>/
    2. attack    one fine-tune per (family, depth, strength, threat) models/attack-<key>/
    3. audit     every compression method on each fine-tune        audits/audit-<key>.json
    4. norms     ‖attack delta‖ / ‖alignment delta‖ per fine-tune   norms/norms-<key>.json

Model keys are the study's (``study.keys``), so a map run in the demo's run directory reuses its models.
A cell is (family, depth, strength, threat, method): one row of one audit. ``map.json`` holds every cell;
``map.md``/``map.html`` (+ ``figures/map-*.png``) are rendered from it alone (``summary.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from deltaguard.io import content_key, read_json, write_json
from deltaguard.mitigation.config import Level, MapConfig
from deltaguard.mitigation.tasks import align_task, attack_task, audit_task


@dataclass(frozen=True)
class GridPoint:
    """One fine-tune of the grid and everything needed to build and audit it."""

    family: str
    depth: Level
    strength: Level
    threat: Any          # ThreatConfig
    align: Any           # AlignConfig
    align_key: str
    attack_key: str

    @property
    def label(self) -> str:
        return f"{self.family} · depth {self.depth.name} · strength {self.strength.name} · {self.threat.name}"


def expand(config: MapConfig, originals: dict[str, str], *, dtype: str = "float32",
           responder_keys: dict[str, str | None] | None = None) -> list[GridPoint]:
    """Every (family, depth, strength, threat) of the grid with its step keys (no work is done).

    ``originals`` maps each family to its model key (``models.model_identity``); ``responder_keys`` maps a
    base-model family to its responder's key. Points that share an alignment share its key.
    """
    from deltaguard.study.keys import align_key, attack_key

    responder_keys = responder_keys or {}
    points = []
    for family in config.families:
        for depth in config.levels("align_levels"):
            align = config.align_config(family, depth)
            a_key = align_key(originals[family], align, dtype=dtype, responder_key=responder_keys.get(family))
            for strength in config.levels("attack_levels"):
                for threat_name in config.threats:
                    threat = config.threat_config(family, threat_name, strength)
                    points.append(GridPoint(family, depth, strength, threat, align, a_key,
                                            attack_key(a_key, threat, dtype=dtype)))
    return points


def run_map(config: MapConfig, run_dir: str | Path, *, executor: Any = None, device: str = "cpu",
            dtype: str = "float32", progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the grid in ``run_dir``; returns the ``map.json`` dictionary and writes the report."""
    from deltaguard.audit import audit_path
    from deltaguard.mitigation.executors import LocalExecutor
    from deltaguard.models import model_identity, resolve_device, resolve_dtype, resolve_model_dir

    resolve_device(device)
    resolve_dtype(dtype)
    executor = executor or LocalExecutor(1)
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    responses = str(run_dir / "responses")
    base = {"device": device, "dtype": dtype, "progress": progress}

    family_dirs = {family: resolve_model_dir(family) for family in config.families}
    originals = {family: model_identity(path) for family, path in family_dirs.items()}
    responders = {family: config.responder(family) for family in config.families}
    responder_keys = {family: model_identity(resolve_model_dir(r)) if r else None for family, r in responders.items()}
    points = expand(config, originals, dtype=dtype, responder_keys=responder_keys)
    audit_config = config.audit_config()
    models = run_dir / "models"
    log(f"mitigation map: {len(points)} fine-tunes × {len(config.methods)} methods = "
        f"{len(points) * len(config.methods)} cells, on {executor.describe}")

    stage_seconds: dict[str, float] = {}
    # the harm judge's guard first (built once, into the user cache): audit keys hold its identity
    from deltaguard.steps import Steps
    from deltaguard.study.judges_step import ensure_guard

    ensure_guard(Steps(log), audit_config, device=device, progress=progress, log=log)
    audit_paths = [audit_path(run_dir, p.align_key, p.attack_key, p.threat, audit_config, dtype=dtype) for p in points]
    norms: list[dict[str, Any] | None] = [None] * len(points)
    try:
        # 1. align (one per family × depth)
        aligns = {p.align_key: p for p in points}
        specs = [{**base, "original": str(family_dirs[p.family]), "config": p.align.to_dict(),
                  "out_dir": str(models / key), "responses_dir": responses,
                  "responder": str(resolve_model_dir(responders[p.family])) if responders[p.family] else None}
                 for key, p in aligns.items()]
        stage_seconds["align"] = _stage(executor, align_task, specs,
                                        [f"align {p.family} · depth {p.depth.name}" for p in aligns.values()], log)

        # 2. attack (the responder of each threat writes the compliant answers; its key is the family's when it is one)
        specs = [{**base, "aligned": str(models / p.align_key), "threat": p.threat.to_dict(),
                  "out_dir": str(models / p.attack_key), "responses_dir": responses,
                  "responder_key": originals[p.family] if p.threat.responder == p.family else None} for p in points]
        stage_seconds["attack"] = _stage(executor, attack_task, specs, [f"attack {p.label}" for p in points], log)

        # 3. audit
        specs = [{**base, "aligned": str(models / p.align_key), "finetuned": str(models / p.attack_key),
                  "threat": p.threat.to_dict(), "audit": audit_config.to_dict(), "run_dir": str(run_dir),
                  "base_key": p.align_key, "finetuned_key": p.attack_key, "out_path": str(path)}
                 for p, path in zip(points, audit_paths)]
        stage_seconds["audit"] = _stage(executor, audit_task, specs, [f"audit {p.label}" for p in points], log)

        # 4. norms (cheap: three checkpoints streamed tensor by tensor)
        norm_started = time.perf_counter()
        norms = [_norms(run_dir, family_dirs[p.family], models / p.align_key, models / p.attack_key,
                        originals[p.family], p.align_key, p.attack_key) for p in points]
        stage_seconds["norms"] = round(time.perf_counter() - norm_started, 1)

    except BaseException:
        # a failed or interrupted grid still leaves its finished cells readable (map.json, map.html)
        log("the grid stopped before it finished; writing the cells that are done")
        write_result(_result(config, run_dir, executor, device, dtype, family_dirs, originals, responders, points,
                             audit_paths, norms, stage_seconds, started, status="partial"), run_dir)
        raise
    return write_result(_result(config, run_dir, executor, device, dtype, family_dirs, originals, responders, points,
                                audit_paths, norms, stage_seconds, started, status="complete"), run_dir)


def write_result(result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``map.json`` and the report rendered from it."""
    from deltaguard.mitigation.summary import write_map_report

    previous = run_dir / "map.json"     # earlier invocations: a cached rerun must not hide what the grid cost
    history = read_json(previous, what="mitigation map").get("runs", []) if previous.is_file() else []
    result["runs"] = [*history, {"finished_unix": round(time.time()), "seconds": result["seconds"],
                                 "status": result["status"], "stage_seconds": result["stage_seconds"]}]
    paths = write_map_report(result, run_dir)   # adds the plain-language summary to the result
    write_json(run_dir / "map.json", result)
    result["report"] = {k: str(v) for k, v in paths.items()}
    return result


def _result(config: MapConfig, run_dir: Path, executor: Any, device: str, dtype: str, family_dirs: dict[str, Path],
            originals: dict[str, str], responders: dict[str, str | None], points: list[GridPoint],
            audit_paths: list[Path], norms: list[dict[str, Any] | None], stage_seconds: dict[str, float],
            started: float, *, status: str) -> dict[str, Any]:
    result = {
        "config": config.to_dict(), "profile": config.profile, "device": device, "dtype": dtype,
        "executor": executor.describe,
        "families": {f: {"dir": str(family_dirs[f]), "key": originals[f], "responder": responders[f]}
                     for f in config.families},
        "axes": {"families": list(config.families), "depths": [lv.name for lv in config.levels("align_levels")],
                 "strengths": [lv.name for lv in config.levels("attack_levels")], "threats": list(config.threats),
                 "methods": list(config.methods)},
        "points": [_point_record(p, path, n) for p, path, n in zip(points, audit_paths, norms)],
        "status": status, "stage_seconds": stage_seconds, "seconds": round(time.perf_counter() - started, 1),
    }
    return result


def _stage(executor: Any, fn: Any, specs: list[dict[str, Any]], labels: list[str], log: Callable[[str], None]) -> float:
    started = time.perf_counter()
    executor.run(fn, specs, labels, log)
    return round(time.perf_counter() - started, 1)


def _norms(run_dir: Path, original: Path, aligned: Path, finetuned: Path, original_key: str, align_key: str,
           attack_key: str) -> dict[str, Any]:
    from deltaguard.mitigation.norms import delta_norms

    path = run_dir / "norms" / f"{content_key('norms', [original_key, align_key, attack_key])}.json"
    if not path.exists():
        write_json(path, delta_norms(original, aligned, finetuned).to_dict())
    return read_json(path, what="delta norms")


def _point_record(point: GridPoint, audit_file: Path | None, norms: dict[str, Any] | None) -> dict[str, Any]:
    """One fine-tune of the grid: its coordinates, keys, norms and the audit's rows (the cells; none yet when
    its audit has not finished)."""
    record: dict[str, Any] = {
        "family": point.family, "depth": point.depth.name, "strength": point.strength.name, "threat": point.threat.name,
        "align_key": point.align_key, "attack_key": point.attack_key, "depth_overrides": list(point.depth.overrides),
        "strength_overrides": point.strength.for_threat(point.threat.name), "norms": norms, "rows": [],
        "audit": str(audit_file) if audit_file else None}
    if audit_file is None or not audit_file.is_file():
        return record
    audit = read_json(audit_file, what="audit result")
    for row in audit["rows"]:
        compression = row.get("compression") or {}
        record["rows"].append({
            "label": row["label"], "role": row["role"], "rates": row["rates"],
            "bits_per_param": compression.get("bits_per_param"), "mitigation_pct": row.get("mitigation_pct"),
            "mitigation_points": row.get("mitigation_points"), "harm_mitigation_pct": row.get("harm_mitigation_pct"),
            "utility_drop_pct": row.get("utility_drop_pct"), "calibration": compression.get("calibration"),
            # how much of the delta's direction the compression keeps: near 1, it cannot strip much of anything
            "linear_mean_cosine": compression.get("linear_mean_cosine")})
    base, finetuned = audit["rows"][0]["rates"]["attack"], audit["rows"][1]["rates"]["attack"]
    record.update(metric=audit["metric"], harm_judge=(audit.get("harm_judge") or {}).get("name"),
                  verdict=audit["verdict"],
                  attack_clear=finetuned["value"] > base["value"] and finetuned["low"] > base["high"])
    return record


__all__ = ["GridPoint", "expand", "run_map"]
