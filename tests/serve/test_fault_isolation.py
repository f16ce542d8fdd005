"""One tenant can never hurt another: hostile requests from tenant A while B and C stream, on a real server.

And a real ``deltaguard serve`` process stops within 5 s of SIGTERM although dozens of streams are open.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from serve_helpers import ADMIN_KEY, KEYS, LiveServer, start_server


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def stream_text(http: httpx.Client, tenant: str, text: str, max_tokens: int) -> str:
    """The content a greedy streamed completion delivers, asserting the stream ended properly."""
    body = {"model": tenant, "messages": [{"role": "user", "content": text}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=auth(KEYS[tenant])) as response:
        assert response.status_code == 200, response.read()
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def poisoned_delta(source, out_dir):
    """A copy of a delta with one NaN scale and a *valid* checksum (what a corrupted upload looks like)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from deltaguard.io import sha256_file

    shutil.copytree(source, out_dir)
    tensors = out_dir / "tensors.safetensors"
    flat = load_file(str(tensors))
    key = next(k for k in flat if k.endswith("::scales"))
    flat[key] = flat[key].clone().fill_(float("nan"))
    save_file(flat, str(tensors), metadata={"format": "deltaguard-delta"})
    manifest = json.loads((out_dir / "manifest.json").read_text())
    manifest["files"]["tensors.safetensors"] = {"sha256": sha256_file(tensors), "n_bytes": tensors.stat().st_size}
    (out_dir / "manifest.json").write_text(json.dumps(manifest))
    return out_dir


PROMPTS = {"beta": "What is 12 plus 7?", "gamma": "How do I bake bread?"}


def test_hostile_tenant_cannot_disturb_other_tenants_streams(world, tmp_path):
    from deltaguard.serve import create_app

    server = start_server(world, max_new_tokens=24, max_batch_size=8)
    with LiveServer(create_app(server)) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        solo = {tenant: stream_text(http, tenant, text, 24) for tenant, text in PROMPTS.items()}
        statuses: list[int] = []
        nan_messages: list[str] = []
        outputs: dict[str, list[str]] = {tenant: [] for tenant in PROMPTS}
        errors: list[BaseException] = []

        def victim(tenant: str) -> None:
            try:
                with httpx.Client(base_url=live.url, timeout=60) as own:
                    for _ in range(3):
                        outputs[tenant].append(stream_text(own, tenant, PROMPTS[tenant], 24))
            except BaseException as exc:  # surfaced below: a thread's assertion must fail the test
                errors.append(exc)

        def attacker() -> None:
            with httpx.Client(base_url=live.url, timeout=60) as own:
                hostile_bodies = [
                    {"temperature": 1e-30, "top_p": 1e-30, "seed": 1},   # overflowed float32 logits before the fix
                    {"temperature": 2.0, "top_p": 1e-300, "seed": 2},    # nucleus that used to mask every token
                    {"temperature": 1e-45, "stream": True},
                ]
                for extra in hostile_bodies * 3:
                    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, **extra}
                    statuses.append(own.post("/v1/chat/completions", json=body, headers=auth(KEYS["alpha"])).status_code)
                raw_bodies = [b'{"model": "alpha", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
                              b'{"model": "alpha", "messages": [{"role": "user", "content": "x"}], "top_p": Infinity}',
                              b'{"model": "alpha", "messages": "not a list"}', b"{", b"\xff\xfe",
                              b'{"model": "alpha", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99999}']
                for raw in raw_bodies:
                    statuses.append(own.post("/v1/chat/completions", content=raw,
                                             headers={**auth(KEYS["alpha"]), "content-type": "application/json"}).status_code)
                # inside the admin delta root (the tenants file's directory), so the NaN check is what refuses it
                nan_delta = poisoned_delta(world.delta_dirs["alpha"], world.root / f"nan-delta-{tmp_path.name}")
                refused = own.post("/admin/tenants", json={"name": "poison", "delta": nan_delta.name},
                                   headers=auth(ADMIN_KEY))
                nan_messages.append(refused.json()["error"]["message"])
                statuses.append(refused.status_code)
                for _ in range(3):  # streams dropped after their first bytes
                    body = {"model": "alpha", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 24,
                            "stream": True}
                    with own.stream("POST", "/v1/chat/completions", json=body, headers=auth(KEYS["alpha"])) as r:
                        next(r.iter_bytes())
                with socket.create_connection(("127.0.0.1", live.port)) as raw_socket:  # a request cut mid-body
                    raw_socket.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
                                       b"Authorization: Bearer " + KEYS["alpha"].encode() + b"\r\n\r\n{\"model\":")

        threads = [threading.Thread(target=victim, args=(t,)) for t in PROMPTS] + [threading.Thread(target=attacker)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a client hung"
        if errors:
            raise errors[0]
        assert all(s < 500 for s in statuses), statuses          # hostile input is refused, never a server error
        assert statuses[:9] == [200] * 9                           # extreme but valid settings are served
        assert statuses[-1] == 400 and "NaN or infinite" in nan_messages[0]  # refused at admission
        for tenant, texts in outputs.items():
            assert texts == [solo[tenant]] * 3, tenant             # exactly their solo outputs
        assert http.get("/health").json()["status"] == "ok"
        tenants = http.get("/admin/tenants", headers=auth(ADMIN_KEY)).json()["tenants"]
        assert "poison" not in [t["name"] for t in tenants]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_stops_the_server_within_seconds_with_streams_open(world, tmp_path):
    """Before: uvicorn waited for every open stream, and the engine was told to stop only after that."""
    port = _free_port()
    env = {**os.environ, "DELTAGUARD_CPU_KERNEL": "0", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "deltaguard", "serve", "--base", str(world.base_dir), "--tenants",
         str(world.tenants_path), "--port", str(port), "--set", "max_batch_size=1", "--set", "max_new_tokens=200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        ends: list[str] = []

        def client(i: int) -> None:
            tenant = ("alpha", "beta")[i % 2]
            body = {"model": tenant, "messages": [{"role": "user", "content": f"count {i}"}], "temperature": 0,
                    "max_tokens": 200, "stream": True}
            try:
                with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=auth(KEYS[tenant]),
                                  timeout=30) as response:
                    lines = [line for line in response.iter_lines() if line.startswith("data: ")]
                    ends.append(f"{response.status_code}:{lines[-1][:40] if lines else ''}")
            except httpx.HTTPError as exc:
                ends.append(f"transport:{type(exc).__name__}")

        clients = [threading.Thread(target=client, args=(i,)) for i in range(24)]  # one runs, 23 queue
        for thread in clients:
            thread.start()
        time.sleep(1.5)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        took = time.monotonic() - sent
        for thread in clients:
            thread.join(timeout=10)
        assert took < 5, f"the server took {took:.1f} s to stop after SIGTERM"
        assert not any(t.is_alive() for t in clients), "a client was left hanging after the server stopped"
        assert len(ends) == 24
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("field,value", [("temperature", 1e-300), ("top_p", 5e-324)])
def test_denormal_settings_are_served(world, field, value):
    from deltaguard.serve import create_app

    server = start_server(world, max_new_tokens=8)
    with LiveServer(create_app(server)) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        body = {"model": "beta", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, field: value}
        response = http.post("/v1/chat/completions", json=body, headers=auth(KEYS["beta"]))
        assert response.status_code == 200, response.text
