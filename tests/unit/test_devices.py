"""Device plumbing on a CPU machine: parsing, the one-line error for a missing GPU on every verb, and
the trainer, distillation and evaluation running where they are told."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from deltaguard.cli import app
from deltaguard.errors import ConfigError
from deltaguard.models import resolve_device

HAS_CUDA = torch.cuda.is_available()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for bad in ("tpu", "cuda:x", "gpu0", ""):
        with pytest.raises(ConfigError, match="must be cpu, cuda, cuda:N or auto"):
            resolve_device(bad)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error a machine without a GPU gives")
@pytest.mark.parametrize("verb", [
    ["eval", "-o", "{tmp}/r"],
    ["lens", "-o", "{tmp}/r"],
    ["compress", "--base", "b", "--finetuned", "f", "-o", "{tmp}/r"],
    ["attack", "--threat", "harmful", "--base", "b", "-o", "{tmp}/r"],
    ["align", "-o", "{tmp}/r"],
    ["audit", "--base", "b", "--finetuned", "f", "--threat", "harmful", "-o", "{tmp}/r"],
    ["demo", "-o", "{tmp}/r"],
    ["serve", "--base", "b", "--tenants", "t.yaml"],
])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_device_without_a_gpu_is_one_line_and_exit_2(tmp_path, verb, device):
    result = CliRunner().invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in verb] + ["--device", device])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "needs a CUDA GPU" in lines[0], result.output
    assert not (tmp_path / "r").exists()


def test_a_bad_dtype_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["eval", "-o", str(tmp_path / "r"), "--dtype", "float8"])
    assert result.exit_code == 2 and "dtype='float8' must be one of" in result.output


def test_the_trainer_records_its_device_and_loads_nothing_on_cuda_without_one(tiny_model_dir, tmp_path):
    import json

    from deltaguard.training import ChatPair, TrainConfig, train_sft

    pairs = [ChatPair("What is 12 plus 7?", "The answer is 19.")] * 2
    config = TrainConfig(epochs=1, batch_size=2, micro_batch_size=2, lr=1e-3)
    train_sft(tiny_model_dir, pairs, config, out_dir=tmp_path / "ft", progress=False, device="cpu")
    assert json.loads((tmp_path / "ft" / "training.json").read_text())["device"] == "cpu"
    if not HAS_CUDA:
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            train_sft(tiny_model_dir, pairs, config, out_dir=tmp_path / "gpu", progress=False, device="cuda")
        assert not (tmp_path / "gpu").exists()
