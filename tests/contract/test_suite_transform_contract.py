"""The evaluation-suite and whole-model-transform families honour their contracts (generated from the
registries), and a one-file toy compressor and a transform run in ``audit --methods`` beside the deltas."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.eval import EvalConfig, InMemory, Runner, SuiteContext, Transformed, Variant, suites
from deltaguard.eval.evaluate import load_sets
from deltaguard.generation import GenerationConfig
from deltaguard.judges import make_judge
from deltaguard.metrics import Rate, Score
from deltaguard.transforms import transform_from_spec, transforms

CONFIG = EvalConfig(limit=2, n_boot=100, generation=GenerationConfig(max_new_tokens=3, batch_size=4))


@pytest.fixture(scope="module")
def tiny_lm(tiny_tokenizer):
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), tied=False, hidden=128, intermediate=256)  # groups of 128 fit
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, key, getattr(tiny_tokenizer, key))
        setattr(model.generation_config, key, getattr(tiny_tokenizer, key))
    return model, tiny_tokenizer


@pytest.mark.parametrize("name", suites.names())
def test_every_suite_returns_records_on_its_own_sets(name, tiny_lm, tmp_path):
    suite = suites.get(name)()
    assert suite.name == name and suites.describe(name)
    config = CONFIG.replace(suites=(name,))
    sets = load_sets(config)
    assert set(suite.set_names(config)) <= set(sets)
    judges = [make_judge("keyword")] if suite.uses_judges else []
    ctx = SuiteContext(Runner(tmp_path, progress=False), Variant("tiny", "model", InMemory(*tiny_lm, key="t")),
                       config, judges, sets)
    records = suite.run(ctx)
    assert records
    for record in records:
        assert record.dataset in {sets[s].name for s in suite.set_names(config)}
        assert isinstance(record.result, (Rate, Score)) and record.result.n > 0
        # judge-free suites name no judge; a judging suite's records name the judge behind them, or none
        # when the number is parsed from the replies (a trust dimension's agree/disagree, true/false)
        assert record.judge is None if not suite.uses_judges else record.judge in (None, "keyword")


@pytest.mark.parametrize("name", transforms.names())
def test_every_transform_parses_its_label_and_rewrites_a_model_deterministically(name, tiny_lm):
    cls = transforms.get(name)
    config = cls.config_cls()
    assert cls.config_cls.name == name and transforms.describe(name)
    assert transform_from_spec(name) == config and transform_from_spec(config.label) == config
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model, tok = tiny_lm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = InMemory(model, tok, key="base")
    reference = InMemory(model, tok, key="reference") if config.needs_reference else None
    variant = Transformed(source, config, reference=reference)
    first, _ = variant.load()
    second, _ = Transformed(source, config, reference=reference).load()
    assert first is not model  # the caller's model is never changed
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    one, two = first.state_dict(), second.state_dict()
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one), "not deterministic"
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert first(input_ids=ids).logits.shape == model(input_ids=ids).logits.shape  # still a working model
    assert variant.key != source.key and variant.key == Transformed(source, config, reference=reference).key
    if config.needs_reference:
        other = Transformed(source, config, reference=InMemory(model, tok, key="another")).key
        assert other != variant.key   # the reference is part of the identity
    assert "method" in cls().record(config)


def test_precision_transform_rounds_to_the_16_bit_grid():
    model = make_tiny_llama(seed=3)
    rounded = transforms.get("precision")().apply_(make_tiny_llama(seed=3), transform_from_spec("bf16"))
    for (name, p), (_, q) in zip(model.named_parameters(), rounded.named_parameters()):
        assert torch.equal(q, p.to(torch.bfloat16).float()), name


def test_toy_compressor_and_a_transform_join_the_audit(tmp_path, tiny_tokenizer):
    """One file (toy_compressor.py) + one import made 'toy' a method; 'bf16' is a whole-model transform."""
    from deltaguard.cli import app

    vocab = len(tiny_tokenizer)
    base = save_dir(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), tmp_path / "base")
    ft = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), seed=1, scale=0.02), tmp_path / "ft")
    for path in (base, ft):
        tiny_tokenizer.save_pretrained(path)
    result = CliRunner().invoke(app, [
        "audit", "--base", str(base), "--finetuned", str(ft), "--threat", "benign", "--methods", "full,toy,bf16",
        "-o", str(tmp_path / "run"), "--set", "n_prompts=2", "--set", "max_new_tokens=2",
        "--set", "task_max_new_tokens=2", "--set", "n_boot=100"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["audits"]["benign"]["rows"]
    assert [(r["label"], r["role"]) for r in rows] == [("base", "base"), ("finetuned", "finetuned"),
                                                      ("full", "compressed"), ("toy", "compressed"),
                                                      ("bf16", "transformed")]
    assert rows[3]["compression"]["method"]["method"] == "toy" and rows[3]["compression"]["bits_per_param"] > 0
    assert rows[4]["compression"]["bits_per_param"] == 16.0
