"""The compressed-trust sweep end to end: wall time of each step (calibration, each variant's evaluation)
and the whole run, checked against the issue's goal (default profile ≤ 30 minutes on a 2-core CPU).

Runs ``deltaguard trust`` in a run directory (reused: a rerun reports the cached run's recorded timings),
prints a table and writes ``results/trust.json``.

    python benchmarks/bench_trust.py [--model DIR] [--base DIR] [--profile default] [--run runs/bench-trust]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402

GOAL_SECONDS = 30 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--base", default=None, help="with a base: delta compressors join (delta vs whole-model)")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--run", default="runs/bench-trust", help="run directory (reused)")
    args = parser.parse_args()

    from deltaguard.io import read_json
    from deltaguard.trust import run_trust, trust_profile

    run_dir = Path(args.run)
    started = time.perf_counter()
    result = run_trust(args.model, trust_profile(args.profile, with_base=args.base is not None), run_dir=run_dir,
                       base=args.base, progress=False, log=print)
    wall = time.perf_counter() - started
    recorded = read_json(run_dir / "trust.json", what="trust results")
    timings = recorded["timings"]
    print(f"\n{'step':<44} {'seconds':>8}  cached")
    for label, t in timings.items():
        print(f"{label:<44} {t['seconds']:>8.1f}  {'yes' if t['cached'] else 'no'}")
    total = sum(t["seconds"] for t in timings.values())
    print(f"{'steps, total':<44} {total:>8.1f}\n{'this process':<44} {wall:>8.1f}")
    if total:
        print(f"goal: default profile ≤ {GOAL_SECONDS / 60:.0f} min → {'met' if total <= GOAL_SECONDS else 'NOT met'} "
              f"({total / 60:.1f} min of steps)")
    out = Path(__file__).parent / "results" / "trust.json"
    out.write_text(json.dumps({"environment": serve_setup.environment(), "model": args.model, "base": args.base,
                               "profile": args.profile, "timings": timings, "steps_seconds": total,
                               "process_seconds": wall, "goal_seconds": GOAL_SECONDS,
                               "summary": result["summary"]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
