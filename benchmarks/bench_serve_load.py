"""Load test: concurrent clients of several tenants against ``deltaguard serve`` over loopback.

Starts the real CLI server (``deltaguard serve --base smollm2-135m-instruct --tenants ...``) ONCE in a
subprocess on a free 127.0.0.1 port, with one freshly made API key per tenant, then sweeps the
concurrency levels of ``--clients`` (default ``1 8 32``) against that same process. At each level,
``C`` concurrent clients each send ``--requests`` chat completions one after another to their tenant
(client ``i`` → tenant ``i mod N``); half the clients stream (SSE) so time to first token is measured
too. Between levels the server's queue is drained (/health shows no active or waiting sequences).
Everything is bounded: a fixed number of requests and ``--timeout`` seconds per level.

For each level it reports p50/p95/p99/max latency, TTFT p50/p95/p99 (streaming half), errors by kind
(goal: zero), aggregate tokens/s, and cross-checks the server's own /metrics (Prometheus exposition,
parsed with ``prometheus_client``): the difference of its counters over the level must match what the
clients saw — counters accumulate over the whole process, so each level is measured as after − before.

    python benchmarks/bench_serve_load.py [--tenants 4] [--clients 1 8 32] [--requests 3] [--max-tokens 16] [--server-threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402

QUESTIONS = ["What is 17 plus 25?", "Name three colours of the rainbow.", "How many days are in a week?",
             "Give me a tip for baking bread.", "What is 9 times 7?", "Say hello in French."]
PERCENTILES = (50, 95, 99)
DRAIN_TIMEOUT_S = 120.0     # bound on waiting for the queue to empty after a level
METRICS_SETTLE_S = 10.0     # bound on waiting for /metrics to count requests whose response already reached us


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], pct: int) -> float | None:
    """Nearest-rank percentile: the smallest observed value with at least ``pct`` % of the values at or below it
    (rank ``ceil(pct/100 · n)``, integer arithmetic), so the result is always an observed latency.

    ``None`` for no values. With fewer than ``100 / (100 − pct)`` values (p95: 20, p99: 100) the rank is ``n``,
    i.e. the result is the maximum: see ``is_resolved``.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, (pct * len(ordered) + 99) // 100)
    return ordered[rank - 1]


def is_resolved(n: int, pct: int) -> bool:
    """Whether ``n`` samples are enough for the nearest-rank ``pct`` percentile to differ from the maximum."""
    return n > 0 and (pct * n + 99) // 100 < n


async def client(http, index: int, tenant: str, key: str, n_requests: int, max_tokens: int, stream: bool,
                 records: list[dict]) -> None:
    """Sends ``n_requests`` one after another; each finished request is appended to ``records`` at once, so a level
    that hits its timeout keeps what did finish."""
    headers = {"Authorization": f"Bearer {key}"}
    for r in range(n_requests):
        body = {"model": tenant, "messages": [{"role": "user", "content": QUESTIONS[(index + r) % len(QUESTIONS)]}],
                "max_tokens": max_tokens, "temperature": 0, "stream": stream}
        started = time.perf_counter()
        record = {"client": index, "tenant": tenant, "stream": stream, "status": None, "tokens": 0, "ttft_s": None}
        try:
            if stream:
                body["stream_options"] = {"include_usage": True}
                async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                    record["status"] = response.status_code
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            record["status"] = "stream-error"
                        if record["ttft_s"] is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                            record["ttft_s"] = time.perf_counter() - started
                        if chunk.get("usage"):
                            record["tokens"] = chunk["usage"]["completion_tokens"]
            else:
                response = await http.post("/v1/chat/completions", json=body, headers=headers)
                record["status"] = response.status_code
                if response.status_code == 200:
                    record["tokens"] = response.json()["usage"]["completion_tokens"]
        except Exception as exc:  # a transport failure is a measured error, not a crash of the benchmark
            record["status"] = f"{type(exc).__name__}"
        record["latency_s"] = time.perf_counter() - started
        records.append(record)


