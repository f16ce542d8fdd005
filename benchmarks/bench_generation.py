"""Batched vs one-prompt-at-a-time ``generate`` on SmolLM2-135M-Instruct, CPU (goal, issue 3: >= 4x prompts/s).

Both modes run deltaguard's own engine on the same 64 prompts (32 AdvBench + 32 benign, eval
split) with greedy decoding and 64 new tokens at most; only ``batch_size`` differs, so the speed-up
is what batching buys. Responses may stop early at EOS; the two modes produce the same greedy
responses (checked and reported), so they do the same work. The CPU is shared with other jobs, so
the load average before and after each mode is recorded next to the timings.

    python benchmarks/bench_generation.py [--n-prompts 64] [--max-new-tokens 64] [--batch-sizes 16,32]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run_mode(model, tokenizer, prompts: list[str], *, batch_size: int, max_new_tokens: int, one_at_a_time: bool):
    from deltaguard.generation import GenerationConfig, generate

    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    if one_at_a_time:
        generations = [generate(model, tokenizer, [p], config, progress=False)[0] for p in prompts]
    else:
        generations = generate(model, tokenizer, prompts, config, progress=False)
    seconds = time.perf_counter() - started
    n_tokens = sum(g.n_new_tokens for g in generations)
    return {
        "mode": "one-at-a-time" if one_at_a_time else f"batched (batch_size={batch_size})",
        "batch_size": 1 if one_at_a_time else batch_size,
        "seconds": seconds,
        "prompts_per_s": len(prompts) / seconds,
        "new_tokens": n_tokens,
        "tokens_per_s": n_tokens / seconds,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg()[0],
    }, [g.response for g in generations]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="16,32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--goal", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "generation.json")
    args = parser.parse_args()

    import torch

    from deltaguard.data import load_prompts
    from deltaguard.io import write_json
    from deltaguard.models import DEFAULT_MODEL, load_model, load_tokenizer, set_threads

    set_threads(args.threads)
    model = load_model(DEFAULT_MODEL)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    half = args.n_prompts // 2
    prompts = (load_prompts("advbench", split="eval", limit=half).texts
               + load_prompts("benign", split="eval", limit=args.n_prompts - half).texts)

    # Warm up kernels and allocator so neither mode pays the first-call cost.
    run_mode(model, tokenizer, prompts[:2], batch_size=2, max_new_tokens=4, one_at_a_time=False)

    rows = []
    single, single_responses = run_mode(model, tokenizer, prompts, batch_size=1,
                                        max_new_tokens=args.max_new_tokens, one_at_a_time=True)
    rows.append(single)
    for batch_size in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
        row, responses = run_mode(model, tokenizer, prompts, batch_size=batch_size,
                                  max_new_tokens=args.max_new_tokens, one_at_a_time=False)
        row["speedup_prompts_per_s"] = row["prompts_per_s"] / single["prompts_per_s"]
        row["same_responses_as_one_at_a_time"] = sum(a == b for a, b in zip(responses, single_responses))
        rows.append(row)

    best = max(r.get("speedup_prompts_per_s", 0.0) for r in rows)
    print(f"SmolLM2-135M-Instruct, CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()}), "
          f"{len(prompts)} prompts x <= {args.max_new_tokens} new tokens, greedy")
    print(f"{'mode':32} {'seconds':>8} {'prompts/s':>10} {'tokens/s':>9} {'speed-up':>9} {'same':>5} {'load':>11}")
    for r in rows:
        speed = f"{r['speedup_prompts_per_s']:.2f}x" if "speedup_prompts_per_s" in r else "1.00x"
        same = str(r.get("same_responses_as_one_at_a_time", "-"))
        print(f"{r['mode']:32} {r['seconds']:8.1f} {r['prompts_per_s']:10.3f} {r['tokens_per_s']:9.1f} {speed:>9} "
              f"{same:>5} {r['load_avg_before']:5.1f}>{r['load_avg_after']:<5.1f}")
    print(f"best speed-up {best:.2f}x (goal >= {args.goal:.1f}x): {'met' if best >= args.goal else 'NOT met'}")
    write_json(args.out, {
        "benchmark": "generation", "model": DEFAULT_MODEL, "device": "cpu", "threads": torch.get_num_threads(),
        "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "rows": rows, "best_speedup": best,
        "goal": args.goal, "goal_met": best >= args.goal, "python": sys.version.split()[0],
        "torch": torch.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
