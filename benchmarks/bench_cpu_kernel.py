"""The bare multi-tenant 1-bit kernels on SmolLM2-135M's linear shapes: C++ vs the PyTorch path.

Decode: 8 tenants × 1, 2 or 4 rows each through ``multi_tenant_bitdelta_`` (the C++ kernel, then the
PyTorch look-up path), reported as microseconds per call and billions of weight·rows per second.
Prefill: one tenant's 128-row prompt through its merged weight tiles (``cpu_bitdelta.merged_linear``
vs ``reference.merged_tile_linear``) beside the base ``F.linear`` of the same rows — the floor — and
beside the base GEMM plus the delta applied as a correction term by the packed kernel.

    python benchmarks/bench_cpu_kernel.py [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402

SHAPES = {"q/o (576→576)": (576, 576), "k/v (576→192)": (192, 576), "gate/up (576→1536)": (1536, 576),
          "down (1536→576)": (576, 1536)}   # (out, in) of SmolLM2-135M's projections
TENANTS = 8
PROMPT_ROWS = 128


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    """The fastest of five timings of ``repeats`` calls (after one warm-up), per call."""
    call()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from deltaguard.delta.packing import pack_signs
    from deltaguard.kernels import cpu_bitdelta, reference

    if not cpu_bitdelta.available():
        sys.exit(f"error: the C++ CPU kernel is unavailable here ({cpu_bitdelta.disabled_reason() or 'build failed'})")
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for label, (n_out, n_in) in SHAPES.items():
        weight = torch.randn(n_out, n_in, generator=generator)
        signs = torch.stack([pack_signs(torch.randn(n_out, n_in, generator=generator))[None] for _ in range(TENANTS)])
        scales = torch.rand(TENANTS, 1, generator=generator) * 1e-3
        for per_tenant in (1, 2, 4):
            slots = torch.arange(TENANTS).repeat_interleave(per_tenant)
            x = torch.randn(len(slots), n_in, generator=generator)
            y = torch.zeros(len(slots), n_out)
            # the tables as a serving layer holds them: built and checked once, then only the kernel runs
            bits = [s.contiguous().view(-1) for s in signs]
            layout = torch.tensor([[0, 1]] * TENANTS, dtype=torch.int64)
            cpu_bitdelta.check_tables(bits, layout, scales, n_out=n_out, n_in=n_in)
            cpp = best_seconds(lambda: cpu_bitdelta.multi_tenant_bitdelta_at_(y, x, bits, layout, scales, slots,
                                                                              tables_checked=True), args.repeats)
            torch_path = best_seconds(lambda: reference.multi_tenant_bitdelta_(y, x, signs, scales, slots),
                                      max(1, args.repeats // 4))
            work = len(slots) * n_out * n_in
            rows.append({"phase": "decode", "shape": label, "rows_per_tenant": per_tenant, "cpp_us": cpp * 1e6,
                         "torch_us": torch_path * 1e6, "cpp_gwr_per_s": work / cpp / 1e9,
                         "speedup_vs_torch": torch_path / cpp})
        prompt = torch.randn(PROMPT_ROWS, n_in, generator=generator)
        scale = [float(scales[0, 0])]
        merged = best_seconds(lambda: cpu_bitdelta.merged_linear(prompt, weight, None, signs[0], scale), args.repeats)
        merged_torch = best_seconds(lambda: reference.merged_tile_linear(prompt, weight, None, signs[0], scale),
                                    args.repeats)
        base = best_seconds(lambda: torch.nn.functional.linear(prompt, weight), args.repeats)
        # the other way to serve a prompt: the base GEMM plus the delta as a correction term (the packed kernel)
        prompt_slots = torch.zeros(PROMPT_ROWS, dtype=torch.long)
        prompt_y = torch.zeros(PROMPT_ROWS, n_out)
        correction = best_seconds(lambda: cpu_bitdelta.multi_tenant_bitdelta_at_(
            prompt_y, prompt, bits[:1], layout[:1], scales[:1], prompt_slots, tables_checked=True), args.repeats)
        rows.append({"phase": "prefill", "shape": label, "rows_per_tenant": PROMPT_ROWS, "cpp_us": merged * 1e6,
                     "torch_us": merged_torch * 1e6, "base_linear_us": base * 1e6,
                     "base_plus_correction_us": (base + correction) * 1e6,
                     "speedup_vs_torch": merged_torch / merged, "cpp_over_base_linear": merged / base})

    print(f"{TENANTS} tenants, torch threads {args.threads}; decode: all tenants in one call; prefill: one tenant's "
          f"{PROMPT_ROWS}-row prompt")
    print(f"{'phase':>7} {'shape':>20} {'rows/tenant':>11} {'C++ µs':>9} {'torch µs':>9} {'C++/torch':>9} {'extra':>26}")
    for r in rows:
        extra = (f"{r['cpp_gwr_per_s']:.1f} G weight·rows/s" if r["phase"] == "decode"
                 else f"{r['cpp_over_base_linear']:.2f}x the base linear; base + correction term "
                      f"{r['base_plus_correction_us'] / r['base_linear_us']:.2f}x")
        print(f"{r['phase']:>7} {r['shape']:>20} {r['rows_per_tenant']:>11} {r['cpp_us']:9.0f} {r['torch_us']:9.0f} "
              f"{r['speedup_vs_torch']:8.1f}x {extra:>26}")
    env = serve_setup.environment() | {"simd": torch.backends.cpu.get_cpu_capability()}
    rounded = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    print(f"wrote {serve_setup.write_results('cpu_kernel', {'environment': env, 'rows': rounded})}")


if __name__ == "__main__":
    main()
