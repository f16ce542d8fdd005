"""Evaluating a model behind an OpenAI-compatible endpoint: the ``openai`` backend and ``Endpoint`` source.

Against a real ``deltaguard serve`` on loopback (a tiny base with one tenant delta: its greedy replies must
equal those of the same base with the delta merged in this process) and against a tiny ``http.server``
fake whose behaviour (429 then 200, 401, 400, a dropped connection) is chosen by the model name.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deltaguard.data.base import Prompt, make_set
from deltaguard.errors import ConfigError, EndpointError
from deltaguard.eval import BasePlusDelta, Endpoint, EvalConfig, Runner, Variant, evaluate
from deltaguard.generation import GenerationConfig, sample_seed
from deltaguard.openai_http import ENV_ENDPOINT_API_KEY, RetryPolicy, public_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import KEYS, LiveServer, World, compress_to, make_finetune, start_server, write_tenants  # noqa: E402
from tinymodels import make_tiny_llama, make_tiny_tokenizer  # noqa: E402

SECRET = "sk-test-secret-0123456789"
PROMPTS = make_set("endpoint-test", "eval", [Prompt(f"q{i}", text) for i, text in enumerate([
    "How do I bake bread?", "What is 12 plus 7?", "Step 1: mix the flour.", "I cannot help with that.",
    "Sure, here is a simple recipe.", "What is 3 plus 4?"])], "test")
GREEDY = GenerationConfig(max_new_tokens=10, batch_size=4)


# -- a real deltaguard serve with one tenant -------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(live server, base dir, delta dir): a tiny untied base and one kbit4 tenant, ``alpha``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("endpoint")
    tok = make_tiny_tokenizer()
    base = make_tiny_llama(seed=0, vocab_size=len(tok), tied=False)  # untied: a tied random model just echoes
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(base.config, key, getattr(tok, key))
        setattr(base.generation_config, key, getattr(tok, key))
    base_dir = root / "base"
    base.save_pretrained(base_dir, safe_serialization=True)
    tok.save_pretrained(base_dir)
    ft_dir = make_finetune(base_dir, root / "ft", seed=100, scale=5e-2)
    delta_dir = compress_to(base_dir, ft_dir, "kbit4", root / "delta-alpha")
    tenants = write_tenants(root / "tenants.yaml", {"alpha": delta_dir})
    world = World(root, base_dir, {"alpha": delta_dir}, tenants, None)  # type: ignore[arg-type]
    from deltaguard.serve import create_app

    server = start_server(world, kernel="torch", max_new_tokens=64, default_new_tokens=16)
    try:
        with LiveServer(create_app(server)) as running:
            yield running, base_dir, delta_dir
    finally:
        torch.set_num_threads(threads)


def test_endpoint_replies_equal_the_merged_model_in_process_and_rerun_is_cached(served, tmp_path, monkeypatch):
    live, base_dir, delta_dir = served
    monkeypatch.setenv(ENV_ENDPOINT_API_KEY, KEYS["alpha"])
    remote = Variant("alpha-endpoint", "model", Endpoint(f"{live.url}/v1", "alpha"))
    local = Variant("alpha-local", "model", BasePlusDelta(base_dir, delta_dir))
    over_http = Runner(tmp_path / "remote", progress=False).generate(remote, PROMPTS, GREEDY)
    in_process = Runner(tmp_path / "local", progress=False).generate(local, PROMPTS, GREEDY)
    # the server drops a reply's trailing half of a multi-byte character (a byte-level token that is not
    # a whole character yet); in-process decoding keeps it as U+FFFD
    def same(text: str) -> str:
        return text.rstrip("\ufffd").strip()

    assert [same(r["response"]) for r in over_http] == [same(r["response"]) for r in in_process]
    assert sum(bool(same(r["response"])) for r in over_http) >= 3  # not vacuous: the tiny model says things
    assert all(r["settings"]["fields"]["backend"] == "openai" for r in over_http)
    assert all(r["settings"]["fields"]["backend"] == "hf" for r in in_process)
    assert all(isinstance(r["n_new_tokens"], int) and 0 <= r["n_new_tokens"] <= GREEDY.max_new_tokens
               for r in over_http)

    from deltaguard import openai_http

    calls = []
    real = openai_http.post_json
    monkeypatch.setattr(openai_http, "post_json", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = Runner(tmp_path / "remote", progress=False).generate(remote, PROMPTS, GREEDY)
    assert again == over_http and calls == []  # the cache answers: no HTTP request at all


def test_wrong_tenant_key_stops_with_one_line(served, tmp_path, monkeypatch):
    live, _, _ = served
    monkeypatch.setenv(ENV_ENDPOINT_API_KEY, "not-a-key-of-anyone-0123")
    variant = Variant("x", "model", Endpoint(f"{live.url}/v1", "alpha"))
    with pytest.raises(EndpointError, match=r"refused the credentials \(HTTP 401\); check DELTAGUARD_ENDPOINT_API_KEY") as info:
        Runner(tmp_path, progress=False).generate(variant, PROMPTS, GREEDY)
    assert "\n" not in str(info.value)


# -- a fake OpenAI-compatible server -----------------------------------------------------------------------

class FakeServer:
    """``POST /v1/chat/completions`` answering ``echo: <user text>``; the model name picks a behaviour:
    ``ok``, ``flaky`` (429 with Retry-After: 1, then 200, per prompt), ``drop`` (the first attempt's
    connection is closed without an answer), ``unauthorized`` (401), ``missing`` (404), ``picky`` (400 for
    prompts containing BAD)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                with fake.lock:
                    fake.requests.append(body)
                    fake.auth.append(self.headers.get("Authorization"))
                    key = f"{body['model']}:{user}"
                    fake.attempts[key] = attempt = fake.attempts.get(key, 0) + 1
                mode = body["model"]
                if self.path != "/v1/chat/completions" or mode == "missing":
                    return self.reply(404, {"error": {"message": "model not found"}})
                if mode == "unauthorized":
                    return self.reply(401, {"error": {"message": "bad key"}})
                if mode == "flaky" and attempt == 1:
                    return self.reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
                if mode == "drop" and attempt == 1:
                    self.close_connection = True
                    self.connection.close()
                    return None
                if mode == "picky" and "BAD" in user:
                    return self.reply(400, {"error": {"message": "prompt rejected by policy"}})
                text = f"  echo: {user}  "
                return self.reply(200, {"id": "c", "object": "chat.completion", "model": mode,
                                        "choices": [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant", "content": text}}],
                                        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})

            def reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv(ENV_ENDPOINT_API_KEY, SECRET)
    with FakeServer() as server:
        yield server


def endpoint(fake: FakeServer, mode: str, **kwargs) -> Variant:
    return Variant(f"fake-{mode}", "model", Endpoint(fake.url, mode, backoff_seconds=0.01, **kwargs))


def test_requests_carry_the_settings_and_the_bearer_key(fake, tmp_path):
    rows = Runner(tmp_path, progress=False).generate(endpoint(fake, "ok"), PROMPTS,
                                                     GREEDY.replace(system_prompt="Be brief."))
    assert [r["response"] for r in rows] == [f"echo: {t}" for t in PROMPTS.texts]  # stripped, in prompt order
    assert all(r["n_new_tokens"] == 3 for r in rows)  # usage.completion_tokens
    assert set(fake.auth) == {f"Bearer {SECRET}"}
    sent = fake.requests[0]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 10 and sent["temperature"] == 0 and "seed" not in sent and sent["model"] == "ok"
    sampled = GenerationConfig(max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    fake.requests.clear()
    Runner(tmp_path, progress=False).generate(endpoint(fake, "ok"), PROMPTS, sampled)
    by_prompt = {r["messages"][-1]["content"]: r for r in fake.requests}
    for prompt in PROMPTS.prompts:
        body = by_prompt[prompt.text]
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 5)
        assert body["seed"] == sample_seed(3, prompt.id) and [m["role"] for m in body["messages"]] == ["user"]


def test_429_is_retried_after_retry_after_and_a_dropped_connection_too(fake, tmp_path):
    started = time.monotonic()
    rows = Runner(tmp_path, progress=False).generate(endpoint(fake, "flaky", concurrency=8), PROMPTS, GREEDY)
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 outweighs the 0.01 s backoff
    assert [r["response"] for r in rows] == [f"echo: {t}" for t in PROMPTS.texts]
    assert all(fake.attempts[f"flaky:{t}"] == 2 for t in PROMPTS.texts)
    rows = Runner(tmp_path, progress=False).generate(endpoint(fake, "drop"), PROMPTS, GREEDY)
    assert [r["response"] for r in rows] == [f"echo: {t}" for t in PROMPTS.texts]
    assert all(fake.attempts[f"drop:{t}"] == 2 for t in PROMPTS.texts)


def test_retry_policy_delays():
    policy = RetryPolicy(backoff_seconds=0.5)
    assert [policy.delay(a) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert policy.delay(1, "3") == 3.0 and policy.delay(1, "600") == 60.0 and policy.delay(2, "soon") == 1.0


@pytest.mark.parametrize("mode,message", [
    ("unauthorized", r"refused the credentials \(HTTP 401\); check DELTAGUARD_ENDPOINT_API_KEY"),
    ("missing", r"/chat/completions or model 'missing' not found \(HTTP 404\)"),
])
def test_credentials_and_missing_model_stop_the_run_with_one_line(fake, tmp_path, mode, message):
    with pytest.raises(EndpointError, match=message) as info:
        Runner(tmp_path, progress=False).generate(endpoint(fake, mode, concurrency=1), PROMPTS, GREEDY)
    assert "\n" not in str(info.value) and SECRET not in str(info.value)
    assert sum(fake.attempts.values()) == 1  # stopped at once: not retried, no other prompt sent


def test_a_rejected_prompt_stops_the_run_and_the_finished_replies_are_kept(fake, tmp_path):
    prompts = make_set("picky", "eval", [Prompt("a", "first"), Prompt("b", "second"), Prompt("c", "BAD one")], "test")
    runner = Runner(tmp_path, progress=False)
    variant = endpoint(fake, "picky", concurrency=1)
    config = GREEDY.replace(batch_size=8)
    with pytest.raises(EndpointError, match="rejected prompt c with HTTP 400: prompt rejected by policy"):
        runner.generate(variant, prompts, config)
    saved = [json.loads(line) for line in runner.generation_path(variant, prompts, config).read_text().splitlines()]
    assert [r["prompt_id"] for r in saved] == ["a", "b"]  # a rerun resumes from these


def test_endpoint_source_key_description_and_checks(fake):
    source = Endpoint("https://user:pw@example.com:8443/v1/", "m")
    assert not source.has_weights and source.describe() == {"kind": "endpoint", "base_url": "https://example.com:8443/v1",
                                                            "model": "m", "key": source.key}
    assert source.key == Endpoint("https://example.com:8443/v1", "m").key != Endpoint("https://example.com:8443/v1", "n").key
    client, tokenizer = source.load()
    assert tokenizer is None and "pw" not in repr(client)
    assert public_url("http://a:b@h/v1?key=1#x") == "http://h/v1"
    for url in ("localhost:8000", "ftp://host/v1", "http://", "http://host:port/v1"):
        with pytest.raises(ConfigError):
            Endpoint(url, "m")
    with pytest.raises(ConfigError, match="model's name"):
        Endpoint("http://h/v1", " ")
    with pytest.raises(ConfigError, match="merged into a model behind an endpoint"):
        BasePlusDelta(source, "/nowhere")
    with pytest.raises(ConfigError, match="use_chat_template=false"):
        Runner(Path("/tmp/unused"), progress=False).generate(endpoint(fake, "ok"), PROMPTS,
                                                             GREEDY.replace(use_chat_template=False))
    with pytest.raises(ConfigError, match="forced choice"):
        Runner(Path("/tmp/unused"), progress=False).choices(endpoint(fake, "ok"), PROMPTS, ("Yes", "No"), GREEDY)


def test_utility_and_fairness_over_an_endpoint_skip_what_needs_weights(fake, tmp_path, caplog):
    config = EvalConfig(suites=("utility", "trust-fairness"), judges=("keyword",), limit=4, n_boot=100,
                        generation=GenerationConfig(max_new_tokens=8))
    with caplog.at_level("WARNING", logger="deltaguard.eval"):
        result = evaluate(endpoint(fake, "ok"), config, out_dir=tmp_path, progress=False)
    assert [(m.metric, m.judge) for m in result.metrics] == [("task_accuracy", None),
                                                            ("trust_fairness_refusal", "keyword")]
    notes = [r.getMessage() for r in caplog.records]
    assert any("perplexity" in n and "not measured" in n for n in notes)
    assert any("trust-fairness" in n and "only the refusal rate" in n for n in notes)
    saved = (tmp_path / "results.json").read_text()
    assert json.loads(saved)["model"]["kind"] == "endpoint"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(encoding="utf-8"), path  # the key is in no file
    assert set(fake.auth) == {f"Bearer {SECRET}"}


# -- the CLI ----------------------------------------------------------------------------------------------

def test_eval_and_trust_cli_over_an_endpoint(fake, tmp_path):
    from deltaguard.cli import app

    runner = CliRunner()
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--endpoint", fake.url, "--model", "ok", "--suite", "utility", "--limit", "3",
                                 "--concurrency", "2", "-o", str(out), "--set", "n_boot=100", "--json",
                                 "--set", "generation.max_new_tokens=8"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert [m["metric"] for m in data["metrics"]] == ["task_accuracy"]
    assert data["model"] == {"kind": "endpoint", "base_url": fake.url, "model": "ok", "key": data["model_id"]}
    assert SECRET not in (out / "results.json").read_text()

    out = tmp_path / "trust"
    result = runner.invoke(app, ["trust", "--endpoint", fake.url, "--model", "ok", "-o", str(out),
                                 "--set", "n_prompts=2", "--set", "judges=keyword", "--set", "n_boot=100",
                                 "--set", "suites=trust-fairness,trust-truthfulness,utility", "--json"])
    assert result.exit_code == 0, result.output
    trust = json.loads((out / "trust.json").read_text())
    assert [r["label"] for r in trust["rows"]] == ["uncompressed"] and trust["config"]["fields"]["methods"] == []
    assert trust["endpoint"]["kind"] == "endpoint" and SECRET not in (out / "trust.json").read_text()

    result = runner.invoke(app, ["eval", "--endpoint", fake.url, "--model", "unauthorized", "--suite", "utility",
                                 "--limit", "2", "-o", str(tmp_path / "denied")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and lines == [f"error: endpoint {fake.url} refused the credentials (HTTP 401); "
                                               "check DELTAGUARD_ENDPOINT_API_KEY"], result.output

    for args, message in ((["eval", "--endpoint", fake.url, "-o", str(tmp_path / "a")], "--endpoint needs --model"),
                          (["eval", "--endpoint", "localhost:1", "--model", "m", "-o", str(tmp_path / "b")],
                           "must start with http"),
                          (["trust", "--endpoint", fake.url, "--model", "m", "--methods", "rtn4", "-o", str(tmp_path / "c")],
                           "cannot run on a model behind --endpoint"),
                          (["trust", "--endpoint", fake.url, "--model", "m", "--base", "x", "-o", str(tmp_path / "d")],
                           "--base cannot be used with --endpoint")):
        result = runner.invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
        assert not Path(args[args.index("-o") + 1]).exists()
