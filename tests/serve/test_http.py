"""The HTTP API on a real uvicorn server (127.0.0.1, free port): auth matrix, limits, errors, admin, metrics."""

from __future__ import annotations

import json

import httpx
import pytest

from serve_helpers import ADMIN_KEY, KEYS, LiveServer, start_server, write_tenants


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def chat_body(model: str, text: str = "What is 12 plus 7?", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 4, **extra}


def assert_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type
    return body["error"]["message"]


@pytest.fixture(scope="module")
def client(live):
    with httpx.Client(base_url=live.url, timeout=60) as http:
        yield http


# -- the auth matrix ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key,status,error_type", [
    (None, 401, "authentication_error"),                 # no key
    ("not-a-key", 401, "authentication_error"),          # wrong key
    (KEYS["beta"], 404, "not_found_error"),              # another tenant's key: alpha does not exist for it
    (ADMIN_KEY, 403, "permission_error"),                # the admin key is not a tenant key
])
def test_chat_auth_matrix_refusals(client, key, status, error_type):
    assert_error(client.post("/v1/chat/completions", json=chat_body("alpha"), headers=auth(key)), status, error_type)


def test_chat_with_the_tenants_own_key_succeeds(client):
    response = client.post("/v1/chat/completions", json=chat_body("alpha"), headers=auth(KEYS["alpha"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "alpha"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 4 and body["usage"]["prompt_tokens"] > 5


def test_unknown_and_foreign_tenants_get_the_same_answer(client):
    """A key cannot learn whether another tenant exists: unknown and foreign both say 404, same text shape."""
    foreign = assert_error(client.post("/v1/chat/completions", json=chat_body("alpha"), headers=auth(KEYS["beta"])),
                           404, "not_found_error")
    unknown = assert_error(client.post("/v1/chat/completions", json=chat_body("zeta"), headers=auth(KEYS["beta"])),
                           404, "not_found_error")
    assert foreign.replace("alpha", "X") == unknown.replace("zeta", "X")


def test_models_lists_only_the_callers_tenants(client):
    shared = client.get("/v1/models", headers=auth(KEYS["gamma"]))
    assert shared.status_code == 200
    assert [m["id"] for m in shared.json()["data"]] == ["delta", "gamma"]
    assert [m["id"] for m in client.get("/v1/models", headers=auth(KEYS["alpha"])).json()["data"]] == ["alpha"]
    assert_error(client.get("/v1/models"), 401, "authentication_error")
    assert_error(client.get("/v1/models/alpha", headers=auth(KEYS["gamma"])), 404, "not_found_error")
    assert client.get("/v1/models/gamma", headers=auth(KEYS["gamma"])).json()["id"] == "gamma"


@pytest.mark.parametrize("key,status", [(None, 401), ("nope", 401), (KEYS["alpha"], 403), (ADMIN_KEY, 200)])
def test_admin_auth_matrix(client, key, status):
    response = client.get("/admin/tenants", headers=auth(key))
    assert response.status_code == status, response.text
    if status == 200:
        names = [t["name"] for t in response.json()["tenants"]]
        assert names == ["alpha", "beta", "delta", "gamma"]
        assert "key" not in json.dumps(response.json()).replace("n_keys", "")  # no key material listed


# -- limits and malformed input ----------------------------------------------------------------------

def test_body_over_the_limit_is_413(client):
    big = chat_body("alpha", text="x" * 5000)
    assert_error(client.post("/v1/chat/completions", json=big, headers=auth(KEYS["alpha"])), 413, "request_too_large")


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():
        yield b'{"model": "alpha", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    response = client.post("/v1/chat/completions", content=chunks(),
                           headers={**auth(KEYS["alpha"]), "Content-Type": "application/json"})
    assert_error(response, 413, "request_too_large")


def test_prompt_over_the_token_limit_is_400(client):
    message = assert_error(client.post("/v1/chat/completions", json=chat_body("alpha", text="bread " * 300),
                                       headers=auth(KEYS["alpha"])), 400, "invalid_request_error")
    assert "limit is 200" in message


def test_too_many_new_tokens_is_400(client):
    message = assert_error(client.post("/v1/chat/completions", json=chat_body("alpha", max_tokens=17),
                                       headers=auth(KEYS["alpha"])), 400, "invalid_request_error")
    assert "max_tokens=17" in message and "16" in message


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"model": "alpha", "messages": [}'])
def test_malformed_json_is_400_with_the_error_shape(client, raw):
    response = client.post("/v1/chat/completions", content=raw,
                           headers={**auth(KEYS["alpha"]), "Content-Type": "application/json"})
    assert "not valid JSON" in assert_error(response, 400, "invalid_request_error")


@pytest.mark.parametrize("body,fragment", [
    ({"model": "alpha"}, "messages"),
    ({"model": "alpha", "messages": []}, "messages"),
    ({"model": "alpha", "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    (chat_body("alpha", temperature=5), "temperature"),
    (chat_body("alpha", n=2), "n=2"),
    (chat_body("alpha", tools=[{"type": "function"}]), "tools"),
    (chat_body("alpha", stop=["a", "b", "c", "d", "e"]), "stop"),
    ([1, 2, 3], "body"),
])
def test_invalid_requests_are_400(client, body, fragment):
    message = assert_error(client.post("/v1/chat/completions", json=body, headers=auth(KEYS["alpha"])),
                           400, "invalid_request_error")
    assert fragment in message


def test_unknown_route_and_method_use_the_error_shape(client):
    assert_error(client.get("/v1/nothing"), 404, "not_found_error")
    assert_error(client.get("/v1/chat/completions", headers=auth(KEYS["alpha"])), 405, "invalid_request_error")


# -- streaming, health, metrics ----------------------------------------------------------------------

def test_sse_stream_format(client):
    body = chat_body("beta", stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body, headers=auth(KEYS["beta"])) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_health_and_metrics(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["kernel"] in ("torch", "cpp")   # CPU: C++ where it builds
    client.post("/v1/chat/completions", json=chat_body("gamma"), headers=auth(KEYS["gamma"]))
    assert_error(client.get("/metrics"), 401, "authentication_error")
    assert_error(client.get("/metrics", headers=auth(KEYS["gamma"])), 403, "permission_error")
    text = client.get("/metrics", headers=auth(ADMIN_KEY)).text
    assert 'deltaguard_requests_total{status="ok",tenant="gamma"}' in text
    assert 'deltaguard_tokens_total{kind="completion",tenant="gamma"}' in text
    assert 'deltaguard_request_latency_seconds_count{tenant="gamma"}' in text
    assert 'deltaguard_errors_total{tenant="-",type="authentication_error"}' in text
    assert "# TYPE deltaguard_request_latency_seconds histogram" in text


# -- admin: add and remove tenants at runtime ------------------------------------------------------

def test_admin_adds_and_removes_a_tenant(client, world):
    admin = auth(ADMIN_KEY)
    created = client.post("/admin/tenants", json={"name": "epsilon", "delta": str(world.delta_dirs["beta"])},
                          headers=admin)
    assert created.status_code == 201, created.text
    new_key = created.json()["api_key"]
    assert created.json()["encodings"] == ["bitdelta", "dense16"]
    reply = client.post("/v1/chat/completions", json=chat_body("epsilon"), headers=auth(new_key))
    assert reply.status_code == 200
    assert_error(client.post("/v1/chat/completions", json=chat_body("epsilon"), headers=auth(KEYS["beta"])),
                 404, "not_found_error")
    assert_error(client.post("/admin/tenants", json={"name": "epsilon", "delta": str(world.delta_dirs["beta"])},
                             headers=admin), 409, "conflict")
    assert client.delete("/admin/tenants/epsilon", headers=admin).json() == {"deleted": "epsilon"}
    assert_error(client.post("/v1/chat/completions", json=chat_body("epsilon"), headers=auth(new_key)),
                 401, "authentication_error")
    assert_error(client.delete("/admin/tenants/epsilon", headers=admin), 404, "not_found_error")


def test_admin_refuses_a_delta_of_another_base(client, world):
    response = client.post("/admin/tenants", json={"name": "intruder", "delta": str(world.other_base_delta)},
                           headers=auth(ADMIN_KEY))
    assert "made for base" in assert_error(response, 400, "incompatible_base")
    assert "intruder" not in [t["name"] for t in client.get("/admin/tenants", headers=auth(ADMIN_KEY)).json()["tenants"]]


def test_admin_refuses_plaintext_keys_and_bad_input(client, world):
    admin = auth(ADMIN_KEY)
    bad_key = client.post("/admin/tenants", json={"name": "x", "delta": str(world.delta_dirs["beta"]),
                                                  "key_sha256": "my-secret"}, headers=admin)
    assert "sha256" in assert_error(bad_key, 400, "invalid_request_error")
    missing = client.post("/admin/tenants", json={"name": "x", "delta": str(world.root / "nope")}, headers=admin)
    assert_error(missing, 400, "invalid_request_error")
    assert_error(client.post("/admin/tenants", content=b"{", headers=admin), 400, "invalid_request_error")


# -- moderation ---------------------------------------------------------------------------------------

SAMPLED = {"temperature": 1.0, "seed": 3, "max_tokens": 8}   # seeded: the same answer on every server


def seeded_reply(client, tenant: str) -> str:
    """What the tenant answers (seeded sampling) — a keyword taken from it makes response screening fire."""
    reply = client.post("/v1/chat/completions", json=chat_body(tenant, **SAMPLED), headers=auth(KEYS[tenant]))
    text = reply.json()["choices"][0]["message"]["content"]
    assert text.strip(), "the tiny model answered only whitespace; pick another seed"
    return text


def test_moderation_blocks_prompts_and_flags_responses(client, world, tmp_path):
    from deltaguard.serve import create_app

    keyword = seeded_reply(client, "beta").strip()[:3]
    policy = {"alpha": {"judge": "keyword", "judge_options": {"strings": ["nerve agent"]}, "screen": ["prompt"],
                        "action": "block"},
              "beta": {"judge": "keyword", "judge_options": {"strings": [keyword]}, "screen": ["response"],
                       "action": "flag"}}
    path = write_tenants(tmp_path / "tenants.yaml", world.delta_dirs, moderation=policy)
    server = start_server(world, tenants_path=path, max_new_tokens=8)
    with LiveServer(create_app(server)) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        blocked = http.post("/v1/chat/completions", json=chat_body("alpha", text="how to make a nerve agent"),
                            headers=auth(KEYS["alpha"]))
        assert "content policy" in assert_error(blocked, 400, "content_policy_violation")
        fine = http.post("/v1/chat/completions", json=chat_body("alpha", text="how to bake bread"),
                         headers=auth(KEYS["alpha"]))
        assert fine.status_code == 200 and "moderation" not in fine.json()
        flagged = http.post("/v1/chat/completions", json=chat_body("beta", **SAMPLED), headers=auth(KEYS["beta"]))
        assert flagged.status_code == 200
        assert keyword in flagged.json()["choices"][0]["message"]["content"]   # flagged, not withheld
        assert flagged.json()["moderation"] == [{"stage": "response", "action": "flag", "judge": "keyword",
                                                 "label": "refusal"}]
        metrics = http.get("/metrics", headers=auth(ADMIN_KEY)).text
        assert 'deltaguard_moderation_total{action="block",stage="prompt",tenant="alpha"} 1' in metrics
        assert 'deltaguard_moderation_total{action="flag",stage="response",tenant="beta"} 1' in metrics
        assert 'deltaguard_requests_total{status="blocked",tenant="alpha"} 1' in metrics


def test_moderation_withholds_a_blocked_response_even_when_streaming(client, world, tmp_path):
    from deltaguard.serve import create_app

    keyword = seeded_reply(client, "gamma").strip()[:3]
    policy = {"gamma": {"judge": "keyword", "judge_options": {"strings": [keyword]}, "screen": ["response"],
                        "action": "block", "message": "withheld"}}
    path = write_tenants(tmp_path / "tenants.yaml", world.delta_dirs, moderation=policy)
    server = start_server(world, tenants_path=path, max_new_tokens=8)
    with LiveServer(create_app(server)) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        plain = http.post("/v1/chat/completions", json=chat_body("gamma", **SAMPLED), headers=auth(KEYS["gamma"]))
        assert plain.json()["choices"][0] | {"logprobs": None} == {
            "index": 0, "message": {"role": "assistant", "content": "withheld"}, "finish_reason": "content_filter",
            "logprobs": None}
        body = chat_body("gamma", stream=True, **SAMPLED)
        with http.stream("POST", "/v1/chat/completions", json=body, headers=auth(KEYS["gamma"])) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert streamed == "withheld"   # the generated text never reached the client
    assert events[-1]["choices"][0]["finish_reason"] == "content_filter"
