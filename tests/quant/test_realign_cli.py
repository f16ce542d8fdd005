"""``deltaguard realign`` and the audit's quantization rows, end to end on tiny models."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.cli import app
from deltaguard.quant.artifact import read_manifest
from deltaguard.quant.linear import QuantLinear
from deltaguard.quant.probes import SafetyProbes

FAST = ["--set", "epochs_first=1", "--set", "epochs_second=1", "--set", "n_harmful=16", "--set", "n_benign=8"]


def _pair(tmp_path, tokenizer):
    vocab = len(tokenizer)
    base = save_dir(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), tmp_path / "base")
    ft = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), seed=1, scale=0.02), tmp_path / "ft")
    for path in (base, ft):
        tokenizer.save_pretrained(path)
    return base, ft


def test_realign_writes_a_loadable_quantized_model_with_its_probes(tmp_path, tiny_tokenizer):
    from deltaguard.models import load_model

    base, ft = _pair(tmp_path, tiny_tokenizer)
    out = tmp_path / "realigned"
    result = CliRunner().invoke(app, ["realign", "--model", str(ft), "--reference", str(base), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "bits/param" in result.output and "saved" in result.output
    manifest = read_manifest(out)
    assert manifest["record"]["label"] == "qrealign-w8a8" and len(manifest["record"]["calibration"]["blocks"]) == 2
    assert "probes.safetensors" in manifest["files"]
    probes = SafetyProbes.load(out)
    assert probes.n_layers == 2 and len(probes.accuracy) == 2
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    assert set(diagnostics["models"]) == {"aligned", "fine-tune", "realigned"}
    assert all(len(v["probe_accuracy"]) == 2 for v in diagnostics["models"].values())
    assert (out / "diagnostics.png").stat().st_size > 1000 and "diagnostics.json" in manifest["files"]
    assert "held-out prompts, mean over blocks" in result.output
    assert set(manifest["record"]["diagnostics"]) == {"aligned", "fine-tune", "realigned"}
    model = load_model(out)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[3, 4, 5]])).logits).all()
    assert not list(tmp_path.glob(".realigned.partial*"))   # the resumable state is gone once the model is saved
    again = CliRunner().invoke(app, ["realign", "--model", str(ft), "--reference", str(base), "-o", str(out), *FAST])
    assert again.exit_code != 0 and "already exists" in again.output


def test_realign_refuses_a_missing_reference_and_a_non_quantizer(tmp_path, tiny_tokenizer):
    base, ft = _pair(tmp_path, tiny_tokenizer)
    missing = CliRunner().invoke(app, ["realign", "--model", str(ft), "-o", str(tmp_path / "o")])
    assert missing.exit_code != 0 and "needs --reference" in missing.output
    extra = CliRunner().invoke(app, ["realign", "--model", str(ft), "--reference", str(base), "--method", "rtn-w8a8",
                                     "-o", str(tmp_path / "o")])
    assert extra.exit_code != 0 and "does not use a reference" in extra.output
    assert not (tmp_path / "o").exists()


def test_audit_sweeps_quantizations_beside_deltas(tmp_path, tiny_tokenizer):
    base, ft = _pair(tmp_path, tiny_tokenizer)
    result = CliRunner().invoke(app, [
        "audit", "--base", str(base), "--finetuned", str(ft), "--threat", "benign",
        "--methods", "full,rtn-w8a8,qrealign-w8a8", "-o", str(tmp_path / "run"), "--set", "n_prompts=2",
        "--set", "max_new_tokens=2", "--set", "task_max_new_tokens=2", "--set", "n_boot=100",
        "--set", "method_overrides=qrealign.epochs_first=1,qrealign.epochs_second=1,qrealign.n_harmful=8,qrealign.n_benign=8"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["audits"]["benign"]["rows"]
    assert [(r["label"], r["role"]) for r in rows][2:] == [("full", "compressed"), ("rtn-w8a8", "transformed"),
                                                          ("qrealign-w8a8", "transformed")]
    realigned = rows[4]["compression"]
    assert 8 < realigned["linear_bits_per_param"] < 9 and realigned["seconds"] > 0
    assert rows[3]["compression"]["w_bits"] == 8
    saved = list((tmp_path / "run" / "quantized").iterdir())
    assert len(saved) == 1 and (saved[0] / "probes.json").is_file() and (saved[0] / "diagnostics.png").is_file()
    assert set(realigned["diagnostics"]) == {"aligned", "fine-tune", "realigned"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "figures/diagnostics-benign-qrealign-w8a8.png" in report and "calibrated in" in report
    assert (tmp_path / "run" / "figures" / "diagnostics-benign-qrealign-w8a8.png").is_file()
