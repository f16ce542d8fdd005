"""Command-line interface: a thin shell over the library (``deltaguard --help``)."""

from __future__ import annotations

import os

# Before torch loads, unless the user chose a wait policy: idle OpenMP threads spin only briefly, then sleep.
# Why: with the runtime's default (long spinning) two processes sharing a 2-core machine ran greedy decoding
# 2.2x slower each (46 s against 21 s), while sleeping at once (PASSIVE) cost 19% on a quiet machine
# (12.6 s against 10.3-10.7 s). GNU OpenMP (torch's on Linux) reads GOMP_SPINCOUNT, which wins over the
# policy: 1000 spins, the count libgomp itself uses when oversubscribed, measured 10.3-11.1 s quiet and
# 21.8-22.9 s shared. Other runtimes read only OMP_WAIT_POLICY and sleep at once.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["GOMP_SPINCOUNT"] = "1000"

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
