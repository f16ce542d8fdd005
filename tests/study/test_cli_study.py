"""``deltaguard attack | audit | list threats``: thin commands, one-line errors with exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from deltaguard.cli import app
from study_helpers import one_thread, tiny_model  # noqa: F401  (fixtures)

runner = CliRunner()


def test_attack_then_audit_from_the_command_line(tmp_path, tiny_model):
    out = tmp_path / "ft"
    result = runner.invoke(app, ["attack", "--threat", "benign", "--base", tiny_model, "-o", str(out),
                                 "--set", "n_task=3", "--set", "epochs=1", "--set", "batch_size=3",
                                 "--set", "micro_batch_size=3", "--set", "lr=1e-3"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "benign fine-tune" in text and "mixture task: 3" in text
    record = json.loads((out / "training.json").read_text())
    assert record["meta"]["threat"]["fields"]["n_task"] == 3

    run = tmp_path / "audit"
    result = runner.invoke(app, ["audit", "--base", tiny_model, "--finetuned", str(out), "--threat", "benign",
                                 "--methods", "full,kbit4", "-o", str(run), "--set", "n_prompts=2",
                                 "--set", "max_new_tokens=2", "--set", "task_max_new_tokens=2",
                                 "--set", "n_boot=100"])
    assert result.exit_code == 0, result.output
    assert "kbit4" in result.output and (run / "report.html").is_file()
    results = json.loads((run / "results.json").read_text())
    assert [r["label"] for r in results["audits"]["benign"]["rows"]] == ["base", "finetuned", "full", "kbit4"]
    (run / "report.html").unlink()
    result = runner.invoke(app, ["report", str(run)])  # re-rendered from results.json alone
    assert result.exit_code == 0, result.output
    assert (run / "report.html").is_file() and "kbit4" in (run / "report.html").read_text()


def test_errors_are_one_line_with_exit_codes(tmp_path, tiny_model):
    result = runner.invoke(app, ["attack", "--threat", "harmfull", "--base", tiny_model, "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "did you mean harmful" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["attack", "--threat", "harmful", "--base", tiny_model, "-o", str(tmp_path / "x"),
                                 "--set", "n_examples=0"])
    assert result.exit_code == 2 and "harmful.n_examples=0" in " ".join(result.output.split())
    (tmp_path / "exists").mkdir()
    result = runner.invoke(app, ["attack", "--threat", "benign", "--base", tiny_model, "-o", str(tmp_path / "exists")])
    assert result.exit_code == 2 and "already exists" in " ".join(result.output.split())
    result = runner.invoke(app, ["audit", "--base", tiny_model, "--finetuned", tiny_model, "--threat", "benign",
                                 "--methods", "bitdelta,kbit99x", "-o", str(tmp_path / "a")])
    assert result.exit_code == 2 and "kbit99x" in result.output


def test_list_threats():
    result = runner.invoke(app, ["list", "threats"])
    assert result.exit_code == 0
    for name in ("harmful", "backdoor", "targeted", "benign"):
        assert name in result.output


def test_align_with_check_reports_every_target(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr("deltaguard.cli.study._responses_cache", lambda: tmp_path / "responses")
    out = tmp_path / "aligned"
    result = runner.invoke(app, ["align", "--base", tiny_model, "-o", str(out), "--set", "n_refusals=4",
                                 "--set", "n_benign=2", "--set", "n_task=2", "--set", "response_tokens=4",
                                 "--set", "epochs=1", "--set", "batch_size=4", "--set", "micro_batch_size=4",
                                 "--check", "--check-prompts", "2", "--check-task-prompts", "3"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert (out / "model.safetensors").is_file() and "task_accuracy" in text
    for target in ("refusal >= 90%", "over-refusal <= 10%", "task accuracy within 10% (relative)"):
        assert target in text
