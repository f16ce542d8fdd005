"""Output paths of the CLI verbs: checked before any work starts, and ``--force`` with guard rails.

Two kinds of outputs:

* an *artifact* (a delta, a model, a lens directory, a judge-check file): an existing one is replaced only
  with ``--force``, and only once the new one is complete (the writers are atomic);
* a *run directory* (eval, audit, demo): reused on purpose — finished steps are skipped — and ``--force``
  discards its cached results to start over. It is deleted only if it looks like a deltaguard run
  directory, so ``-o . --force`` or ``-o ~ --force`` can never wipe a working directory.

Both are refused up front when they cannot be written (a read-only parent, a file where a directory
must go), instead of failing after minutes of work.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from deltaguard.errors import ConfigError

RUN_DIR_MARKERS = ("results.json", "study.json", "generations", "judgments", "audits", "deltas", "summary.md",
                   "guard", "map.json", "models")


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists():
        if current.parent == current:
            break
        current = current.parent
    return current


def check_writable(path: Path, *, what: str = "output") -> None:
    """Raise ConfigError unless ``path`` can be created (or written) by this process."""
    anchor = _nearest_existing(path.absolute())
    if anchor != path.absolute() and not anchor.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {anchor} is a file, not a directory")
    target = anchor if anchor.is_dir() else anchor.parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} cannot be written: no write permission in {target}")


def _is_protected(path: Path) -> bool:
    """The filesystem root, the home directory, the current directory or any directory above it."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    return resolved == Path(resolved.anchor) or resolved == Path.home().resolve() or cwd.is_relative_to(resolved)


def _usable(path: Path, what: str) -> None:
    try:
        path.exists()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long
        raise ConfigError(f"{what} {str(path)!r} is not a usable path ({exc})") from None


def check_artifact(path: Path, *, force: bool, what: str = "output") -> None:
    """An artifact output: refuse an existing one without ``force``; refuse protected paths; check writability."""
    _usable(path, what)
    if path.exists():
        if not force:
            raise ConfigError(f"{what} {path} already exists (pass --force to replace it, or choose another)")
        if _is_protected(path):
            raise ConfigError(f"--force would replace {path}, which holds the current or home directory; "
                              "choose a new output path")
    check_writable(path, what=what)


def prepare_run_dir(path: Path, *, force: bool) -> None:
    """A run directory: reuse it, or with ``force`` discard its results (only if it is a deltaguard run dir)."""
    _usable(path, "run directory")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} is a file; choose a directory")
    if force and path.exists():
        if _is_protected(path):
            raise ConfigError(f"--force would delete {path}, which holds the current or home directory")
        if any(path.iterdir()) and not any((path / marker).exists() for marker in RUN_DIR_MARKERS):
            raise ConfigError(f"--force would delete {path}, which is not a deltaguard run directory "
                              f"(none of {', '.join(RUN_DIR_MARKERS)} in it); choose a new directory")
        shutil.rmtree(path)
    check_writable(path, what="run directory")


__all__ = ["RUN_DIR_MARKERS", "check_artifact", "check_writable", "prepare_run_dir"]
