"""Memory of multi-tenant serving: one base + N packed 1-bit deltas vs N full models, N = 1..16, measured.

Each side runs in its own subprocess and reports its resident set size (RSS) after each tenant is
added (freed memory is returned to the OS with ``malloc_trim`` before each reading):

* packed: the base SmolLM2-135M (fp32) in a ``MultiTenantModel`` after one base forward pass (its
  lazily built buffers and allocator pools count as the base) and after one delta was loaded and
  dropped (the loading code's imports and one-time caches, ~1 MiB, do not grow with the number of
  tenants, so they count as the server too), then tenant deltas attached one by
  one (what ``deltaguard serve`` holds), each followed by one forward pass for that tenant so all
  of its parts are resident (safetensors maps files lazily); also the exact bytes of the parts;
* full: one merged fp32 model per tenant, loaded one by one; readings stop at ``--full-budget-gib``
  (the machine is shared) and the rest is extrapolated from the measured per-model growth (marked).

Goal (issue 6): memory ≤ base + N × (linear parameters / 8) bytes plus scales.

    python benchmarks/bench_serve_memory.py [--max-tenants 16] [--full-budget-gib 6]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402
import torch  # noqa: E402


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def child_packed(max_tenants: int) -> dict:
    from deltaguard.delta import load_delta
    from deltaguard.models import load_model
    from deltaguard.serve import MultiTenantModel

    paths = serve_setup.tenant_deltas(max_tenants, log=False)
    _trim()
    rss_empty = serve_setup.rss_bytes()
    model = load_model(serve_setup.BASE)
    mt = MultiTenantModel(model)
    with torch.inference_mode():  # the base's own first-forward allocations belong to serving the base
        mt([None], input_ids=torch.tensor([[1, 2, 3]]))
    load_delta(paths[0])  # loaded and dropped: the delta loader's imports and one-time caches are the server's, not a tenant's
    _trim()
    rss_base = serve_setup.rss_bytes()
    base_param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    held = 0
    for n, path in enumerate(paths, start=1):
        delta = load_delta(path)
        linear_params = sum(t.stats.n_params for t in delta.tensors.values() if t.kind == "linear")
        n_scales = sum(t.parts["scales"].numel() for t in delta.tensors.values() if t.encoding == "bitdelta")
        non_linear = [name for name, t in delta.tensors.items() if t.kind != "linear"]
        name = f"tenant-{n - 1:02d}"
        mt.add_tenant(name, delta)
        held += mt.footprint(name).n_bytes
        del delta
        with torch.inference_mode():  # one forward reads every part, so all of it is resident when measured
            mt([name], input_ids=torch.tensor([[1, 2, 3]]))
        _trim()
        rows.append({"n": n, "rss_bytes": serve_setup.rss_bytes(), "held_delta_bytes": held,
                     "linear_params": linear_params, "n_scales": n_scales, "non_linear_tensors": non_linear})
    return {"rss_empty_bytes": rss_empty, "rss_base_bytes": rss_base, "base_param_bytes": base_param_bytes, "rows": rows}


def child_full(max_tenants: int, budget_bytes: int) -> dict:
    from deltaguard.delta import apply_delta_, load_delta
    from deltaguard.models import load_model

    paths = serve_setup.tenant_deltas(max_tenants, log=False)
    _trim()
    rss_empty = serve_setup.rss_bytes()
    models, rows = [], []
    for n, path in enumerate(paths, start=1):
        if rows and rows[-1]["rss_bytes"] + (rows[-1]["rss_bytes"] - rss_empty) / len(rows) > budget_bytes:
            break
        model = load_model(serve_setup.BASE)
        apply_delta_(model, load_delta(path))
        models.append(model)
        _trim()
        rows.append({"n": n, "rss_bytes": serve_setup.rss_bytes()})
    return {"rss_empty_bytes": rss_empty, "rows": rows}


def run_child(kind: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--max-tenants", str(args.max_tenants),
               "--full-budget-gib", str(args.full_budget_gib)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tenants", type=int, default=16)
    parser.add_argument("--full-budget-gib", type=float, default=6.0)
    parser.add_argument("--child", choices=["packed", "full"])
    args = parser.parse_args()
    if args.child == "packed":
        print(json.dumps(child_packed(args.max_tenants)))
        return
    if args.child == "full":
        print(json.dumps(child_full(args.max_tenants, int(args.full_budget_gib * 2**30))))
        return

    serve_setup.tenant_deltas(args.max_tenants)  # make missing tenants first (slow, once)
    packed = run_child("packed", args)
    full = run_child("full", args)
    mib = 2**20
    base_rss = packed["rss_base_bytes"] - packed["rss_empty_bytes"]        # the base model in the process
    full_measured = {r["n"]: r["rss_bytes"] - full["rss_empty_bytes"] for r in full["rows"]}
    per_model = max(full_measured.values()) / max(full_measured)           # measured growth per full model
    table = []
    for row in packed["rows"]:
        n = row["n"]
        packed_bytes = row["rss_bytes"] - packed["rss_empty_bytes"]
        allowance = base_rss + n * (row["linear_params"] / 8 + 4 * row["n_scales"])
        full_bytes = full_measured.get(n, per_model * n)
        table.append({
            "n_tenants": n,
            "packed_rss_mib": round(packed_bytes / mib, 1),
            "packed_delta_rss_mib": round((packed_bytes - base_rss) / mib, 2),
            "held_delta_mib": round(row["held_delta_bytes"] / mib, 2),
            "goal_mib": round(allowance / mib, 1),
            "held_meets_goal": base_rss + row["held_delta_bytes"] <= allowance,
            "rss_meets_goal": packed_bytes <= allowance,
            "full_rss_mib": round(full_bytes / mib, 1),
            "full_is_measured": n in full_measured,
            "full_over_packed": round(full_bytes / packed_bytes, 2),
        })
    print(f"{'N':>3} {'packed RSS':>11} {'of it deltas':>13} {'held parts':>11} {'goal':>9} {'N full models':>14} {'ratio':>6}")
    for r in table:
        mark = "" if r["full_is_measured"] else "*"
        print(f"{r['n_tenants']:>3} {r['packed_rss_mib']:>8.1f} MiB {r['packed_delta_rss_mib']:>9.2f} MiB "
              f"{r['held_delta_mib']:>7.2f} MiB {r['goal_mib']:>5.1f} MiB {r['full_rss_mib']:>9.1f} MiB{mark:1} "
              f"{r['full_over_packed']:>5.2f}x")
    print("* extrapolated from the measured growth per full model "
          f"({per_model / mib:.1f} MiB; measured up to N={max(full_measured)} within the {args.full_budget_gib:g} GiB budget)")
    last = packed["rows"][-1]
    per_tenant_rss = (packed["rows"][-1]["rss_bytes"] - packed["rss_base_bytes"]) / len(packed["rows"])
    per_tenant_goal = last["linear_params"] / 8 + 4 * last["n_scales"]
    print(f"per tenant: held {last['held_delta_bytes'] / len(packed['rows']) / mib:.3f} MiB, RSS growth "
          f"{per_tenant_rss / mib:.3f} MiB, goal linear/8 + scales = {per_tenant_goal / mib:.3f} MiB; "
          f"non-linear tensors in the deltas: {last['non_linear_tensors'] or 'none'}")
    result = {"environment": serve_setup.environment(), "base_rss_mib": round(base_rss / mib, 1),
              "base_param_mib": round(packed["base_param_bytes"] / mib, 1),
              "per_tenant_held_mib": round(last["held_delta_bytes"] / len(packed["rows"]) / mib, 4),
              "per_tenant_rss_growth_mib": round(per_tenant_rss / mib, 4),
              "per_tenant_goal_mib": round(per_tenant_goal / mib, 4),
              "per_full_model_mib": round(per_model / mib, 1), "rows": table}
    print(f"wrote {serve_setup.write_results('serve_memory', result)}")


if __name__ == "__main__":
    main()
