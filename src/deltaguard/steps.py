"""Keyed pipeline steps: a step is done exactly when its output path exists (the study, the audit, ...).

Every long pipeline (the study, the audit's compressions, later the trust sweep and the guard build)
writes each artifact at a path keyed by ``io.content_key`` of its inputs and settings, atomically; so a
rerun skips finished steps and an interrupted one resumes. ``Steps`` runs them, logs what ran, and keeps
each step's timing for the run record.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
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
        now = current_rss_mib()
        self.log(f"[run] {label}" + (f" (memory in use {now:.0f} MiB)" if now is not None else ""))
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        if not path.exists():
            raise AssertionError(f"step {label!r} finished without writing {path}")
        release_memory()
        self.timings[label] = {"path": str(path), "cached": False, "seconds": round(seconds, 1),
                               "peak_rss_mib": peak_rss_mib()}
        self.n_run += 1
        self.log(f"[done] {label} in {seconds:.0f}s (process peak memory so far {peak_rss_mib():.0f} MiB)")
        return True

    def value(self, label: str, path: Path, work: Callable[[], T], load: Callable[[Path], T]) -> T:
        """The step's result: what ``work`` returned when it ran now, else ``load(path)`` of the cached artifact."""
        produced: list[T] = []
        if self.run(label, path, lambda: produced.append(work())):
            return produced[0]
        return load(path)


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (a high-water mark: the step where it jumps is the peak)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)  # bytes on macOS, KiB on Linux


def current_rss_mib() -> float | None:
    """The process's resident memory now (Linux; None elsewhere): what a step starts from."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(resident_pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)


def release_memory() -> None:
    """After a step, hand freed memory back to the OS, so the next step starts from a small heap.

    A step frees its models when it returns, but glibc keeps freed heap pages (many tensors are below
    its mmap threshold), and the next step's peak then adds to the last one's fragments.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


__all__ = ["Steps", "current_rss_mib", "peak_rss_mib", "release_memory"]
