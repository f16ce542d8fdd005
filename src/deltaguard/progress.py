"""Progress bars for long library steps (rich, on stderr; silent when disabled or not a terminal-free run)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
_console = Console(stderr=True)


def _enabled(progress: bool) -> bool:
    return progress and os.environ.get("DELTAGUARD_NO_PROGRESS") != "1"


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True,
                 transient: bool = False) -> Iterator["Bar"]:
    """A bar with ``advance(n, **fields)``; ``fields`` (e.g. ``loss``) are shown after the counts.

    ``transient`` bars disappear when done (for inner steps such as generation inside an evaluation).
    ``DELTAGUARD_NO_PROGRESS=1`` switches every bar off.
    """
    if not _enabled(enabled):
        yield Bar(None, None)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=_console, transient=transient) as bar:
        task = bar.add_task(description, total=total, info="")
        yield Bar(bar, task)


class Bar:
    def __init__(self, bar: Progress | None, task: int | None) -> None:
        self._bar, self._task = bar, task

    def advance(self, n: int = 1, **fields: float | str) -> None:
        if self._bar is None:
            return
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._bar.update(self._task, advance=n, info=info)


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.advance()
