"""Where the map's tasks run: in this process, in local worker processes, or as Ray tasks on a cluster.

The map does not grow its own scheduler. Locally it uses the standard library's process pool (spawned
workers, each limited to its share of the cores); on a cluster it hands the same task functions to Ray,
the engine users with many machines or GPUs already run (``pip install 'deltaguard[ray]'``). Every task
is idempotent (it returns at once when its keyed artifact exists), so a failed or interrupted stage is
simply run again.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from deltaguard.errors import ConfigError, DeltaguardError

Task = Callable[[dict[str, Any]], dict[str, Any]]


class TaskFailed(DeltaguardError):
    """A task of the map failed; the message names the task and the cause."""


class LocalExecutor:
    """``workers`` = 1 runs tasks one by one in this process (progress bars shown); more runs them in that
    many spawned processes, each with ``cores // workers`` torch threads."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ConfigError(f"--workers {workers} must be at least 1")
        self.workers = workers
        self.describe = "this process" if workers == 1 else f"{workers} local worker processes"

    def threads(self) -> int:
        return 0 if self.workers == 1 else max(1, (os.cpu_count() or 1) // self.workers)

    def run(self, fn: Task, specs: list[dict[str, Any]], labels: list[str],
            log: Callable[[str], None]) -> list[dict[str, Any]]:
        if self.workers == 1 or len(specs) == 1:
            out = []
            for spec, label in zip(specs, labels):
                out.append(_call(fn, spec, label))
                _log_done(log, label, out[-1])
            return out
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        results: list[dict[str, Any] | None] = [None] * len(specs)
        context = multiprocessing.get_context("spawn")   # no forked torch state (threads, open files)
        with ProcessPoolExecutor(max_workers=min(self.workers, len(specs)), mp_context=context) as pool:
            futures = {pool.submit(fn, {**spec, "threads": self.threads(), "progress": False}): i
                       for i, spec in enumerate(specs)}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except Exception as exc:
                    for other in futures:
                        other.cancel()
                    raise TaskFailed(f"{labels[i]} failed in a worker process: {type(exc).__name__}: {exc}") from None
                _log_done(log, labels[i], results[i])
        return [r for r in results if r is not None]


class RayExecutor:
    """Ray tasks on the cluster at ``address`` (``local`` starts a Ray instance on this machine).

    Each task asks Ray for ``cpus`` CPUs (and one GPU when the map runs on CUDA) and limits torch to
    those CPUs. Workers must import this deltaguard and see the run directory at the same path.
    """

    def __init__(self, address: str, *, cpus: int = 1, gpus: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--ray needs Ray: pip install 'deltaguard[ray]' (or pip install ray)") from None
        if cpus < 1:
            raise ConfigError(f"--ray-cpus {cpus} must be at least 1")
        self._ray = ray
        self.cpus, self.gpus = cpus, gpus
        try:
            if not ray.is_initialized():
                ray.init(address=None if address == "local" else address, include_dashboard=False,
                         log_to_driver=False, **({"num_cpus": os.cpu_count()} if address == "local" else {}))
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"--ray {address}: could not connect to a Ray cluster ({exc})") from None
        self.describe = f"Ray at {address} ({cpus} CPU{'s' if cpus > 1 else ''}" + (
            f", {gpus:g} GPU" if gpus else "") + " per task)"

    def threads(self) -> int:
        return self.cpus

    def run(self, fn: Task, specs: list[dict[str, Any]], labels: list[str],
            log: Callable[[str], None]) -> list[dict[str, Any]]:
        ray = self._ray
        remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(fn)
        refs = [remote.remote({**spec, "threads": self.cpus, "progress": False}) for spec in specs]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[dict[str, Any] | None] = [None] * len(specs)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = index[ready[0]]
            try:
                results[i] = ray.get(ready[0])
            except Exception as exc:   # RayTaskError wraps the worker's exception and its traceback
                for ref in pending:
                    ray.cancel(ref)
                cause = getattr(exc, "cause", None) or exc
                raise TaskFailed(f"{labels[i]} failed on Ray: {type(cause).__name__}: {str(cause).splitlines()[0]}") \
                    from None
            _log_done(log, labels[i], results[i])
        return [r for r in results if r is not None]

    def shutdown(self) -> None:
        self._ray.shutdown()


def _call(fn: Task, spec: dict[str, Any], label: str) -> dict[str, Any]:
    try:
        return fn(spec)
    except DeltaguardError:
        raise
    except Exception as exc:
        raise TaskFailed(f"{label} failed: {type(exc).__name__}: {exc}") from exc


def _log_done(log: Callable[[str], None], label: str, result: dict[str, Any] | None) -> None:
    if result is None:
        return
    log(f"[cached] {label}" if result.get("cached") else f"[done] {label} in {result.get('seconds', 0):.0f}s")


__all__ = ["LocalExecutor", "RayExecutor", "TaskFailed"]
