"""The map's units of work: align a family, attack an aligned base, audit a fine-tune.

Each task is a top-level function of one JSON-able dictionary, so a local process pool (spawned) or a Ray
worker on another machine can run it; each writes its artifact atomically at the keyed path it is given
and returns at once when that path already exists, so tasks are idempotent and a grid resumes where it
stopped. Workers on other machines must see the same run directory (a shared filesystem).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def _setup(spec: dict[str, Any]) -> None:
    """A worker's torch uses only its share of the cores (two tasks on two cores must not fight over both)."""
    threads = int(spec.get("threads") or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _once(spec: dict[str, Any], out: Path, work: Any) -> dict[str, Any]:
    """Run ``work`` unless its keyed artifact ``out`` exists; what ran and how long it took."""
    started = time.perf_counter()
    cached = out.exists()
    if not cached:
        _setup(spec)
        work()
    return {"path": str(out), "cached": cached, "seconds": round(time.perf_counter() - started, 1)}


def _threat(spec: dict[str, Any]) -> Any:
    """The threat config a spec carries (rebuilt through the threats registry, never by class name)."""
    from deltaguard.threats import threats

    return threats.get(spec["threat"]["method"]).config_cls.from_dict(spec["threat"])


def align_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Align ``spec["original"]`` with the recipe ``spec["config"]`` into ``spec["out_dir"]``."""
    from deltaguard.threats import AlignConfig, align

    out = Path(spec["out_dir"])
    return _once(spec, out, lambda: align(
        spec["original"], AlignConfig.from_dict(spec["config"]), out_dir=out, cache_dir=Path(spec["responses_dir"]),
        responder=spec.get("responder"), device=spec["device"], dtype=spec["dtype"], progress=spec["progress"]))


def attack_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the aligned base ``spec["aligned"]`` with the threat recipe ``spec["threat"]``."""
    from deltaguard.threats import attack

    out = Path(spec["out_dir"])
    return _once(spec, out, lambda: attack(
        spec["aligned"], _threat(spec), out_dir=out, cache_dir=Path(spec["responses_dir"]),
        responder_key=spec.get("responder_key"), device=spec["device"], dtype=spec["dtype"],
        progress=spec["progress"]))


def audit_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Audit every compression method on one fine-tune; the result lands at ``spec["out_path"]``."""
    from deltaguard.audit import AuditConfig, audit

    out = Path(spec["out_path"])

    def work() -> None:
        result = audit(spec["aligned"], spec["finetuned"], _threat(spec), AuditConfig.from_dict(spec["audit"]),
                       run_dir=Path(spec["run_dir"]), base_key=spec["base_key"], finetuned_key=spec["finetuned_key"],
                       device=spec["device"], dtype=spec["dtype"], progress=spec["progress"])
        if result.path is not None and Path(result.path) != out:
            raise AssertionError(f"the audit wrote {result.path}, the map expected {out} (keys out of step)")

    return _once(spec, out, work)


__all__ = ["align_task", "attack_task", "audit_task"]
