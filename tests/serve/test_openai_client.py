"""End to end with the official ``openai`` client against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import pytest

from serve_helpers import KEYS

openai = pytest.importorskip("openai")


def make_client(live, key: str):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_chat_completion_and_models(live):
    client = make_client(live, KEYS["gamma"])
    assert sorted(m.id for m in client.models.list()) == ["delta", "gamma"]
    completion = client.chat.completions.create(
        model="delta", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
        max_tokens=6, temperature=0)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 6 and completion.model == "delta"


def test_streaming_matches_the_plain_answer(live):
    client = make_client(live, KEYS["alpha"])
    messages = [{"role": "user", "content": "What is 12 plus 7?"}]
    plain = client.chat.completions.create(model="alpha", messages=messages, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(model="alpha", messages=messages, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens


def test_client_errors_surface_as_openai_exceptions(live):
    with pytest.raises(openai.AuthenticationError):
        make_client(live, "wrong-key").chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="does not exist or this key cannot use it"):
        make_client(live, KEYS["beta"]).chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens=99"):
        make_client(live, KEYS["alpha"]).chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=99)


def test_concurrent_clients_of_different_tenants(live):
    from concurrent.futures import ThreadPoolExecutor

    def ask(i: int) -> str:
        tenant = ["alpha", "beta", "gamma", "delta"][i % 4]
        client = make_client(live, KEYS[tenant])
        reply = client.chat.completions.create(model=tenant, messages=[{"role": "user", "content": f"n{i}"}],
                                               max_tokens=5, temperature=0)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        batched = list(pool.map(ask, range(8)))
    assert batched == [ask(i) for i in range(8)]  # the same answers alone as in a shared batch
