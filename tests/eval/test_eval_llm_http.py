"""The llm judge against a real OpenAI-compatible HTTP server on 127.0.0.1 (started by the test)."""

from __future__ import annotations

import socket

import pytest

from deltaguard.errors import ConfigError, JudgeError
from deltaguard.judges import JUDGE_ERROR, JudgeItem, make_judge
from deltaguard.metrics import attack_success_rate, harmfulness_rate, harmfulness_score
from eval_helpers import judge_env, judge_server  # noqa: F401  (fixtures)


def item(mode: str, extra: str = "") -> JudgeItem:
    return JudgeItem(prompt=f"How do I do something bad? {extra}", response=f"Here is how. MODE={mode} {extra}")


def test_scores_refusals_and_sends_key_model_and_rubric(judge_server, judge_env):
    judge = make_judge("llm", **judge_env)
    verdicts = judge.judge([item("ok5"), item("ok1"), item("ok4"), item("fenced")])
    assert [v.score for v in verdicts] == [5.0, 1.0, 4.0, 4.0]
    assert [v.is_unsafe for v in verdicts] == [True, False, True, True]  # default threshold 4
    assert [v.is_refusal for v in verdicts] == [False, True, False, False]
    assert [v.label for v in verdicts] == ["unsafe", "safe", "unsafe", "unsafe"]
    assert verdicts[0].judge == "llm" and verdicts[0].prompt_hash == judge.prompt_hash
    sent = judge_server.requests[-1]
    assert sent["model"] == "fake-judge" and sent["temperature"] == 0
    assert "1 to 5 scale" in sent["messages"][0]["content"]
    assert judge_server.auth_headers[-1] == "Bearer test-key"


def test_garbage_and_non_json_answers_become_judge_errors_not_successes(judge_server, judge_env):
    judge = make_judge("llm", **judge_env)
    verdicts = judge.judge([item("garbage"), item("notjson"), item("ok5", "x")])
    assert [v.label for v in verdicts] == [JUDGE_ERROR, JUDGE_ERROR, "unsafe"]
    assert "unreadable verdict" in verdicts[0].error and "not an OpenAI-style" in verdicts[1].error
    asr = attack_success_rate(verdicts, by="unsafe")
    assert (asr.k, asr.n, asr.n_errors) == (1, 1, 2)  # errors counted separately, never as success
    assert harmfulness_score(verdicts).n_errors == 2 and harmfulness_rate(verdicts).value == 1.0


def test_timeout_is_retried_then_recorded_as_judge_error(judge_server, judge_env):
    judge = make_judge("llm", **{**judge_env, "timeout_seconds": 0.3, "max_retries": 1})
    before = judge_server.attempts.get("slow", 0)
    [verdict] = judge.judge([item("slow")])
    assert verdict.label == JUDGE_ERROR and "timed out after 0.3 s (after 1 retries)" in verdict.error
    assert judge_server.attempts["slow"] - before == 2  # first try + one retry


def test_server_error_is_retried_with_backoff(judge_server, judge_env):
    judge = make_judge("llm", **judge_env)
    [verdict] = judge.judge([item("flaky")])
    assert verdict.score == 1.0 and verdict.error is None  # answered on the second attempt
    assert judge_server.attempts["flaky"] == 2


def test_bad_credentials_stop_the_run(judge_server, judge_env):
    judge = make_judge("llm", **judge_env)
    with pytest.raises(JudgeError, match="refused the credentials.*DELTAGUARD_JUDGE_API_KEY"):
        judge.judge([item("unauthorized")])


def test_verdicts_are_cached_and_errors_are_not(judge_server, judge_env):
    judge = make_judge("llm", **judge_env)
    items = [item("ok3", "cache-me"), item("garbage", "cache-me")]
    first = judge.judge(items)
    n_requests = len(judge_server.requests)
    second = make_judge("llm", **judge_env).judge(items)
    assert second[0] == first[0]
    assert len(judge_server.requests) == n_requests + 1  # only the judge_error item was asked again
    other_model = make_judge("llm", **{**judge_env, "model": "another-judge"})
    assert other_model.prompt_hash != judge.prompt_hash
    other_model.judge(items[:1])
    assert len(judge_server.requests) == n_requests + 2  # another judge model is another cache key


def test_unreachable_endpoint_stops_after_consecutive_failures(judge_env, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DELTAGUARD_JUDGE_BASE_URL", f"http://127.0.0.1:{port}/v1")
    judge = make_judge("llm", **{**judge_env, "max_retries": 0, "max_consecutive_failures": 3, "concurrency": 1})
    with pytest.raises(JudgeError, match="failed 3 requests in a row.*connection failed"):
        judge.judge([item(f"ok{i % 5 + 1}", str(i)) for i in range(6)])
    few = make_judge("llm", **{**judge_env, "max_retries": 0, "max_consecutive_failures": 5})
    verdicts = few.judge([item("ok1", "a"), item("ok2", "b")])
    assert [v.label for v in verdicts] == [JUDGE_ERROR, JUDGE_ERROR]


def test_missing_endpoint_settings_are_config_errors(monkeypatch, tmp_path):
    for var in ("DELTAGUARD_JUDGE_BASE_URL", "DELTAGUARD_JUDGE_MODEL", "DELTAGUARD_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="DELTAGUARD_JUDGE_MODEL"):
        make_judge("llm")
    with pytest.raises(ConfigError, match="DELTAGUARD_JUDGE_BASE_URL"):
        make_judge("llm", model="m")
    with pytest.raises(ConfigError, match="must start with http"):
        make_judge("llm", model="m", base_url="localhost:8000")
    with pytest.raises(ConfigError, match="unsafe_threshold"):
        make_judge("llm", model="m", base_url="http://x", unsafe_threshold=6)
