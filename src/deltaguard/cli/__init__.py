"""Command-line interface: a thin shell over the library (``deltaguard --help``)."""

from __future__ import annotations

import os

# Before torch loads: idle OpenMP threads sleep instead of spinning, which on a busy 2-core machine
# made two threads 4-6x slower than one (measured while running the demo).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from deltaguard.cli.app import app  # noqa: E402

# Each module adds its commands to ``app``; importing them is all the wiring there is.
from deltaguard.cli import delta as _delta  # noqa: E402,F401
from deltaguard.cli import eval as _eval  # noqa: E402,F401
from deltaguard.cli import export as _export  # noqa: E402,F401
from deltaguard.cli import guard as _guard  # noqa: E402,F401
from deltaguard.cli import lens as _lens  # noqa: E402,F401
from deltaguard.cli import map as _map  # noqa: E402,F401
from deltaguard.cli import models as _models  # noqa: E402,F401
from deltaguard.cli import quant as _quant  # noqa: E402,F401
from deltaguard.cli import registries as _registries  # noqa: E402,F401
from deltaguard.cli import study as _study  # noqa: E402,F401
from deltaguard.cli import serve as _serve  # noqa: E402,F401
from deltaguard.cli import trust as _trust  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    app(prog_name="deltaguard")


__all__ = ["app", "main"]
