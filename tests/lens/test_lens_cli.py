"""``deltaguard lens``: happy paths (models, base + delta) and the errors a user can hit."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def setup(tmp_path, tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    base = save_dir(make_tiny_llama(seed=0, vocab_size=vocab), tmp_path / "base")
    tiny_tokenizer.save_pretrained(base)
    ft = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab), seed=1, scale=0.05), tmp_path / "ft")
    tiny_tokenizer.save_pretrained(ft)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I bake bread?\n\nWhat is 12 plus 7?\nStep 1: mix\n")
    return tmp_path, base, ft, prompts


def test_lens_two_models_writes_csv_json_and_plots(setup):
    root, base, ft, prompts = setup
    code, out = run("lens", "--model", base, "--model", ft, "--prompts", prompts, "--limit", 2, "-o", root / "out",
                    "--target", "19", "--set", "top_k=3")
    assert code == 0, out
    assert "base" in out and "ft" in out and "wrote 10 files" in out
    data = json.loads((root / "out" / "lens.json").read_text())
    assert data["models"] == ["base", "ft"] and len(data["prompt_ids"]) == 2  # blank line skipped, limit kept
    assert data["source"]["models"]["ft"] == {"model": str(ft), "delta": None}
    assert [t["name"] for t in data["token_sets"]] == ["refusal", "compliance", "target"]
    assert all(len(r["top_ids"]) == 3 for r in data["records"])
    names = {p.name for p in (root / "out").iterdir()}
    assert {"records.csv", "curves.csv", "comparisons.csv", "margin_curves.png", "margin_heatmap.png",
            "top_tokens_0_base.png", "top_tokens_1_ft.png"} <= names
    assert not [n for n in names if n.startswith(".")]
    # an existing output is never overwritten by accident, and --overwrite replaces it
    code, out = run("lens", "--model", base, "--prompts", prompts, "-o", root / "out")
    assert code == 2 and "already exists" in out
    code, out = run("lens", "--model", base, "--prompts", prompts, "-o", root / "out", "--overwrite", "--no-plots")
    assert code == 0, out
    assert not list((root / "out").glob("*.png"))


def test_lens_with_a_delta_applies_it_in_memory(setup):
    root, base, ft, prompts = setup
    from deltaguard.delta import compress, extract_delta, method_from_spec

    packed = compress(extract_delta(base, ft), method_from_spec("kbit4"))
    packed.save(root / "delta")
    code, out = run("lens", "--model", base, "--delta", root / "delta", "--model", ft, "--prompts", prompts,
                    "-o", root / "out")
    assert code == 0, out
    data = json.loads((root / "out" / "lens.json").read_text())
    assert data["models"] == ["base", "ft", "base+delta"]
    assert data["source"]["models"]["base+delta"] == {"model": str(base), "delta": str(root / "delta")}
    final = {s["model"]: s["final_margin_mean"] for s in data["summaries"]}
    # 4-bit delta: base + delta lands near the fine-tune, far from the base
    assert abs(final["base+delta"] - final["ft"]) < 0.5 * abs(final["base"] - final["ft"])


@pytest.mark.parametrize("args,code,message", [
    (["--prompts", "missing.txt"], 2, "prompt file missing.txt does not exist"),
    (["--prompts", "advbnch"], 2, "did you mean advbench"),
    (["--limit", "0"], 2, "limit=0 must be >= 1"),
    (["--set", "top_k=0"], 2, "lens.top_k=0 must be in [1, 100]"),
    (["--set", "positions=first"], 2, "lens.positions='first' must be one of last, all"),
    (["--set", "nope=1"], 2, "lens has no field 'nope'"),
    (["--set", "sites=layers.7.resid_post"], 2, "out of range for a 2-layer model"),
    (["--delta", "no-such-delta"], 2, "delta no-such-delta is not a directory"),
    (["--dtype", "int8"], 2, "dtype='int8' must be one of"),
    (["--target", "   "], 2, "empty word"),
])
def test_lens_errors_are_one_line_with_exit_codes(setup, args, code, message, monkeypatch):
    root, base, _, prompts = setup
    monkeypatch.chdir(root)
    full = ["lens", "--model", base, "--prompts", prompts, "-o", root / "out", *args]
    exit_code, out = run(*full)
    assert exit_code == code, out
    assert message in out
    assert "Traceback" not in out and out.strip().startswith("error:")
    assert not (root / "out").exists()


def test_lens_rejects_an_empty_prompt_file_and_a_bad_model(setup):
    root, base, _, _ = setup
    empty = root / "empty.txt"
    empty.write_text("\n  \n")
    code, out = run("lens", "--model", base, "--prompts", empty, "-o", root / "out")
    assert code == 2 and "has no non-empty lines" in out
    code, out = run("lens", "--model", root / "nowhere", "--prompts", empty, "-o", root / "out")
    assert code == 2 and "has no non-empty lines" in out  # prompts are checked before any model is loaded
    prompts = root / "p.txt"
    prompts.write_text("hi\n")
    code, out = run("lens", "--model", root / "nowhere", "--prompts", prompts, "-o", root / "out")
    assert code == 1 and "error:" in out and "nowhere" in out
