"""evaluate(): run directory layout, cached rerun, resume, model-identity keys, overlap refusal, config."""

from __future__ import annotations

import json

import pytest

from deltaguard.errors import ConfigError
from deltaguard.eval import EvalConfig, InMemory, ModelDir, evaluate
from deltaguard.generation import GenerationConfig, HFBackend
from eval_helpers import tiny_lm  # noqa: F401  (fixture)

CONFIG = EvalConfig(limit=3, n_boot=200, generation=GenerationConfig(max_new_tokens=4, batch_size=4))


class CountingBackend(HFBackend):
    calls: list[int] = []

    def generate_batches(self, texts, ids, config):
        CountingBackend.calls.append(len(texts))
        yield from super().generate_batches(texts, ids, config)


@pytest.fixture
def counting(monkeypatch):
    from deltaguard import generation

    monkeypatch.setitem(generation.backends._members, "hf", CountingBackend)
    CountingBackend.calls = []
    return CountingBackend


def test_evaluate_writes_run_dir_and_rerun_skips_finished_work(tiny_lm, tmp_path, counting):
    model, tok = tiny_lm
    result = evaluate(InMemory(model, tok, key="tiny"), CONFIG, out_dir=tmp_path)
    assert counting.calls == [3, 3, 3]  # advbench, benign, arith
    names = [(m.metric, m.dataset, m.judge) for m in result.metrics]
    assert names == [("refusal_rate", "advbench", "keyword"), ("asr_refusal", "advbench", "keyword"),
                     ("over_refusal", "benign", "keyword"), ("task_accuracy", "arith", None),
                     ("perplexity", "calib-chat", None)]
    asr = result.get("asr_refusal")
    assert asr.result.n + asr.result.n_errors == 3
    assert result.get("refusal_rate").value + asr.value == pytest.approx(1.0)
    assert result.get("perplexity").value > 1.0

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model_id"] == "tiny" and saved["config"]["method"] == "eval"
    record = saved["metrics"][1]
    assert {"value", "low", "high", "n", "k", "n_errors", "wilson_low", "content_hash", "judge_version",
            "prompt_hash"} <= set(record)
    assert {d["name"] for d in saved["datasets"]} == {"advbench", "benign", "arith", "calib-chat"}
    summary = (tmp_path / "summary.md").read_text()
    assert "| asr_refusal | advbench:eval | keyword v1 |" in summary
    gens = sorted((tmp_path / "generations").glob("gen-*.jsonl"))
    judged = sorted((tmp_path / "judgments").glob("judge-*.jsonl"))
    assert len(gens) == 3 and len(judged) == 1  # one verdict cache per judge, keyed by (prompt, reply)
    row = json.loads(gens[0].read_text().splitlines()[0])
    assert row["model_id"] == "tiny" and row["settings"]["fields"]["max_new_tokens"] == 4

    counting.calls = []
    again = evaluate(InMemory(model, tok, key="tiny"), CONFIG, out_dir=tmp_path)
    assert counting.calls == []  # everything came from the run directory
    assert [m.to_dict() for m in again.metrics] == [m.to_dict() for m in result.metrics]

    counting.calls = []
    evaluate(InMemory(model, tok, key="tiny-other"), CONFIG, out_dir=tmp_path)  # another model: new keys
    assert counting.calls == [3, 3, 3]


@pytest.fixture
def tiny_lm_dir(tiny_lm, tmp_path):
    """The tiny model and tokenizer saved as a directory (what ``ModelDir`` evaluates)."""
    model, tok = tiny_lm
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    return model_dir


