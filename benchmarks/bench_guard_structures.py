"""What a guard structure (blocks × MLP neurons) would judge per second, before anyone trains it.

A timing probe for choosing the pruning targets of the speed goal (issue 12: ≥ 2× the teacher's judgments
per second at equal precision). Each candidate is the build's distilled student cut further — the blocks
just below the last one dropped, MLP neurons kept at random — and converted to INT4 like the guard (INT4
weights, INT8-fake-quantised activations, fp32 arithmetic). No verdict is read: an untrained cut scores
nonsense, but its arithmetic is that of a trained guard of the same shape, and which blocks or neurons go
does not change the time. The teacher is timed again after every candidate and each ratio is taken against
the mean of the two teacher timings around it, because this shared 2-core machine drifts by several percent
within minutes.

Measured 2026-11-30 (96 test examples, batch 16): 22 × 896 (the default) 1.77×, 20 × 896 1.97×, 20 × 640
2.25×, 21 × 512 2.28×, 18 × 896 2.18× (docs/guard.md, "Smaller structures for the speed goal").

    python benchmarks/bench_guard_structures.py BUILD/guard --structures 22x896,20x640 [--n 96]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402
from bench_guard import _rate, load_build  # noqa: E402   (the timing and build reading bench_guard.py uses)


def _structures(text: str) -> list[tuple[int, int]]:
    """``"22x896,20x640"`` → ``[(22, 896), (20, 640)]``."""
    out = []
    for part in text.split(","):
        blocks, _, neurons = part.strip().partition("x")
        if not (blocks.isdigit() and neurons.isdigit()) or int(blocks) < 1 or int(neurons) < 1:
            raise argparse.ArgumentTypeError(f"structure {part.strip()!r} is not BLOCKSxNEURONS, e.g. 20x640")
        out.append((int(blocks), int(neurons)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guard", type=Path, help="a built guard directory (BUILD/guard)")
    parser.add_argument("--structures", type=_structures, default=_structures("22x896,20x896,20x640,18x896"),
                        help="comma-separated BLOCKSxNEURONS candidates")
    parser.add_argument("--n", type=int, default=96, help="test examples timed per model")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be at least 1")

    import torch
    from transformers import AutoConfig

    from deltaguard.guard.prune import prune_blocks, prune_neurons
    from deltaguard.guard.quant import convert_qat, prepare_qat
    from deltaguard.models import load_model

    guard, build, test, models_dir = load_build(parser, args.guard, args.n)
    teacher_dir = models_dir / guard.manifest["stage_dirs"]["teacher"]
    student_dir = models_dir / guard.manifest["stage_dirs"]["student"]
    if not student_dir.is_dir():
        parser.error(f"the distilled student is not at {student_dir}; run the benchmark inside the build directory")
    student_config = AutoConfig.from_pretrained(student_dir)
    n_blocks, n_neurons = student_config.num_hidden_layers, student_config.intermediate_size
    too_big = [f"{b}x{k}" for b, k in args.structures if b > n_blocks or k > n_neurons]
    if too_big:
        parser.error(f"{', '.join(too_big)} exceed the student's {n_blocks} blocks x {n_neurons} neurons")

    def rate(model: torch.nn.Module) -> float:   # the full head: no verdict is read, only time
        return _rate(model, guard, test, args.batch_size, None)[0]

    torch.manual_seed(0)
    teacher = load_model(str(teacher_dir), dtype="float32")
    before = rate(teacher)
    rows = []
    print(f"{'structure':<12} {'judgments/s':>12} {'teacher fp32':>13} {'ratio':>7}")
    for blocks, neurons in args.structures:
        model = load_model(str(student_dir), dtype="float32")
        if blocks < n_blocks:                      # keep the last block (it feeds the head), drop those below it
            prune_blocks(model, list(range(blocks - 1, n_blocks - 1)))
        if neurons < n_neurons:
            prune_neurons(model, neurons, torch.rand(blocks, n_neurons))
        prepare_qat(model, group_size=build.group_size, quantize_embedding=build.quantize_embedding,
                    act_int8=build.act_int8)
        convert_qat(model)
        per_second = rate(model)
        after = rate(teacher)
        ratio = per_second / ((before + after) / 2)
        rows.append({"blocks": blocks, "neurons": neurons, "per_second": round(per_second, 3),
                     "teacher_per_second": round((before + after) / 2, 3), "ratio": round(ratio, 3)})
        print(f"{blocks:>3} x {neurons:<6} {per_second:>12.2f} {(before + after) / 2:>13.2f} {ratio:>6.2f}x")
        before = after
    result = {"environment": serve_setup.environment(), "guard": str(args.guard), "n": len(test),
              "batch_size": args.batch_size, "rows": rows}
    print(f"wrote {serve_setup.write_results('guard_structures', result)}")


if __name__ == "__main__":
    main()