async def run_level(url: str, tenants: list[tuple[str, str]], n_clients: int, args: argparse.Namespace
                    ) -> tuple[list[dict], float, int]:
    """One concurrency level: (finished records, wall seconds, requests cut off by the level's timeout)."""
    import httpx

    records: list[dict] = []
    limits = httpx.Limits(max_connections=max(n_clients, 1) + 4, max_keepalive_connections=max(n_clients, 1) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as http:
        started = time.perf_counter()
        jobs = [client(http, i, *tenants[i % len(tenants)], args.requests, args.max_tokens, i % 2 == 1, records)
                for i in range(n_clients)]
        try:
            await asyncio.wait_for(asyncio.gather(*jobs), timeout=args.timeout)
        except TimeoutError:  # the level's bound: unfinished requests are counted as errors by the caller
            pass
        wall_s = time.perf_counter() - started
    return records, wall_s, n_clients * args.requests - len(records)


def scrape(url: str, admin_key: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of the server's /metrics, keyed by (sample name, labels)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict[tuple[str, frozenset], float], name: str, **match: str) -> float:
    """Sum of sample ``name`` over all label sets that include ``match`` (e.g. every tenant)."""
    return sum(v for (n, labels), v in samples.items() if n == name and set(match.items()) <= labels)


def by_label(samples: dict[tuple[str, frozenset], float], name: str, label: str) -> Counter:
    out: Counter = Counter()
    for (n, labels), v in samples.items():
        if n == name:
            out[dict(labels).get(label, "")] += v
    return out


def drain(url: str) -> float | None:
    """Waits (bounded) until the server holds no active or waiting sequence; seconds waited, ``None`` if it never
    emptied (later levels would then measure a busy server, so the sweep stops)."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < DRAIN_TIMEOUT_S:
        try:
            health = httpx.get(f"{url}/health", timeout=5).json()
            if health["active_sequences"] == 0 and health["waiting_requests"] == 0:
                return time.monotonic() - started
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    return None


def server_delta(url: str, admin_key: str, before: dict, n_reached: int) -> tuple[dict, dict]:
    """What /metrics counted during the level (after − before). A request is counted when the server finishes
    its bookkeeping, which can be a moment after the client read its last byte: re-scrape (bounded) until the
    requests that reached the server are all counted."""
    deadline = time.monotonic() + METRICS_SETTLE_S
    while True:
        after = scrape(url, admin_key)
        n_counted = total(after, "deltaguard_requests_total") - total(before, "deltaguard_requests_total")
        if n_counted >= n_reached or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    def diff(name: str, **match: str) -> float:
        return total(after, name, **match) - total(before, name, **match)

    statuses = by_label(after, "deltaguard_requests_total", "status") - by_label(before, "deltaguard_requests_total", "status")
    errors = by_label(after, "deltaguard_errors_total", "type") - by_label(before, "deltaguard_errors_total", "type")
    n_latency = diff("deltaguard_request_latency_seconds_count")
    return {
        "requests": int(n_counted), "requests_by_status": {k: int(v) for k, v in sorted(statuses.items())},
        "ok": int(diff("deltaguard_requests_total", status="ok")),
        "errors_by_type": {k: int(v) for k, v in sorted(errors.items())},
        "completion_tokens": int(diff("deltaguard_tokens_total", kind="completion")),
        "latency_observations": int(n_latency),
        "latency_mean_s": round(diff("deltaguard_request_latency_seconds_sum") / n_latency, 3) if n_latency else None,
        "ttft_observations": int(diff("deltaguard_time_to_first_token_seconds_count")),
    }, after


def summarise(n_clients: int, records: list[dict], wall_s: float, n_cut: int, server: dict,
              args: argparse.Namespace) -> dict:
    ok = [r for r in records if r["status"] == 200]
    error_kinds = Counter(str(r["status"]) for r in records if r["status"] != 200)
    if n_cut:
        error_kinds[f"level-timeout ({args.timeout:g} s)"] += n_cut
    latencies = [r["latency_s"] for r in ok]
    ttfts = [r["ttft_s"] for r in ok if r["stream"] and r["ttft_s"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    # Cross-check: every request the client saw succeed was counted ok (and timed) by the server, with the same
    # completion tokens; server-side errors are allowed only for requests the client saw fail.
    mismatches = []
    # Requests cut off by the level's timeout may still finish (and count as ok) on the server.
    if not len(ok) <= server["ok"] <= len(ok) + n_cut:
        mismatches.append(f"server ok {server['ok']} ≠ client ok {len(ok)}"
                          + (f" (+ up to {n_cut} cut off by the timeout)" if n_cut else ""))
    if server["latency_observations"] != server["ok"]:
        mismatches.append(f"latency histogram count {server['latency_observations']} ≠ server ok {server['ok']}")
    if server["requests"] - server["ok"] > sum(error_kinds.values()):
        mismatches.append(f"server counted {server['requests'] - server['ok']} non-ok requests, client saw "
                          f"{sum(error_kinds.values())} errors")
    if not error_kinds and server["completion_tokens"] != tokens:  # failed requests may also count tokens
        mismatches.append(f"server completion tokens {server['completion_tokens']} ≠ client {tokens}")

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    summary = {
        "n_clients": n_clients, "n_requests": n_clients * args.requests, "n_finished": len(records),
        "n_ok": len(ok), "n_errors": sum(error_kinds.values()), "error_kinds": dict(sorted(error_kinds.items())),
        "latency_samples": len(latencies), "ttft_samples": len(ttfts),
    }
    for pct in PERCENTILES:
        summary[f"latency_p{pct}_s"] = rounded(percentile(latencies, pct))
    summary["latency_max_s"] = rounded(max(latencies)) if latencies else None
    for pct in PERCENTILES:
        summary[f"ttft_p{pct}_s"] = rounded(percentile(ttfts, pct))
    summary.update({
        "completion_tokens": tokens, "wall_seconds": round(wall_s, 2),
        "tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else None,
        "server": server, "cross_check_ok": not mismatches, "cross_check_mismatches": mismatches,
    })
    return summary


def cell(level: dict, key: str, n_key: str, pct: int | None, width: int) -> str:
    """A table cell; ``*`` marks a percentile from too few samples to differ from the maximum."""
    value = level[key]
    if value is None:
        return f"{'-':>{width}}"
    mark = "*" if pct is not None and not is_resolved(level[n_key], pct) else ""
    return f"{f'{value:.3f}{mark}':>{width}}"


def print_table(levels: list[dict]) -> None:
    header = (f"{'clients':>7} {'reqs':>5} {'errors':>6} {'p50 s':>8} {'p95 s':>8} {'p99 s':>8} {'max s':>8} "
              f"{'TTFT p50':>9} {'TTFT p95':>9} {'TTFT p99':>9} {'tok/s':>7} {'srv ok/cli ok':>13}")
    print(header)
    print("-" * len(header))
    for lv in levels:
        lat = [cell(lv, f"latency_p{p}_s", "latency_samples", p, 8) for p in PERCENTILES]
        ttft = [cell(lv, f"ttft_p{p}_s", "ttft_samples", p, 9) for p in PERCENTILES]
        check = f"{lv['server']['ok']}/{lv['n_ok']}" + ("" if lv["cross_check_ok"] else " !")
        tps = "-" if lv["tokens_per_s"] is None else f"{lv['tokens_per_s']:.2f}"
        print(f"{lv['n_clients']:>7} {lv['n_requests']:>5} {lv['n_errors']:>6} {' '.join(lat)} "
              f"{cell(lv, 'latency_max_s', 'latency_samples', None, 8)} {' '.join(ttft)} {tps:>7} {check:>13}")
    print("percentiles: nearest rank; * = fewer samples than the percentile needs (p50: 2, p95: 20, p99: 100), "
          "so it equals the max")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32],
                        help="concurrency levels, swept in order against the same server process")
    parser.add_argument("--requests", type=int, default=3, help="requests per client, sent one after another")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on each concurrency level, seconds")
    parser.add_argument("--server-threads", type=int, default=1,
                        help="torch threads of the server (1 on a shared 2-core machine; see bench_serve_decode.py)")
    args = parser.parse_args()
    if any(c < 1 for c in args.clients):
        parser.error("--clients levels must be at least 1")

    import httpx
    import yaml

    from deltaguard.serve import hash_key, new_key

    paths = serve_setup.tenant_deltas(args.tenants)
    keys = {f"tenant-{i:02d}": new_key() for i in range(args.tenants)}
    admin_key = new_key()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-load-"))
    tenants_path = work / "tenants.yaml"
    tenants_path.write_text(yaml.safe_dump({
        "admin_key_sha256": hash_key(admin_key),
        "tenants": [{"name": name, "delta": str(path), "key_sha256": hash_key(keys[name])}
                    for name, path in zip(keys, paths)]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / "server.log"
    command = [sys.executable, "-c", "import sys; from deltaguard.cli import main; sys.argv[0] = 'deltaguard'; main()",
               "serve", "--base", serve_setup.BASE, "--tenants", str(tenants_path), "--port", str(port),
               "--set", f"max_batch_size={max(args.clients)}", "--set", f"max_new_tokens={args.max_tokens}",
               "--set", f"n_threads={args.server_threads}"]
    levels = []
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited with {server.returncode}; log: {log_path}\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 600:
                raise SystemExit(f"server did not come up in 600 s; log: {log_path}")
            time.sleep(1)
        startup_s = time.monotonic() - started
        before = scrape(url, admin_key)
        for n_clients in args.clients:
            print(f"level: {n_clients} client(s) × {args.requests} request(s) ...", flush=True)
            records, wall_s, n_cut = asyncio.run(run_level(url, list(keys.items()), n_clients, args))
            drain_s = drain(url)
            n_reached = sum(1 for r in records if isinstance(r["status"], int) or r["status"] == "stream-error")
            counted, before = server_delta(url, admin_key, before, n_reached)
            level = summarise(n_clients, records, wall_s, n_cut, counted, args)
            level["drain_seconds"] = None if drain_s is None else round(drain_s, 2)
            levels.append(level)
            if drain_s is None:
                skipped = args.clients[len(levels):]
                print(f"server queue did not drain in {DRAIN_TIMEOUT_S:.0f} s; skipping levels {skipped}", flush=True)
                break
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"tenants {args.tenants}, {args.requests} request(s)/client, max_tokens {args.max_tokens}, "
          f"server threads {args.server_threads}; startup {startup_s:.0f} s; server log {log_path}")
    print_table(levels)
    for lv in levels:
        if lv["n_errors"]:
            print(f"  {lv['n_clients']} clients: errors {lv['error_kinds']}; server saw {lv['server']['errors_by_type']}")
        if not lv["cross_check_ok"]:
            print(f"  {lv['n_clients']} clients: /metrics cross-check failed: {'; '.join(lv['cross_check_mismatches'])}")
    result = {
        "environment": serve_setup.environment(),
        "config": {"n_tenants": args.tenants, "client_levels": args.clients, "requests_per_client": args.requests,
                   "max_tokens": args.max_tokens, "server_threads": args.server_threads,
                   "level_timeout_s": args.timeout, "percentile_method": "nearest-rank",
                   "server_startup_seconds": round(startup_s, 1)},
        "levels": levels,
        "skipped_levels": args.clients[len(levels):],
    }
    print(f"wrote {serve_setup.write_results('serve_load', result)}")
    failed = [lv["n_clients"] for lv in levels if lv["n_errors"] or not lv["cross_check_ok"]]
    if failed or result["skipped_levels"]:
        raise SystemExit(f"levels with errors or a /metrics mismatch: {failed}; skipped: {result['skipped_levels']}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
