"""Load test: concurrent clients of several tenants against ``deltaguard serve`` over loopback.

Starts the real CLI server (``deltaguard serve --base smollm2-135m-instruct --tenants ...``) in a
subprocess on a free 127.0.0.1 port, with one freshly made API key per tenant, then runs
``--clients`` concurrent clients; each sends ``--requests`` chat completions one after another to
its tenant (client ``i`` → tenant ``i mod N``). Half the clients stream (SSE) so time to first token
is measured too. Everything is bounded: a fixed number of requests and ``--timeout`` seconds in all.
Reports p50/p95/max latency, errors (goal: zero), aggregate tokens/s, and checks the server's own
/metrics counted the same requests.

    python benchmarks/bench_serve_load.py [--tenants 4] [--clients 8] [--requests 3] [--max-tokens 16] [--server-threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402

QUESTIONS = ["What is 17 plus 25?", "Name three colours of the rainbow.", "How many days are in a week?",
             "Give me a tip for baking bread.", "What is 9 times 7?", "Say hello in French."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def client(http, index: int, tenant: str, key: str, n_requests: int, max_tokens: int, stream: bool) -> list[dict]:
    records = []
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
    return records


async def run_clients(url: str, tenants: list[tuple[str, str]], args: argparse.Namespace) -> tuple[list[dict], float]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=args.timeout) as http:
        started = time.perf_counter()
        jobs = [client(http, i, *tenants[i % len(tenants)], args.requests, args.max_tokens, stream=i % 2 == 1)
                for i in range(args.clients)]
        results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=args.timeout)
        return [r for rs in results for r in rs], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests per client, sent one after another")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on the whole run, seconds")
    parser.add_argument("--server-threads", type=int, default=1,
                        help="torch threads of the server (1 on a shared 2-core machine; see bench_serve_decode.py)")
    args = parser.parse_args()

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
               "--set", f"max_batch_size={max(args.clients, 1)}", "--set", f"max_new_tokens={args.max_tokens}",
               "--set", f"n_threads={args.server_threads}"]
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
        records, wall_s = asyncio.run(run_clients(url, list(keys.items()), args))
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10).text
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    ok = [r for r in records if r["status"] == 200]
    errors = [r for r in records if r["status"] != 200]
    latencies = [r["latency_s"] for r in ok]
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("deltaguard_requests_total{") and 'status="ok"' in line)
    tokens = sum(r["tokens"] for r in ok)
    summary = {
        "n_tenants": args.tenants, "n_clients": args.clients, "requests_per_client": args.requests,
        "max_tokens": args.max_tokens, "n_requests": len(records), "n_ok": len(ok), "n_errors": len(errors),
        "error_statuses": sorted({str(r["status"]) for r in errors}),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p95_s": round(percentile(ttfts, 0.95), 3) if ttfts else None,
        "completion_tokens": tokens, "wall_seconds": round(wall_s, 2),
        "tokens_per_s": round(tokens / wall_s, 2), "server_startup_seconds": round(startup_s, 1),
        "server_counted_ok": counted,
    }
    print(f"{'tenants':>7} {'clients':>7} {'requests':>8} {'errors':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7} "
          f"{'TTFT p50':>8} {'tok/s':>7}")
    print(f"{args.tenants:>7} {args.clients:>7} {len(records):>8} {len(errors):>6} {summary['latency_p50_s']:>7} "
          f"{summary['latency_p95_s']:>7} {summary['latency_max_s']:>7} {summary['ttft_p50_s']!s:>8} "
          f"{summary['tokens_per_s']:>7}")
    print(f"server counted {counted:g} successful requests (client saw {len(ok)}); startup {startup_s:.0f} s; "
          f"server log {log_path}")
    result = {"environment": serve_setup.environment(), "summary": summary}
    print(f"wrote {serve_setup.write_results('serve_load', result)}")
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed: {summary['error_statuses']}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