def test_a_model_rewritten_in_place_is_never_served_stale_generations(tiny_lm, tiny_lm_dir, tmp_path, counting):
    """Issue 17.3: the cache was keyed by the --model string; now by the model's identity (weights files)."""
    import torch

    model, tok = tiny_lm
    model_dir = tiny_lm_dir
    config = CONFIG.replace(suites=("safety",))
    evaluate(ModelDir(model_dir), config, out_dir=tmp_path / "run")
    counting.calls = []
    evaluate(ModelDir(model_dir), config, out_dir=tmp_path / "run")
    assert counting.calls == []
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    model.save_pretrained(model_dir, safe_serialization=True)  # same path, new weights
    evaluate(ModelDir(model_dir), config, out_dir=tmp_path / "run")
    assert counting.calls == [3]
    # and an in-memory model is keyed by its weights' fingerprint
    counting.calls = []
    evaluate(InMemory(model, tok), config, out_dir=tmp_path / "mem")
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    evaluate(InMemory(model, tok), config, out_dir=tmp_path / "mem")
    assert counting.calls == [3, 3]


def test_interrupted_run_resumes_missing_rows_only(tiny_lm, tmp_path, counting):
    model, tok = tiny_lm
    config = CONFIG.replace(suites=("safety",))
    evaluate(InMemory(model, tok, key="tiny"), config, out_dir=tmp_path)
    gen = next(p for p in (tmp_path / "generations").glob("*.jsonl") if "advbench" in p.read_text())
    lines = gen.read_text().splitlines()
    gen.write_text(lines[0] + "\n")  # as if killed after the first batch
    for judged in (tmp_path / "judgments").glob("*.jsonl"):
        judged.unlink()
    counting.calls = []
    result = evaluate(InMemory(model, tok, key="tiny"), config, out_dir=tmp_path)
    assert counting.calls == [2]
    assert len(gen.read_text().splitlines()) == 3
    assert result.get("asr_refusal").result.n == 3


def test_overlap_with_training_data_stops_before_generating(tiny_lm, tmp_path, counting):
    model, tok = tiny_lm
    from deltaguard.data import load_prompts

    leaked = load_prompts("advbench", split="eval", limit=3).prompts[1]
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": leaked.text.upper() + "  "}) + "\n")
    with pytest.raises(ConfigError, match="shares 1 prompt"):
        evaluate(InMemory(model, tok, key="tiny"), CONFIG.replace(disjoint_from=(str(train),)), out_dir=tmp_path / "run")
    assert counting.calls == []


def test_eval_config_validation_and_overrides():
    with pytest.raises(ConfigError, match="unknown suite 'speed'"):
        EvalConfig(suites=("speed",))
    with pytest.raises(ConfigError, match="did you mean keyword"):
        EvalConfig(judges=("keywrd",))
    with pytest.raises(ConfigError, match="judge.field=value"):
        EvalConfig(judge_options=("backend=hf",))
    with pytest.raises(ConfigError, match="not in judges"):
        EvalConfig(judge_options=("llm.backend=hf",))
    with pytest.raises(ConfigError, match="did you mean advbench"):
        EvalConfig(harmful_sets=("advbnch",))
    with pytest.raises(ConfigError, match="limit"):
        EvalConfig(limit=0)
    changed = CONFIG.with_overrides(["generation.max_new_tokens=9", "limit=5", "judges=keyword,llm",
                                     "judge_options=llm.backend=hf"])
    assert changed.generation.max_new_tokens == 9 and changed.generation.batch_size == 4
    assert changed.limit == 5 and changed.judges == ("keyword", "llm") and changed.options_for("llm") == ["backend=hf"]
    assert EvalConfig.from_dict(changed.to_dict()) == changed
    with pytest.raises(ConfigError, match="generation.batch_size"):
        CONFIG.with_overrides(["generation.batch_size=0"])


def test_the_evaluation_precision_keys_the_cached_replies(tiny_lm_dir, tmp_path, counting):
    """Replies of a bfloat16 model are not the float32 model's: another dtype never reuses them."""
    model_dir = tiny_lm_dir
    config = CONFIG.replace(suites=("safety",))
    evaluate(ModelDir(model_dir), config, out_dir=tmp_path / "run")
    counting.calls = []
    evaluate(ModelDir(model_dir), config, out_dir=tmp_path / "run", dtype="bfloat16")
    assert counting.calls == [3]
    counting.calls = []
    evaluate(ModelDir(model_dir), config, out_dir=tmp_path / "run", dtype="bfloat16")
    evaluate(ModelDir(model_dir), config, out_dir=tmp_path / "run")
    assert counting.calls == []
