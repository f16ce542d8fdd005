"""The delta commands: happy paths and every error a user can hit (exit code + one line, nothing half-written)."""

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
def dirs(tmp_path, tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    base = save_dir(make_tiny_llama(seed=0, vocab_size=vocab), tmp_path / "base")
    tiny_tokenizer.save_pretrained(base)
    ft = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab), seed=1), tmp_path / "ft")
    tiny_tokenizer.save_pretrained(ft)
    other = save_dir(make_tiny_llama(seed=9, vocab_size=vocab), tmp_path / "other")
    return tmp_path, base, ft, other


def test_compress_inspect_merge(dirs):
    root, base, ft, _ = dirs
    code, out = run("compress", "--base", base, "--finetuned", ft, "--method", "bitdelta", "--no-distill", "-o", root / "d")
    assert code == 0, out
    assert "smaller than the fp16 delta" in out and (root / "d" / "manifest.json").is_file()
    code, out = run("inspect", root / "d")
    assert code == 0 and "bitdelta-nodistill" in out
    code, out = run("merge", "--base", base, "--delta", root / "d", "-o", root / "m")
    assert code == 0, out
    assert (root / "m" / "config.json").is_file() and (root / "m" / "tokenizer_config.json").is_file()


def test_compress_with_distillation_from_a_text_file(dirs):
    root, base, ft, _ = dirs
    calib = root / "calib.txt"
    calib.write_text("How do I bake bread?\nWhat is 12 plus 7?\n")
    code, out = run("compress", "--base", base, "--finetuned", ft, "--calib", calib, "--set", "distill_steps=3",
                    "--set", "seq_len=16", "-o", root / "d")
    assert code == 0, out
    assert json.loads((root / "d" / "manifest.json").read_text())["meta"]["calibration"]["steps"] == 3


@pytest.mark.parametrize("args,code,message", [
    (["--method", "nope"], 2, "unknown compressor 'nope'"),
    (["--method", "kbit5"], 2, "kbit.bits=5 must be one of 2, 3, 4, 8"),
    (["--method", "kbit", "--set", "group_size=abc"], 2, "is not a valid int"),
    (["--method", "kbit", "--distill"], 2, "kbit4 has no calibration step to run"),
    (["--method", "kbit", "--no-calibrate"], 2, "kbit has no calibration step to switch off"),
    (["--method", "bitdelta", "--calib-limit", "0"], 2, "--calib-limit=0 must be >= 1"),
    (["--method", "bitdelta", "--calib", "."], 2, "calibration source . is a directory"),
    (["--method", "bitdelta", "--calib", "missing.txt"], 2, "calibration file missing.txt does not exist"),
])
def test_compress_usage_errors(dirs, args, code, message):
    root, base, ft, _ = dirs
    exit_code, out = run("compress", "--base", base, "--finetuned", ft, "-o", root / "d", *args)
    assert exit_code == code and message in out and "Traceback" not in out
    assert not (root / "d").exists()


def test_missing_and_empty_model_paths(dirs):
    root, base, _, _ = dirs
    (root / "empty").mkdir()
    code, out = run("compress", "--base", base, "--finetuned", root / "empty", "--no-distill", "-o", root / "d")
    assert code == 1 and "holds no model" in out
    code, out = run("compress", "--base", root / "nowhere", "--finetuned", base, "--no-distill", "-o", root / "d")
    assert code == 1 and "is not a path" in out
    assert not (root / "d").exists()


def test_architecture_mismatch(dirs, tmp_path):
    root, base, _, _ = dirs
    deeper = save_dir(make_tiny_llama(seed=0, n_layers=3, vocab_size=320), tmp_path / "deep")
    code, out = run("compress", "--base", base, "--finetuned", deeper, "--no-distill", "-o", root / "d")
    assert code == 1 and "architecture mismatch" in out


def test_existing_output_is_never_overwritten_without_force(dirs):
    root, base, ft, _ = dirs
    (root / "d").mkdir()
    (root / "d" / "keep.txt").write_text("mine")
    code, out = run("compress", "--base", base, "--finetuned", ft, "--no-distill", "-o", root / "d")
    assert code == 2 and "already exists" in out
    assert (root / "d" / "keep.txt").read_text() == "mine"


def test_delta_for_another_base_and_corrupt_delta(dirs):
    root, base, ft, other = dirs
    assert run("compress", "--base", base, "--finetuned", ft, "--method", "kbit4", "-o", root / "d")[0] == 0
    code, out = run("merge", "--base", other, "--delta", root / "d", "-o", root / "m")
    assert code == 1 and "was made for base" in out and not (root / "m").exists()
    tensors = root / "d" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    code, out = run("inspect", root / "d")
    assert code == 1 and "corrupted or truncated" in out
    code, out = run("inspect", root / "nothing")
    assert code == 1 and "is not a compressed delta directory" in out
    (root / "d" / "manifest.json").write_text("{oops")
    code, out = run("inspect", root / "d")
    assert code == 1 and "not valid JSON" in out


def test_list_compressors():
    code, out = run("list", "compressors")
    assert code == 0 and all(name in out for name in ("bitdelta", "kbit", "lowrank", "mixed", "dare", "compeft"))
