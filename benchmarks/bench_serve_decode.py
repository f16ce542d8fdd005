"""Decode throughput of 1, 4 and 8 tenants: batched packed deltas vs the two naive ways to serve them.

For each number of tenants N, every tenant sends ``--requests`` requests (arithmetic questions in
the chat template) and each request generates exactly ``--new-tokens`` tokens (greedy, EOS
ignored, so every path does the same work). Three ways to serve them, timed end to end:

* packed: ``deltaguard serve``'s engine — one shared base, the N packed 1-bit deltas, all requests
  of all tenants continuously batched into one forward pass per decode step;
* swap: one model; for each request, the tenant's weights are merged in (base weights restored,
  decompressed delta added) and the request is generated alone;
* full: one merged full model per tenant kept in memory; each tenant's requests batched together;
* base: the limit case — the base model alone serving the same batch with no deltas at all (all requests
  batched together in one model, as a single-model server would): what packed serving costs over that.

Goals (CPU, 8 tenants × 2 requests, end to end): packed ≥ 5× the tokens/s of swap and ≥ 0.6× the base
alone (issue 15; issue 6 asked ≥ 3× swap). Tokens of every request are also compared between packed and
full (the same compressed delta, so they should agree).

    python benchmarks/bench_serve_decode.py [--tenants 1 4 8] [--requests 2] [--new-tokens 32] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402


def make_requests(tokenizer, n_tenants: int, per_tenant: int) -> list[tuple[int, list[int]]]:
    """(tenant index, prompt ids), interleaved over tenants as they would arrive."""
    from deltaguard.data import load_prompts
    from deltaguard.models import chat_prompt

    prompts = load_prompts("arith", split="eval", limit=n_tenants * per_tenant, seed=1).prompts
    requests = []
    for i, prompt in enumerate(prompts):
        text = chat_prompt(tokenizer, prompt.text)
        requests.append((i % n_tenants, tokenizer(text, add_special_tokens=False)["input_ids"]))
    return requests


def run_packed(base, tokenizer, deltas, requests, new_tokens: int) -> tuple[float, list[list[int]]]:
    from deltaguard.serve import Engine, EngineConfig, MultiTenantModel, SamplingParams

    mt = MultiTenantModel(base)
    for index, delta in enumerate(deltas):
        mt.add_tenant(f"t{index}", delta)
    engine = Engine(mt, tokenizer, EngineConfig(max_batch_size=len(requests), max_prefills_per_step=len(requests)))
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    started = time.perf_counter()
    handles = [engine.submit(f"t{index}", ids, params) for index, ids in requests]
    engine.step()                                   # all prompts prefilled in one forward, + one decode step
    first = time.perf_counter()
    n_first = sum(len(h.token_ids) for h in handles)
    engine.run_until_idle()
    seconds = time.perf_counter() - started
    for index in range(len(deltas)):
        mt.remove_tenant(f"t{index}")
    phase = Phase(seconds, seconds - (first - started), len(requests) * new_tokens - n_first)
    return phase, [h.token_ids for h in handles]


@dataclass
class Phase:
    """End-to-end seconds, and the seconds and tokens of the decode phase (after each prompt's first token)."""

    seconds: float
    decode_seconds: float
    decode_tokens: int


def _decode_one_batch(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> tuple[list[list[int]], float]:
    """(tokens, seconds after the first token) of one ``generation.decode_batch`` call."""
    from deltaguard.generation import GenerationConfig, decode_batch

    config = GenerationConfig(max_new_tokens=new_tokens, batch_size=len(prompts))
    marks: list[float] = []
    tokens = decode_batch(model, prompts, config=config, stop_ids={-1}, pad_id=pad_id,  # -1: never stop early
                          on_first_logits=lambda _logits: marks.append(time.perf_counter()))
    return tokens, time.perf_counter() - marks[0]


def run_swap(base, deltas, requests, new_tokens: int, pad_id: int) -> tuple[Phase, list[list[int]], float]:
    """Per request: restore the base weights, merge the tenant's delta, generate the request alone.

    Its decode phase counts the merges too: swapping weights is that baseline's per-request cost."""
    names = sorted({name for d in deltas for name in d.tensors})
    originals = {name: base.get_parameter(name).detach().clone() for name in names}
    outputs, merge_seconds, decode_seconds = [], 0.0, 0.0
    started = time.perf_counter()
    with torch.inference_mode():
        for index, ids in requests:
            merge_started = time.perf_counter()
            delta = deltas[index]
            for name in names:
                param = base.get_parameter(name)
                param.copy_(originals[name])
                if name in delta.tensors:
                    param += delta.decompress(name).to(param.device, param.dtype)
            merge_seconds += time.perf_counter() - merge_started
            tokens, after_first = _decode_one_batch(base, [ids], new_tokens, pad_id)
            outputs.append(tokens[0])
            decode_seconds += after_first
    seconds = time.perf_counter() - started
    with torch.no_grad():
        for name in names:
            base.get_parameter(name).copy_(originals[name])
    phase = Phase(seconds, decode_seconds + merge_seconds, len(requests) * (new_tokens - 1))
    return phase, outputs, merge_seconds


def run_full(base, deltas, requests, new_tokens: int, pad_id: int) -> tuple[Phase, list[list[int]]]:
    from deltaguard.delta import apply_delta

    models = [apply_delta(base, delta, check=False) for delta in deltas]  # built before timing: held in memory
    outputs: list[list[int] | None] = [None] * len(requests)
    decode_seconds = 0.0
    started = time.perf_counter()
    with torch.inference_mode():
        for index, model in enumerate(models):
            rows = [i for i, (t, _) in enumerate(requests) if t == index]
            tokens, after_first = _decode_one_batch(model, [requests[i][1] for i in rows], new_tokens, pad_id)
            decode_seconds += after_first
            for row, row_tokens in zip(rows, tokens):
                outputs[row] = row_tokens
    phase = Phase(time.perf_counter() - started, decode_seconds, len(requests) * (new_tokens - 1))
    return phase, outputs  # type: ignore[return-value]


def run_base(base, requests, new_tokens: int, pad_id: int) -> Phase:
    """The base model alone, every request in one batch: the throughput packed serving tends to at best."""
    with torch.inference_mode():
        started = time.perf_counter()
        _, after_first = _decode_one_batch(base, [ids for _, ids in requests], new_tokens, pad_id)
    return Phase(time.perf_counter() - started, after_first, len(requests) * (new_tokens - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=2, help="requests per tenant")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for every path (1: on a shared 2-core machine, OpenMP threads "
                             "spin-wait against other processes and small ops slow down many-fold)")
    args = parser.parse_args()

    from deltaguard.delta import load_delta
    from deltaguard.models import load_model, load_tokenizer, set_threads

    set_threads(args.threads)
    paths = serve_setup.tenant_deltas(max(args.tenants))
    tokenizer = load_tokenizer(serve_setup.BASE)
    base = load_model(serve_setup.BASE, device=args.device)
    all_deltas = [load_delta(p) for p in paths]
    if base.device.type == "cuda":  # compile the Triton kernels and warm the allocator before anything is timed
        warm_requests = make_requests(tokenizer, 1, 1)
        run_packed(copy.deepcopy(base), tokenizer, all_deltas[:1], warm_requests, 4)
        _decode_one_batch(base, [warm_requests[0][1]], 4, tokenizer.pad_token_id)
    rows = []
    for n in args.tenants:
        deltas = all_deltas[:n]
        requests = make_requests(tokenizer, n, args.requests)
        n_tokens = len(requests) * args.new_tokens
        packed, packed_out = run_packed(copy.deepcopy(base), tokenizer, deltas, requests, args.new_tokens)
        swap, swap_out, merge_s = run_swap(base, deltas, requests, args.new_tokens, tokenizer.pad_token_id)
        full, full_out = run_full(base, deltas, requests, args.new_tokens, tokenizer.pad_token_id)
        alone = run_base(base, requests, args.new_tokens, tokenizer.pad_token_id)
        agree = sum(p == f for p, f in zip(packed_out, full_out)) / len(requests)
        agree_swap = sum(s == f for s, f in zip(swap_out, full_out)) / len(requests)
        row = {"n_tenants": n, "n_requests": len(requests), "new_tokens": args.new_tokens, "total_tokens": n_tokens,
               "swap_merge_seconds": round(merge_s, 2),
               "packed_equals_full_tokens": agree, "swap_equals_full_tokens": agree_swap}
        for name, phase in (("packed", packed), ("swap", swap), ("full", full), ("base", alone)):
            row[f"{name}_seconds"] = round(phase.seconds, 2)
            row[f"{name}_tokens_per_s"] = round(n_tokens / phase.seconds, 2)
            row[f"{name}_decode_tokens_per_s"] = round(phase.decode_tokens / phase.decode_seconds, 2)
        for other in ("swap", "full", "base"):
            row[f"packed_over_{other}"] = round(row["packed_tokens_per_s"] / row[f"{other}_tokens_per_s"], 2)
            row[f"packed_over_{other}_decode"] = round(
                row["packed_decode_tokens_per_s"] / row[f"{other}_decode_tokens_per_s"], 2)
        rows.append(row)
        print(f"N={n}: packed {row['packed_tokens_per_s']} tok/s (decode phase {row['packed_decode_tokens_per_s']}), "
              f"swap {row['swap_tokens_per_s']} ({row['swap_decode_tokens_per_s']}; merging {merge_s:.1f} of "
              f"{swap.seconds:.1f} s), full {row['full_tokens_per_s']} ({row['full_decode_tokens_per_s']})", flush=True)

    print()
    print("tokens/s end to end (decode phase only: after each prompt's first token; swap's includes its merges)")
    print(f"{'tenants':>7} {'requests':>8} {'packed':>15} {'swap':>15} {'full':>15} {'base alone':>15} "
          f"{'packed/swap':>13} {'packed/full':>13} {'packed/base':>13} {'same tokens':>11}")
    for r in rows:
        cells = [f"{r[f'{k}_tokens_per_s']:6.2f} ({r[f'{k}_decode_tokens_per_s']:6.2f})"
                 for k in ("packed", "swap", "full", "base")]
        print(f"{r['n_tenants']:>7} {r['n_requests']:>8} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {cells[3]:>15} "
              f"{r['packed_over_swap']:5.2f}x ({r['packed_over_swap_decode']:4.2f}x) "
              f"{r['packed_over_full']:5.2f}x ({r['packed_over_full_decode']:4.2f}x) "
              f"{r['packed_over_base']:5.2f}x ({r['packed_over_base_decode']:4.2f}x) {r['packed_equals_full_tokens']:>10.0%}")
    goal = next((r for r in rows if r["n_tenants"] == 8), None)
    if goal is not None:  # end to end (with prefill) is what a user waits for; the decode phase is shown beside it
        for what, key, target in (("packed ≥ 5x swap", "packed_over_swap", 5.0),
                                  ("packed ≥ 0.6x the base alone", "packed_over_base", 0.6)):
            for phase, suffix in (("end to end", ""), ("decode phase", "_decode")):
                verdict = "met" if goal[key + suffix] >= target else "NOT met"
                print(f"goal (8 tenants × {args.requests} requests, {what}, {phase}): {goal[key + suffix]:.2f}x — "
                      f"{verdict}")
    from deltaguard.kernels import pick_backend

    env = serve_setup.environment() | {"device": args.device, "kernel": pick_backend(base.device, "auto")}
    name = 'serve_decode' if args.requests == 2 else f'serve_decode_r{args.requests}'
    print(f"wrote {serve_setup.write_results(name, {'environment': env, 'rows': rows})}")


if __name__ == "__main__":
    main()
