"""A client that hangs up on a JSON (non-streaming) request: the server stops generating for it and counts it as
cancelled, never as a success."""

from __future__ import annotations

import time

import httpx

from serve_helpers import KEYS, LiveServer, start_server


def test_a_hung_up_json_request_is_cancelled_not_counted_ok(world, tokenizer, monkeypatch):
    from deltaguard.serve import create_app

    server = start_server(world, max_new_tokens=200, default_new_tokens=200)
    decode = server.engine._decode

    def slow_decode() -> None:   # 200 steps of 20 ms: four seconds of work the client will not wait for
        time.sleep(0.02)
        decode()

    monkeypatch.setattr(server.engine, "_decode", slow_decode)
    with LiveServer(create_app(server)) as running:
        body = {"model": "alpha", "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 200, "temperature": 0,
                "logit_bias": {str(tokenizer.eos_token_id): -100}}   # no early end
        headers = {"Authorization": f"Bearer {KEYS['alpha']}"}
        try:
            httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers, timeout=0.5)
            raise AssertionError("the request finished before the client gave up; make it longer")
        except httpx.ReadTimeout:
            pass   # the client hangs up
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if server.metrics.value("deltaguard_requests_total", tenant="alpha", status="cancelled") == 1:
                break
            time.sleep(0.1)
        assert server.metrics.value("deltaguard_requests_total", tenant="alpha", status="cancelled") == 1
        assert server.metrics.value("deltaguard_requests_total", tenant="alpha", status="ok") == 0
        health = httpx.get(f"{running.url}/health", timeout=10).json()
        assert health["active_sequences"] == 0 and health["waiting_requests"] == 0, health   # the engine let it go
