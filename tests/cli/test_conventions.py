"""CLI conventions: --version, --json on the verbs that report, one --force with guard rails, `report`."""

from __future__ import annotations

import json

import pytest

from clirun import one_error_line, run
from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard import __version__





@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("conv")
    vocab = len(tiny_tokenizer)
    base = save_dir(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), root / "base")
    ft = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), seed=1, scale=0.02), root / "ft")
    for path in (base, ft):
        tiny_tokenizer.save_pretrained(path)
    return root, base, ft


def test_version():
    code, output = run("--version")
    assert code == 0 and output.strip() == f"deltaguard {__version__}"


def test_inspect_and_list_print_json(pair, tmp_path):
    root, base, ft = pair
    assert run("compress", "--base", base, "--finetuned", ft, "--method", "kbit4", "-o", tmp_path / "d")[0] == 0
    code, output = run("inspect", tmp_path / "d", "--json")
    assert code == 0, output
    data = json.loads(output)
    assert data["label"] == "kbit4" and data["summary"]["bits_per_param"] > 0 and data["tensors"]
    code, output = run("list", "compressors", "--json")
    rows = json.loads(output)
    assert code == 0 and "kbit" in [row["name"] for row in rows] and all(row["description"] for row in rows)


def test_eval_and_judge_check_print_json(pair, tmp_path):
    root, base, _ = pair
    code, output = run("eval", "--model", base, "--suite", "safety", "--limit", "2", "-o", tmp_path / "r", "--json",
                       "--set", "generation.max_new_tokens=2", "--set", "n_boot=100")
    assert code == 0, output
    data = json.loads(output)
    assert {m["metric"] for m in data["metrics"]} == {"refusal_rate", "asr_refusal"}
    code, output = run("judge-check", "--judge", "keyword", "--limit", "10", "-o", tmp_path / "j", "--json")
    assert code == 0, output
    assert json.loads(output)["agreement"]["n"] == 10


def test_artifacts_need_force_and_force_replaces_them(pair, tmp_path):
    root, base, ft = pair
    out = tmp_path / "d"
    assert run("compress", "--base", base, "--finetuned", ft, "--method", "kbit4", "-o", out)[0] == 0
    code, output = run("compress", "--base", base, "--finetuned", ft, "--method", "kbit2", "-o", out)
    assert code == 2 and "already exists (pass --force" in one_error_line(output)
    assert run("compress", "--base", base, "--finetuned", ft, "--method", "kbit2", "-o", out, "--force")[0] == 0
    assert json.loads((out / "manifest.json").read_text())["method"]["fields"]["bits"] == 2
    assert not list(tmp_path.glob(".d.*"))  # no leftovers of the replaced directory
    code, output = run("judge-check", "--judge", "keyword", "--limit", "5", "-o", tmp_path / "j")
    assert code == 0, output
    code, output = run("judge-check", "--judge", "keyword", "--limit", "5", "-o", tmp_path / "j")
    assert code == 2 and "already exists" in one_error_line(output)


def test_force_never_deletes_a_directory_that_is_not_a_run_directory(pair, tmp_path, monkeypatch):
    root, base, _ = pair
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code, output = run("eval", "--model", base, "-o", precious, "--force")
    assert code == 2 and "not a deltaguard run directory" in one_error_line(output)
    assert (precious / "notes.txt").read_text() == "keep me"
    monkeypatch.chdir(precious)
    for target in (".", str(tmp_path)):
        code, output = run("eval", "--model", base, "-o", target, "--force")
        assert code == 2 and "holds the current or home directory" in one_error_line(output)
    assert (precious / "notes.txt").is_file()


def test_force_on_a_run_directory_starts_over(pair, tmp_path):
    root, base, _ = pair
    args = ["eval", "--model", base, "--suite", "safety", "--limit", "2", "-o", tmp_path / "r",
            "--set", "generation.max_new_tokens=2", "--set", "n_boot=100"]
    assert run(*args)[0] == 0
    (tmp_path / "r" / "generations" / "stale.jsonl").write_text("{}\n")
    assert run(*args, "--force")[0] == 0
    assert not (tmp_path / "r" / "generations" / "stale.jsonl").exists()


def test_unwritable_outputs_fail_before_any_work(pair, tmp_path):
    root, base, ft = pair
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, output = run("compress", "--base", base, "--finetuned", ft, "--method", "kbit4", "-o", blocker / "d")
    assert code == 2 and "is a file, not a directory" in one_error_line(output)
    code, output = run("eval", "--model", base, "-o", blocker)
    assert code == 2 and "is a file" in one_error_line(output)


def test_report_re_renders_a_run_and_refuses_other_directories(tmp_path):
    from deltaguard.io import write_json

    code, output = run("report", tmp_path)
    assert code == 2 and "holds no results.json" in one_error_line(output)
    write_json(tmp_path / "results.json", {"model_id": "x", "metrics": []})
    code, output = run("report", tmp_path)
    assert code == 2 and "not a study or audit result" in one_error_line(output)


def test_tables_keep_their_columns_in_logs_and_pipes(monkeypatch):
    """Output to a file or a pipe gets LOG_WIDTH columns (rich would use 80 and cut the guard's 10-column table);
    COLUMNS, when set, wins."""
    import io

    from deltaguard.cli.app import LOG_WIDTH, _console

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert _console().width == LOG_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert _console().width == 100


def _cli_thread_env(env: dict[str, str]) -> list[str]:
    """The OpenMP variables as the CLI package leaves them, in a fresh interpreter started with ``env``."""
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import sys, deltaguard; assert 'torch' not in sys.modules, 'torch loads before the CLI sets its env'; "
            "import os, deltaguard.cli; "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def test_cli_spins_briefly_unless_the_user_chose_a_wait_policy():
    assert _cli_thread_env({}) == ["PASSIVE", "1000"]
    assert _cli_thread_env({"OMP_WAIT_POLICY": "ACTIVE"}) == ["ACTIVE", "None"]
    assert _cli_thread_env({"GOMP_SPINCOUNT": "50"}) == ["None", "50"]
