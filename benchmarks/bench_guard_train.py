"""Seconds per guard training step in each precision, for the stages the default profile trains in bf16.

Which precision trains the guard faster depends on the CPU: on the AMD EPYC of 2026-11-30 (AVX-512 with bf16)
bf16 autocast ran the teacher and distillation steps 1.8-2.2x faster than fp32, while an earlier 2-core
machine measured it slower. This benchmark says which holds on the machine it runs on, and so whether
``--set teacher.precision=float32 --set distill.precision=float32`` is the faster build there.

It reads a finished build (the guard's manifest names its data and stage directories), takes the stage's own
settings from the build's recipe with only ``max_steps`` and ``precision`` changed, and times real steps on the
build's training examples in the build's stratified order:

- ``teacher``: the base model, the teacher's trained blocks, no teacher;
- ``distill``: the pruned student, every block trained, KL to the frozen teacher.

The first ``--warmup`` steps of each run are not timed (allocator and oneDNN kernel selection). The models are
the build's own starting points, so the losses printed beside the timings are those of the real stages' first
steps.

    python benchmarks/bench_guard_train.py runs/guard/guard [--steps 6] [--warmup 1] [--stages teacher,distill]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


class _Timed:
    """A progress stand-in that stamps the time of every finished step (``train_guard`` advances it once a step)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, *_args, **_kwargs):
        return self

    def __enter__(self):
        self.stamps = [time.perf_counter()]
        return self

    def __exit__(self, *_exc) -> None:
        return None

    def advance(self, **_fields) -> None:
        self.stamps.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guard", type=Path, help="a built guard directory (OUT/guard)")
    parser.add_argument("--steps", type=int, default=6, help="steps timed per stage and precision (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--stages", default="teacher,distill", help="comma-separated: teacher, distill")
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    if not stages or set(stages) - {"teacher", "distill"}:
        parser.error("--stages takes teacher and/or distill")

    from deltaguard.guard import train as guard_train
    from deltaguard.guard.artifact import load_guard
    from deltaguard.guard.build import GuardBuildConfig, sample_examples, training_examples
    from deltaguard.guard.check import build_data_of
    from deltaguard.models import load_model, load_tokenizer

    manifest = load_guard(args.guard).manifest   # verified: checksums, format
    build = GuardBuildConfig.from_dict(manifest["build"])
    models_dir = args.guard.resolve().parent / "models"
    stage_dirs = {name: models_dir / directory for name, directory in manifest["stage_dirs"].items()}
    missing = [str(path) for name, path in stage_dirs.items() if name in ("teacher", "pruned") and not path.is_dir()]
    if missing:
        parser.error(f"the build's stage models are not at {', '.join(missing)}; run it inside the build directory")
    data = build_data_of(args.guard, build, manifest)
    train = training_examples(build, sample_examples(data.split("train"), build.n_train, build.seed), data)   # as built
    encoder = guard_train.GuardEncoder(load_tokenizer(build.model), **build.encoder_settings)

    timer = _Timed()
    real_progress_bar = guard_train.progress_bar
    guard_train.progress_bar = timer   # train_guard's only progress hook: one advance per optimizer step
    rows = []
    try:
        for stage in stages:
            for precision in PRECISIONS:
                recipe = build.teacher if stage == "teacher" else build.distill
                config = replace(recipe, max_steps=args.warmup + args.steps, precision=precision)
                teacher = None
                if stage == "teacher":
                    model = load_model(build.model, dtype="float32")
                else:
                    model = load_model(str(stage_dirs["pruned"]), dtype="float32")
                    teacher = load_model(str(stage_dirs["teacher"]), dtype="float32")
                record = guard_train.train_guard(model, encoder, train, config, teacher=teacher, progress=True)
                steps = [b - a for a, b in zip(timer.stamps, timer.stamps[1:])][args.warmup:]
                rows.append({"stage": stage, "precision": precision, "steps": len(steps),
                             "seconds_per_step": round(sum(steps) / len(steps), 3),
                             "fastest_step": round(min(steps), 3), "losses": [round(x, 4) for x in record["losses"]]})
                del model, teacher
    finally:
        guard_train.progress_bar = real_progress_bar

    print(f"{'stage':<8} {'precision':<9} {'s/step':>7} {'fastest':>8} {'vs fp32':>8}  first losses")
    for row in rows:
        fp32 = next(r for r in rows if r["stage"] == row["stage"] and r["precision"] == "float32")
        row["speedup_vs_float32"] = round(fp32["seconds_per_step"] / row["seconds_per_step"], 2)
        print(f"{row['stage']:<8} {row['precision']:<9} {row['seconds_per_step']:>7.2f} {row['fastest_step']:>8.2f} "
              f"{row['speedup_vs_float32']:>7.2f}x  {', '.join(f'{x:.3f}' for x in row['losses'][:4])}")
    result = {"environment": serve_setup.environment(), "guard": str(args.guard), "warmup": args.warmup,
              "recipe": {"teacher": build.teacher.to_dict(), "distill": build.distill.to_dict()}, "rows": rows}
    print(f"wrote {serve_setup.write_results('guard_train', result)}")


if __name__ == "__main__":
    main()
