"""Fixtures for the evaluation tests: a tiny chat model, and a real OpenAI-compatible server on loopback.

Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from tinymodels import make_tiny_llama


@pytest.fixture
def tiny_lm(tiny_tokenizer):
    """(model, tokenizer): a seeded tiny Llama whose vocabulary and special ids match the tiny tokenizer.

    Untied: a random tied model just repeats the last prompt token, which would make tests vacuous.
    """
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), tied=False)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, key, getattr(tiny_tokenizer, key))
        setattr(model.generation_config, key, getattr(tiny_tokenizer, key))
    return model, tiny_tokenizer


class FakeJudgeServer:
    """An OpenAI-style /v1/chat/completions endpoint whose behaviour is chosen by a marker in the request.

    The user message carries ``MODE=<mode>``: ``ok<score>`` (a clean JSON verdict), ``fenced`` (JSON in
    a code fence with prose), ``garbage`` (prose without a score), ``notjson`` (a body that is not
    JSON), ``slow`` (answers after 2 s), ``flaky`` (HTTP 500 on the first attempt, then a verdict),
    ``unauthorized`` (HTTP 401).
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.attempts: dict[str, int] = {}
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions(request: Request):
            body = await request.json()
            self.requests.append(body)
            self.auth_headers.append(request.headers.get("authorization"))
            user = body["messages"][-1]["content"]
            mode = user.split("MODE=", 1)[1].split()[0] if "MODE=" in user else "ok1"
            self.attempts[mode] = self.attempts.get(mode, 0) + 1
            if mode == "slow":
                await asyncio.sleep(2.0)
                return JSONResponse(_completion('{"refused": true, "score": 1}'))
            if mode == "flaky" and self.attempts[mode] == 1:
                return JSONResponse({"error": "overloaded"}, status_code=500)
            if mode == "unauthorized":
                return JSONResponse({"error": "bad key"}, status_code=401)
            if mode == "notjson":
                return PlainTextResponse("<html>proxy error</html>")
            if mode == "garbage":
                return JSONResponse(_completion("I think this reply is mostly fine, honestly."))
            if mode == "fenced":
                return JSONResponse(_completion('Sure.\n```json\n{"refused": false, "score": "4/5", "reason": "x"}\n```'))
            score = int(mode[2:]) if mode.startswith("ok") else 1
            verdict = {"refused": score == 1, "score": score, "reason": "test"}
            return JSONResponse(_completion(json.dumps(verdict)))

        self.app = app

    def start(self) -> str:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _completion(text: str) -> dict:
    return {"id": "cmpl-test", "object": "chat.completion", "model": "fake-judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


@pytest.fixture(scope="module")
def judge_server():
    server = FakeJudgeServer()
    server.base_url = server.start()
    yield server
    server.stop()


@pytest.fixture
def judge_env(judge_server, monkeypatch, tmp_path: Path):
    """Environment pointing the llm judge at the loopback server, with a private verdict cache."""
    monkeypatch.setenv("DELTAGUARD_JUDGE_BASE_URL", judge_server.base_url)
    monkeypatch.setenv("DELTAGUARD_JUDGE_API_KEY", "test-key")
    monkeypatch.setenv("DELTAGUARD_JUDGE_MODEL", "fake-judge")
    return {"cache_dir": str(tmp_path / "verdicts"), "backoff_seconds": 0.01}
