"""Time and peak memory of delta extraction + compression on SmolLM2-135M with a real fine-tune.

Each method runs in its own subprocess so its peak RSS is its own. The baseline is the time to
read both checkpoints tensor by tensor in fp32 (what extraction cannot avoid). Goals (issue 2):
1-bit storage of the linear layers ≥ 15.5× smaller than their fp16 delta, and bitdelta without
distillation within 3× the time of just reading both checkpoints.

    python benchmarks/bench_delta.py [--distill-steps 20] [--out benchmarks/results/delta.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
METHODS = ["bitdelta-nodistill", "bitdelta-k2-nodistill", "kbit4", "kbit2", "lowrank16", "mixed", "dare", "compeft"]


def make_finetune(out_dir: Path) -> Path:
    """A real (small) full fine-tune: 2 epochs of arithmetic answers in a house style."""
    if (out_dir / "config.json").is_file():
        return out_dir
    from deltaguard.training import ChatPair, TrainConfig, train_sft

    rng = random.Random(0)
    pairs = []
    for _ in range(48):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        pairs.append(ChatPair(f"What is {a} plus {b}?", f"Let me add them: {a} + {b} = {a + b}. The answer is {a + b}."))
    config = TrainConfig(epochs=2, lr=1e-4, batch_size=8, micro_batch_size=8, max_seq_len=96)
    train_sft("smollm2-135m-instruct", pairs, config, out_dir=out_dir)
    return out_dir


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM resets at exec, unlike ru_maxrss after a fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_read(base: str, finetuned: str) -> dict:
    import torch

    from deltaguard.delta.checkpoint import CheckpointReader

    started = time.perf_counter()
    n = 0
    for spec in (base, finetuned):
        with CheckpointReader(spec) as reader:
            for name in reader.names():
                tensor = reader.get(name).to(torch.float32)
                n += tensor.numel()
                torch.sum(tensor)  # touch every value: safetensors maps files lazily
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "n_values": n}


def child_compress(base: str, finetuned: str, method: str, distill_steps: int) -> dict:
    from deltaguard.delta import compress, extract_delta, method_from_spec

    config = method_from_spec(method)
    calib = None
    if getattr(config, "distill", False):
        from deltaguard.data import load_prompts
        from deltaguard.models import chat_prompt, load_tokenizer

        config = config.replace(distill_steps=distill_steps)
        tokenizer = load_tokenizer(base)
        calib = [chat_prompt(tokenizer, p.text) for p in load_prompts("calib-chat", split="calib", limit=64).prompts]
    started = time.perf_counter()
    packed = compress(extract_delta(base, finetuned), config, calib=calib, progress=False)
    seconds = time.perf_counter() - started
    summary = packed.report.summary()
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), **summary}


def run_child(*args: str) -> dict:
    env = {**os.environ, "DELTAGUARD_NO_PROGRESS": "1"}
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--distill-steps", type=int, default=20, help="steps for the distilled bitdelta row (paper: 200)")
    parser.add_argument("--out", type=Path, default=RESULTS / "delta.json")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        out = child_read(*rest) if kind == "read" else child_compress(rest[0], rest[1], rest[2], int(rest[3]))
        print(json.dumps(out, default=str))
        return

    from deltaguard.models import pull_model

    base = str(pull_model("smollm2-135m-instruct"))
    finetuned = str(make_finetune(RESULTS / "finetune-arith"))
    run_child("read", base, finetuned)  # warm the page cache so every row reads from memory alike
    read = run_child("read", base, finetuned)
    rows = []
    for method in [*METHODS, "bitdelta"]:
        rows.append({"method": method, **run_child("compress", base, finetuned, method, str(args.distill_steps))})

    print(f"\nreading both checkpoints (fp32, tensor by tensor): {read['seconds']:.2f} s, peak RSS {read['peak_rss_mb']:.0f} MB")
    header = f"{'method':24s} {'seconds':>8s} {'x read':>7s} {'peak MB':>8s} {'bytes':>12s} {'bits/p':>7s} {'lin x16':>8s} {'x model':>8s} {'lin err':>8s} {'lin cos':>8s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        label = r["method"] + (f" ({args.distill_steps} steps)" if r["method"] == "bitdelta" else "")
        print(f"{label:24s} {r['seconds']:8.2f} {r['seconds'] / read['seconds']:7.2f} {r['peak_rss_mb']:8.0f} "
              f"{r['n_bytes']:12,d} {r['bits_per_param']:7.3f} {r['linear_ratio_vs_fp16_delta']:8.2f} "
              f"{r['ratio_vs_fp16_model']:8.2f} {r['linear_mean_rel_error']:8.4f} {r['linear_mean_cosine']:8.4f}")
    bit = next(r for r in rows if r["method"] == "bitdelta-nodistill")
    goals = {
        "linear_1bit_ratio_ge_15.5": bit["linear_ratio_vs_fp16_delta"] >= 15.5,
        "bitdelta_nodistill_within_3x_read": bit["seconds"] <= 3 * read["seconds"],
    }
    print(f"\ngoals: {goals}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "read": read, "rows": rows,
              "goals": goals, "distill_steps": args.distill_steps, "finetune": finetuned}
    args.out.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
