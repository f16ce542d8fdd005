"""Time of the logit lens on SmolLM2-135M-Instruct over 32 AdvBench prompts (goal, issue 5: < 30 s on CPU).

The baseline is one plain forward pass over the same left-padded batches, which the lens cannot
avoid: the lens adds hooks, the decoding of every layer's residual through the final norm and head,
and building the records. The CPU is shared, so the load average before and after is recorded.

    python benchmarks/bench_lens.py [--n-prompts 32] [--repeats 2] [--threads 1,2] [--out benchmarks/results/lens.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def plain_forward_seconds(model, tokenizer, prompts: list[str], config) -> float:
    import torch

    from deltaguard.lens.api import encode_prompts, left_pad

    encoded = sorted(encode_prompts(tokenizer, prompts, config), key=len)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(encoded), config.batch_size):
            ids, mask = left_pad(encoded[start:start + config.batch_size], tokenizer.pad_token_id)
            model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1,
                  use_cache=False)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--goal-seconds", type=float, default=30.0)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch CPU thread counts to time")
    parser.add_argument("--out", type=Path, default=RESULTS / "lens.json")
    args = parser.parse_args()

    import torch

    from deltaguard.data import load_prompts
    from deltaguard.io import write_json
    from deltaguard.lens import LensConfig, logit_lens
    from deltaguard.models import DEFAULT_MODEL, load_model, load_tokenizer

    load_before = os.getloadavg()
    started = time.perf_counter()
    model = load_model(DEFAULT_MODEL)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    load_seconds = time.perf_counter() - started
    prompt_set = load_prompts("advbench", split="eval", limit=args.n_prompts)
    texts = [p.text for p in prompt_set.prompts]

    variants = {
        "plain forward (baseline)": None,
        "lens default (answer position + 1 detail prompt, both checks)": LensConfig(),
        "lens answer position only, last-layer check only": LensConfig(n_detail_prompts=0, check_hidden_states=False),
    }
    rows = []
    check = None
    for n_threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(n_threads)
        logit_lens(model, tokenizer, texts[:2], LensConfig())  # warm-up (allocator, kernels)
        for name, config in variants.items():
            times = []
            for _ in range(args.repeats):
                if config is None:
                    times.append(plain_forward_seconds(model, tokenizer, texts, LensConfig()))
                else:
                    begin = time.perf_counter()
                    result = logit_lens(model, tokenizer, prompt_set, config)
                    times.append(time.perf_counter() - begin)
                    check = check or result.checks[0]
            rows.append({"variant": name, "threads": n_threads, "seconds_min": min(times),
                         "seconds_median": statistics.median(times), "seconds_all": times})
    load_after = os.getloadavg()

    default_rows = [r for r in rows if r["variant"].startswith("lens default")]
    best = min(default_rows, key=lambda r: r["seconds_median"])
    print(f"logit lens, {DEFAULT_MODEL}, {len(texts)} AdvBench eval prompts, load average "
          f"{load_before[0]:.1f} → {load_after[0]:.1f} on {os.cpu_count()} CPUs (shared)")
    print(f"{'variant':<66} {'threads':>7} {'min s':>7} {'median s':>9}")
    for row in rows:
        print(f"{row['variant']:<66} {row['threads']:>7} {row['seconds_min']:>7.2f} {row['seconds_median']:>9.2f}")
    print(f"model load {load_seconds:.1f} s; last-layer check max |diff| {check.last_layer_max_abs_diff:.1e}, "
          f"hidden-state parity max |diff| {check.hidden_state_max_abs_diff:.1e}")
    is_met = best["seconds_median"] < args.goal_seconds
    print(f"goal < {args.goal_seconds:.0f} s for the default lens: {'met' if is_met else 'NOT met'} "
          f"({best['seconds_median']:.1f} s median with {best['threads']} thread(s))")

    write_json(args.out, {
        "benchmark": "lens", "model": DEFAULT_MODEL, "n_prompts": len(texts), "prompt_set": prompt_set.name,
        "split": prompt_set.split, "content_hash": prompt_set.content_hash, "n_layers": check.n_layers,
        "torch": torch.__version__, "python": sys.version.split()[0],
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_average_before": load_before,
        "load_average_after": load_after, "model_load_seconds": load_seconds, "rows": rows,
        "goal_seconds": args.goal_seconds, "goal_met": is_met, "best_default": best,
        "last_layer_max_abs_diff": check.last_layer_max_abs_diff,
        "hidden_state_max_abs_diff": check.hidden_state_max_abs_diff,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
