"""The environment a result was produced in: package versions, Python, platform, git commit.

Every results file (evaluation, audit, study) records it, so a number can be traced to the code and the
libraries that made it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("deltaguard", "torch", "transformers")


def versions() -> dict[str, str]:
    """Installed versions of deltaguard, torch and transformers."""
    out = {}
    for package in PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def git_commit() -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the source tree deltaguard runs from, or (None, None)."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=here).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5,
                                    cwd=here).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty if commit else None


def environment() -> dict[str, Any]:
    """Versions, Python, platform, git commit, torch threads and the accelerator, for the record."""
    import torch

    commit, dirty = git_commit()
    info = versions()
    return {"deltaguard": info["deltaguard"], "torch": torch.__version__, "transformers": info["transformers"],
            "python": platform.python_version(), "platform": platform.platform(), "git_commit": commit,
            "git_dirty": dirty, "n_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


__all__ = ["environment", "git_commit", "versions"]
