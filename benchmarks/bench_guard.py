"""Size and speed of a built guard against its teacher: bytes on disk and judgments per second on this CPU.

Both are scored the same way — one forward pass per batch, the verdict read at the answer's first
position, the shared policy prefix run once per batch — on the same examples of the guard's test split,
after a warm-up batch. The teacher is measured in fp32 (how it is stored) and in bf16 weights. The guard runs
three ways: its INT4 weights dequantised once into a float cache with INT8-fake-quantised activations,
computing in fp32 (the precision its thresholds were chosen in) or in bf16 (the guard judge's
``dtype=bfloat16``); and with INT8 integer matmuls (``dtype=int8``: the activations' INT8 codes times a
per-channel INT8 form of the weights, bf16 elsewhere). ``guard check --stages int4,int4-bf16,int4-int8``
measures their verdicts. Which is fastest depends on the CPU's bf16 and int8 dot-product units.

Goals (issue 12): size ≤ 1/5 of the teacher in bf16; judgments per second ≥ 2× the teacher's. The table
compares both at the same precision (fp32 with fp32, bf16 with bf16: what the structure alone buys) and each
at its fastest (what a user of either gets on this CPU).

Why rounds: on a shared 2-core VM one timing of each model gave ratios from 1.72× to 2.02× for the same
guard, because the machine's speed drifts between the teacher's minute and the guard's. Each round times
all four models back to back; a ratio is taken within a round and the table reports the median and the
range over rounds.

    python benchmarks/bench_guard.py runs/guard/guard [--n 64] [--batch-size 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402


def _rate(model, guard, examples, batch_size: int, head_ids) -> tuple[float, list[float]]:
    """(judgments per second, the scores)."""
    from deltaguard.guard.train import score

    items = [(e.prompt, e.response) for e in examples]
    score(model, guard.encoder, items[:batch_size], guard.tokens, batch_size=batch_size, head_token_ids=head_ids)
    started = time.perf_counter()
    scores = score(model, guard.encoder, items, guard.tokens, batch_size=batch_size, head_token_ids=head_ids)
    return len(items) / (time.perf_counter() - started), scores


def load_build(parser: argparse.ArgumentParser, guard_dir: Path, n: int):
    """(the guard, its build config, ``n`` of its test examples, its models directory) for a benchmark run
    inside a build directory; a missing teacher is a one-line parser error."""
    from deltaguard.errors import DeltaguardError
    from deltaguard.guard.artifact import load_guard
    from deltaguard.guard.build import GuardBuildConfig, sample_examples
    from deltaguard.guard.check import build_data_of

    try:
        guard = load_guard(guard_dir)
        build = GuardBuildConfig.from_dict(guard.manifest["build"])
        test = sample_examples(build_data_of(guard_dir, build, guard.manifest).split("test"), n, 7)
    except DeltaguardError as error:   # a missing or corrupt build: one line, not a traceback
        parser.error(str(error))
    models_dir = guard_dir.resolve().parent / "models"
    teacher_dir = models_dir / guard.manifest["stage_dirs"]["teacher"]
    if not teacher_dir.is_dir():
        parser.error(f"the teacher is not at {teacher_dir}; run the benchmark inside the build directory")
    return guard, build, test, models_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guard", type=Path, help="a built guard directory (OUT/guard)")
    parser.add_argument("--n", type=int, default=64, help="test examples timed per model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="times each model is timed, interleaved")
    args = parser.parse_args()
    if args.n < 1 or args.batch_size < 1 or args.rounds < 1:
        parser.error("--n, --batch-size and --rounds must be at least 1")

    from deltaguard.guard.artifact import load_guard, size_on_disk
    from deltaguard.models import load_model

    guard, _build, test, models_dir = load_build(parser, args.guard, args.n)
    teacher_dir = models_dir / guard.manifest["stage_dirs"]["teacher"]
    teacher_bytes = sum(p.stat().st_size for p in teacher_dir.glob("*.safetensors"))
    teacher32 = load_model(str(teacher_dir), dtype="float32")
    teacher16 = load_model(str(teacher_dir), dtype="bfloat16")
    fast = load_guard(args.guard, dtype="bfloat16")
    integer = load_guard(args.guard, dtype="int8")
    guard_bytes = size_on_disk(args.guard)
    models = [("teacher fp32", teacher32, None, teacher_bytes), ("teacher bf16", teacher16, None, teacher_bytes // 2),
              ("INT4 guard", guard.model, guard.head_token_ids, guard_bytes),
              ("INT4 guard bf16", fast.model, fast.head_token_ids, guard_bytes),
              ("INT4 guard int8", integer.model, integer.head_token_ids, guard_bytes)]
    rates: dict[str, list[float]] = {name: [] for name, *_ in models}
    scores: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, model, head_ids, _bytes in models:
            per_second, scores[name] = _rate(model, guard, test, args.batch_size, head_ids)
            rates[name].append(per_second)
    rows = [{"model": name, "bytes": n_bytes, "per_second": round(statistics.median(rates[name]), 3),
             "per_second_rounds": [round(r, 3) for r in rates[name]]} for name, _m, _h, n_bytes in models]
    bf16_bytes = rows[1]["bytes"]
    print(f"{'model':<16} {'on disk':>10} {'vs teacher bf16':>16} {'judgments/s':>12} {'range':>13}")
    for row in rows:
        row["size_vs_teacher_bf16"] = round(row["bytes"] / bf16_bytes, 3)
        low, high = min(row["per_second_rounds"]), max(row["per_second_rounds"])
        print(f"{row['model']:<16} {row['bytes'] / 2**20:>6.1f} MiB {row['size_vs_teacher_bf16']:>15.3f}x "
              f"{row['per_second']:>12.2f} {low:>6.2f}-{high:<6.2f}")
    # same precision: the structure's gain alone; fastest against fastest: each model in the arithmetic it runs
    # fastest in on this CPU, per round (the guard's INT8 matmuls use the INT8 activations its QAT trained for;
    # the teacher has no INT8 form without quantising it, which would make it another model)
    pairs = {"fp32": (["INT4 guard"], ["teacher fp32"]), "bf16": (["INT4 guard bf16"], ["teacher bf16"]),
             "fastest": (["INT4 guard", "INT4 guard bf16", "INT4 guard int8"], ["teacher fp32", "teacher bf16"])}
    speedups = {p: [max(rates[g][i] for g in guards) / max(rates[t][i] for t in teachers) for i in range(args.rounds)]
                for p, (guards, teachers) in pairs.items()}
    summary = {p: {"median": round(statistics.median(x), 3), "low": round(min(x), 3), "high": round(max(x), 3)}
               for p, x in speedups.items()}
    size_met = rows[2]["size_vs_teacher_bf16"] <= 0.2
    print(f"goal: size <= 0.2 of the teacher in bf16: {'met' if size_met else 'NOT met'}")
    for p, x in summary.items():
        what = "each at its fastest" if p == "fastest" else f"both in {p}"
        print(f"goal: speed >= 2x the teacher, {what}: median {x['median']:.2f}x over {args.rounds} rounds "
              f"({x['low']:.2f}-{x['high']:.2f}), {'met' if x['median'] >= 2 else 'NOT met'}")
    exact = scores["INT4 guard"]
    against_fp32 = {}
    for name in ("INT4 guard bf16", "INT4 guard int8"):
        flips = sum((a >= guard.threshold) != (b >= guard.threshold) for a, b in zip(exact, scores[name]))
        drift = max(abs(a - b) for a, b in zip(exact, scores[name]))
        against_fp32[name] = {"verdicts_differing": flips, "max_probability_difference": round(drift, 4)}
        print(f"{name} against the fp32 guard: {flips} of {len(test)} verdicts differ at the stored threshold; "
              f"max |P(unsafe) difference| {drift:.4f}")
    result = {"environment": serve_setup.environment(), "guard": str(args.guard), "n": len(test),
              "batch_size": args.batch_size, "rounds": args.rounds, "rows": rows,
              "speed_vs_teacher": summary, "against_fp32_guard": against_fp32}
    print(f"wrote {serve_setup.write_results('guard', result)}")


if __name__ == "__main__":
    main()
