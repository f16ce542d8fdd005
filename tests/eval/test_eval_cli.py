"""``deltaguard eval | judge-check | data``: happy paths and error paths (exit code + one-line message)."""

from __future__ import annotations

import json

import pytest

from clirun import one_error_line, run
from tinymodels import make_tiny_llama, perturb, save_dir

FAST = ["--set", "generation.max_new_tokens=3", "--set", "n_boot=200"]




@pytest.mark.parametrize("args,code,message", [
    (["eval", "--judge", "keywrd", "-o", "{tmp}/r"], 2, "unknown judge 'keywrd' (did you mean keyword?)"),
    (["eval", "--suite", "speed", "-o", "{tmp}/r"], 2, "unknown suite 'speed'"),
    (["eval", "--suite", ",", "-o", "{tmp}/r"], 2, "--suite must name at least one item"),
    (["eval", "--limit", "0", "-o", "{tmp}/r"], 2, "eval.limit=0 must be in [1, inf]"),
    (["eval", "--set", "harmful_sets=advbnch", "-o", "{tmp}/r"], 2, "did you mean advbench"),
    (["eval", "--set", "generation.top_p=2", "-o", "{tmp}/r"], 2, "generation.top_p=2.0"),
    (["eval", "--judge-opt", "llm.model=x", "-o", "{tmp}/r"], 2, "for judge 'llm', which is not in judges"),
    (["eval", "--model", "{tmp}/nowhere", "-o", "{tmp}/r"], 1, "is not a path, an embedded model"),
    (["eval", "--delta", "{tmp}/nodelta", "-o", "{tmp}/r"], 2, "is not a delta directory"),
    (["judge-check", "--judge", "keyword", "--task", "harm", "-o", "{tmp}/j"], 2, "does not judge unsafe"),
    (["judge-check", "--judge", "keyword", "--task", "jokes", "-o", "{tmp}/j"], 2, "task 'jokes' must be one of"),
    (["judge-check", "--judge", "llamaguard", "-o", "{tmp}/j"], 2, "needs a local checkpoint"),
    (["judge-check", "--judge", "nope", "-o", "{tmp}/j"], 2, "unknown judge 'nope'"),
    (["data", "show", "{tmp}/missing.jsonl"], 2, "does not exist"),
    (["data", "show", "{tmp}/empty.jsonl"], 1, "holds no prompts"),
])
def test_error_paths(tmp_path, monkeypatch, args, code, message):
    (tmp_path / "empty.jsonl").write_text("")
    exit_code, output = run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert exit_code == code, output
    assert message in one_error_line(output)
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_llm_judge_without_endpoint_names_the_env_vars(monkeypatch, tmp_path):
    for var in ("DELTAGUARD_JUDGE_BASE_URL", "DELTAGUARD_JUDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    code, output = run("judge-check", "--judge", "llm", "-o", tmp_path)
    assert code == 2 and "DELTAGUARD_JUDGE_MODEL" in one_error_line(output)


def test_eval_end_to_end_and_rerun(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    code, output = run("eval", "--model", tiny_model_dir, "--limit", "2", "-o", out, *FAST)
    assert code == 0, output
    assert "asr_refusal" in output and "task_accuracy" in output and "perplexity" in output
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["spec"] == str(tiny_model_dir) and results["model_id"].startswith("model-")
    assert {m["metric"] for m in results["metrics"]} == {"refusal_rate", "asr_refusal", "over_refusal",
                                                          "task_accuracy", "perplexity"}
    assert (out / "summary.md").is_file()
    before = {p: p.stat().st_mtime_ns for p in (out / "generations").glob("*.jsonl")}
    code, output = run("eval", "--model", tiny_model_dir, "--limit", "2", "-o", out, *FAST)
    assert code == 0, output
    assert {p: p.stat().st_mtime_ns for p in (out / "generations").glob("*.jsonl")} == before


def test_eval_with_delta_applies_it_in_memory(tmp_path, tiny_tokenizer):
    from deltaguard import delta as delta_api

    vocab = len(tiny_tokenizer)
    base = save_dir(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), tmp_path / "base")
    tiny_tokenizer.save_pretrained(base)
    ft = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), seed=1, scale=0.05), tmp_path / "ft")
    tiny_tokenizer.save_pretrained(ft)
    packed = delta_api.compress(delta_api.extract_delta(base, ft), delta_api.method_from_spec("kbit4"))
    packed.save(tmp_path / "d")
    args = ["--suite", "safety", "--limit", "3", *FAST]
    assert run("eval", "--model", base, "-o", tmp_path / "r-base", *args)[0] == 0
    code, output = run("eval", "--model", base, "--delta", tmp_path / "d", "-o", tmp_path / "r-delta", *args)
    assert code == 0, output
    results = json.loads((tmp_path / "r-delta" / "results.json").read_text())
    assert results["model"]["kind"] == "base+delta" and results["model"]["delta"] == str(tmp_path / "d")
    assert results["model_id"].startswith("variant-")
    responses = {}
    for run_dir in ("r-base", "r-delta"):
        gen = next((tmp_path / run_dir / "generations").glob("*.jsonl"))
        responses[run_dir] = [json.loads(line)["response"] for line in gen.read_text().splitlines()]
    assert responses["r-base"] != responses["r-delta"]  # the delta changed the model
    assert not list(tmp_path.glob("r-delta/**/*.safetensors"))  # no merged model written


def test_data_list_and_show():
    code, output = run("data", "list")
    assert code == 0, output
    for name in ("advbench", "donotanswer", "arith", "benign", "calib-chat", "pyrit-refusal", "pyrit-harm"):
        assert name in output
    code, output = run("data", "show", "arith", "--limit", "2")
    assert code == 0 and "arith-" in output and "answer" in output


def test_list_families_include_eval_registries():
    for family, member in (("judges", "llamaguard"), ("datasets", "calib-chat"), ("backends", "hf")):
        code, output = run("list", family)
        assert code == 0 and member in output


@pytest.mark.slow
def test_judge_check_keyword_writes_agreement(tmp_path):
    code, output = run("judge-check", "--judge", "keyword", "-o", tmp_path)
    assert code == 0, output
    assert "Cohen's kappa" in output and "confusion matrix" in output
    saved = json.loads((tmp_path / "judge-check-keyword-refusal.json").read_text())
    assert saved["dataset"]["name"] == "pyrit-refusal" and saved["agreement"]["n"] == 169
