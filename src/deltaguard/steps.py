"""Keyed pipeline steps: a step is done exactly when its output path exists (the study, the audit, ...).

Every long pipeline (the study, the audit's compressions, later the trust sweep and the guard build)
writes each artifact at a path keyed by ``io.content_key`` of its inputs and settings, atomically; so a
rerun skips finished steps and an interrupted one resumes. ``Steps`` runs them, logs what ran, and keeps
each step's timing for the run record.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Steps:
    """Runs keyed steps, skipping finished ones, and records what ran and how long it took."""

    def __init__(self, log: Callable[[str], None] = lambda line: None) -> None:
        self.log = log
        self.timings: dict[str, dict[str, Any]] = {}
        self.n_run = 0

    def run(self, label: str, path: Path, work: Callable[[], Any]) -> bool:
        """Run ``work`` unless ``path`` exists; True if it ran. ``work`` must create ``path`` atomically."""
        if path.exists():
            self.timings[label] = {"path": str(path), "cached": True, "seconds": 0.0}
            self.log(f"[cached] {label}")
            return False
        self.log(f"[run] {label}")
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        if not path.exists():
            raise AssertionError(f"step {label!r} finished without writing {path}")
        self.timings[label] = {"path": str(path), "cached": False, "seconds": round(seconds, 1)}
        self.n_run += 1
        self.log(f"[done] {label} in {seconds:.0f}s")
        return True

    def value(self, label: str, path: Path, work: Callable[[], T], load: Callable[[Path], T]) -> T:
        """The step's result: what ``work`` returned when it ran now, else ``load(path)`` of the cached artifact."""
        produced: list[T] = []
        if self.run(label, path, lambda: produced.append(work())):
            return produced[0]
        return load(path)


__all__ = ["Steps"]
