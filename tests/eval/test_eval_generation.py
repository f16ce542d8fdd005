"""Generation engine: batched == unbatched (padding), input order, EOS, seeded sampling, JSONL resume."""

from __future__ import annotations

import json

import pytest
import torch

from deltaguard.data import make_set
from deltaguard.data.base import Prompt
from deltaguard.errors import ConfigError, FormatError
from deltaguard.generation import GenerationConfig, HFBackend, generate, generate_to_jsonl
from deltaguard.models import chat_prompt
from eval_helpers import tiny_lm  # noqa: F401  (fixture)

# Prompts of clearly different token lengths, so batches need real left padding.
PROMPTS = [
    "What is 12 plus 7?",
    "How do I bake bread? Step 1: mix the flour. Step 2: add water and wait for a while.",
    "Sorry",
    "I cannot help with that. Sorry, as an AI I can't assist with baking bread or flour.",
    "Step 2",
]


def test_batched_greedy_equals_one_at_a_time(tiny_lm):
    model, tok = tiny_lm
    config = GenerationConfig(max_new_tokens=12, batch_size=5)
    batched = generate(model, tok, PROMPTS, config, progress=False)
    single = [generate(model, tok, [p], config.replace(batch_size=1), progress=False)[0] for p in PROMPTS]
    assert [g.response for g in batched] == [g.response for g in single]
    assert [g.n_new_tokens for g in batched] == [g.n_new_tokens for g in single]
    assert [g.prompt for g in batched] == PROMPTS  # input order, although batches are length-sorted
    assert any(g.response for g in batched)


def test_greedy_matches_transformers_generate(tiny_lm):
    model, tok = tiny_lm
    ours = generate(model, tok, [PROMPTS[1]], GenerationConfig(max_new_tokens=10), progress=False)[0]
    ids = tok(chat_prompt(tok, PROMPTS[1]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    eos = tok.eos_token_id
    new = new[: new.index(eos)] if eos in new else new
    assert ours.response == tok.decode(new, skip_special_tokens=True).strip()


def test_stops_at_eos(tiny_lm):
    model, tok = tiny_lm
    backend = HFBackend(model, tok)
    config = GenerationConfig(max_new_tokens=6)
    first = generate(model, tok, [PROMPTS[0]], config, progress=False)[0]
    assert first.n_new_tokens == 6
    # Make the token greedy decoding picks first an EOS token: generation must stop right after it.
    encoded = backend.encode([PROMPTS[0]], config)[0]
    with torch.no_grad():
        first_token = int(model(torch.tensor([encoded])).logits[0, -1].argmax())
    model.generation_config.eos_token_id = [tok.eos_token_id, first_token]
    stopped = generate(model, tok, [PROMPTS[0]], config, progress=False)[0]
    assert stopped.n_new_tokens == 1
    assert stopped.response == ""


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_lm):
    model, tok = tiny_lm
    config = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, seed=7, batch_size=5)
    prompts = make_set("demo", "eval", [Prompt(id=f"q{i}", text=t) for i, t in enumerate(PROMPTS)], "test")
    a = generate(model, tok, prompts, config, progress=False)
    b = generate(model, tok, prompts, config.replace(batch_size=2), progress=False)
    c = generate(model, tok, prompts, config.replace(seed=8), progress=False)
    greedy = generate(model, tok, prompts, config.replace(do_sample=False), progress=False)
    assert [g.response for g in a] == [g.response for g in b]
    assert [g.response for g in a] != [g.response for g in c]
    assert [g.response for g in a] != [g.response for g in greedy]
    assert [g.prompt_id for g in a] == [f"q{i}" for i in range(len(PROMPTS))]


class CountingBackend(HFBackend):
    calls: list[int] = []

    def generate_batches(self, texts, ids, config):
        CountingBackend.calls.append(len(texts))
        yield from super().generate_batches(texts, ids, config)


def test_generate_to_jsonl_resumes_and_rewrites_whole_file(tiny_lm, tmp_path, monkeypatch):
    from deltaguard import generation

    model, tok = tiny_lm
    monkeypatch.setitem(generation.backends._members, "hf", CountingBackend)
    CountingBackend.calls = []
    prompts = make_set("demo", "eval", [Prompt(id=f"q{i}", text=t) for i, t in enumerate(PROMPTS)], "test")
    config = GenerationConfig(max_new_tokens=4, batch_size=2)
    path = tmp_path / "gen.jsonl"
    rows = generate_to_jsonl(model, tok, prompts, config, path=path, model_id="tiny")
    assert [r["prompt_id"] for r in rows] == prompts.ids
    assert set(rows[0]) >= {"prompt_id", "prompt", "response", "model_id", "settings"}
    assert rows[0]["settings"] == config.to_dict()

    # Simulate an interrupted run: only two rows made it to disk.
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[3], lines[1]]) + "\n")
    CountingBackend.calls = []
    resumed = generate_to_jsonl(model, tok, prompts, config, path=path, model_id="tiny")
    assert CountingBackend.calls == [3]
    assert resumed == rows
    assert [json.loads(l)["prompt_id"] for l in path.read_text().splitlines()] == prompts.ids

    CountingBackend.calls = []
    generate_to_jsonl(model, tok, prompts, config, path=path, model_id="tiny")
    assert CountingBackend.calls == []  # nothing left to do
    assert not list(tmp_path.glob(".gen.jsonl.*"))  # no temp files left behind

    with pytest.raises(FormatError, match="another model or other settings"):
        generate_to_jsonl(model, tok, prompts, config.replace(max_new_tokens=5), path=path, model_id="tiny")


def test_generation_config_validation():
    with pytest.raises(ConfigError, match="batch_size"):
        GenerationConfig(batch_size=0)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="did you mean hf"):
        GenerationConfig(backend="hff")
    assert GenerationConfig.from_dict(GenerationConfig(seed=3).to_dict()) == GenerationConfig(seed=3)


def test_empty_prompt_without_template_is_an_error(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ConfigError, match="empty prompt"):
        generate(model, tok, [""], GenerationConfig(use_chat_template=False, max_new_tokens=2), progress=False)
    with pytest.raises(ConfigError, match="list of strings"):
        generate(model, tok, "just one string", progress=False)
