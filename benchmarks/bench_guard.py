"""Size and speed of a built guard against its teacher: bytes on disk and judgments per second on this CPU.

Both are scored the same way — one forward pass per batch, the verdict read at the answer's first
position, the shared policy prefix run once per batch — on the same examples of the guard's test split,
after a warm-up batch. The teacher is measured in fp32 (how it is stored) and in bf16 weights; the guard
runs its INT4 weights dequantised once into a float cache and INT8-fake-quantised activations (no INT4
kernel on this CPU). On a CPU every model computes in fp32 (bf16 autocast was slower here; see
``guard.train.compute_precision``).

Goals (issue 12): size ≤ 1/5 of the teacher in bf16; judgments per second ≥ 2× the teacher's.

    python benchmarks/bench_guard.py runs/guard/guard [--n 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402


def _rate(model, guard, examples, batch_size: int, head_ids) -> float:
    from deltaguard.guard.train import score

    items = [(e.prompt, e.response) for e in examples]
    score(model, guard.encoder, items[:batch_size], guard.tokens, batch_size=batch_size, head_token_ids=head_ids)
    started = time.perf_counter()
    score(model, guard.encoder, items, guard.tokens, batch_size=batch_size, head_token_ids=head_ids)
    return len(items) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guard", type=Path, help="a built guard directory (OUT/guard)")
    parser.add_argument("--n", type=int, default=64, help="test examples timed per model")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be at least 1")

    import torch

    from deltaguard.guard.artifact import load_guard, size_on_disk
    from deltaguard.guard.build import GuardBuildConfig, sample_examples
    from deltaguard.guard.check import build_data_of
    from deltaguard.models import load_model

    guard = load_guard(args.guard)
    build = GuardBuildConfig.from_dict(guard.manifest["build"])
    test = sample_examples(build_data_of(args.guard, build, guard.manifest).split("test"), args.n, 7)
    teacher_dir = args.guard.resolve().parent / "models" / guard.manifest["stage_dirs"]["teacher"]
    if not teacher_dir.is_dir():
        parser.error(f"the teacher is not at {teacher_dir}; run the benchmark inside the build directory")
    teacher_bytes = sum(p.stat().st_size for p in teacher_dir.glob("*.safetensors"))
    rows = []
    teacher = load_model(str(teacher_dir), dtype="float32")
    rows.append({"model": "teacher fp32", "bytes": teacher_bytes,
                 "per_second": _rate(teacher, guard, test, args.batch_size, None)})
    teacher = teacher.to(dtype=torch.bfloat16)
    rows.append({"model": "teacher bf16", "bytes": teacher_bytes // 2,
                 "per_second": _rate(teacher, guard, test, args.batch_size, None)})
    del teacher
    rows.append({"model": "INT4 guard", "bytes": size_on_disk(args.guard),
                 "per_second": _rate(guard.model, guard, test, args.batch_size, guard.head_token_ids)})
    reference = rows[0]["per_second"]
    bf16_bytes = rows[1]["bytes"]
    print(f"{'model':<14} {'on disk':>10} {'vs teacher bf16':>16} {'judgments/s':>12} {'vs teacher fp32':>16}")
    for row in rows:
        row["size_vs_teacher_bf16"] = round(row["bytes"] / bf16_bytes, 3)
        row["speed_vs_teacher_fp32"] = round(row["per_second"] / reference, 2)
        print(f"{row['model']:<14} {row['bytes'] / 2**20:>6.1f} MiB {row['size_vs_teacher_bf16']:>15.3f}x "
              f"{row['per_second']:>12.2f} {row['speed_vs_teacher_fp32']:>15.2f}x")
    guard_row = rows[-1]
    print(f"goals: size <= 0.2 of the teacher in bf16: {'met' if guard_row['size_vs_teacher_bf16'] <= 0.2 else 'NOT met'}; "
          f"speed >= 2x the teacher: {'met' if guard_row['speed_vs_teacher_fp32'] >= 2 else 'NOT met'}")
    result = {"environment": serve_setup.environment(), "guard": str(args.guard), "n": len(test),
              "batch_size": args.batch_size, "rows": rows}
    print(f"wrote {serve_setup.write_results('guard', result)}")


if __name__ == "__main__":
    main()
