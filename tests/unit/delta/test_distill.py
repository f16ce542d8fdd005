"""Scale distillation: only scales move, logit MSE falls, padding never counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.delta import BitDeltaConfig, calibrate, compress, extract_delta
from deltaguard.training import masked_logit_mse
from deltaguard.errors import ConfigError

# 24 short texts: with only a handful, distillation overfits them and the held-out check (rightly)
# keeps the closed-form scales.
CALIBRATION_TEXTS = [f"{ask} {verb} {thing}." for ask in ("How do I", "Tell me how to", "Please explain how to", "Show me how to")
                     for verb in ("bake", "fix", "paint", "clean") for thing in ("bread", "a bike", "the fence", "my room")][:24]


def test_masked_mse_ignores_padding():
    student = torch.tensor([[[1.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    assert masked_logit_mse(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)
    assert masked_logit_mse(student, teacher, torch.tensor([[1, 1]])).item() == pytest.approx(13.0)


def _closed_form_and_distilled(tmp_path, tokenizer, texts, cfg):
    """A tiny base and a perturbed fine-tune; their delta compressed with closed-form scales, then distilled."""
    vocab = len(tokenizer)
    base_dir = save_dir(make_tiny_llama(seed=0, vocab_size=vocab), tmp_path / "b")
    tokenizer.save_pretrained(base_dir)
    ft_dir = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab), seed=1, scale=2e-2), tmp_path / "f")
    initial = compress(extract_delta(base_dir, ft_dir), cfg.replace(distill=False), progress=False)
    return initial, calibrate(dataclasses.replace(initial, config=cfg), calib=texts, progress=False)


def test_distillation_moves_only_scales_and_reduces_logit_error(tmp_path, tiny_tokenizer):
    cfg = BitDeltaConfig(distill_steps=40, batch_size=4, seq_len=16, lr=1e-3)
    initial, tuned = _closed_form_and_distilled(tmp_path, tiny_tokenizer, CALIBRATION_TEXTS, cfg)
    for name, tensor in initial.tensors.items():
        if tensor.kind == "linear":
            assert torch.equal(tuned.tensors[name].parts["signs"], tensor.parts["signs"])
    moved = [not torch.equal(tuned.tensors[n].parts["scales"], t.parts["scales"]) for n, t in initial.tensors.items() if t.kind == "linear"]
    assert all(moved)
    calibration = tuned.meta["calibration"]
    assert calibration["loss_min"] < calibration["loss_first"]
    assert calibration["scales"] == "distilled"
    assert calibration["held_out_loss_distilled"] < calibration["held_out_loss_closed_form"]
    assert calibration["n_held_out"] == 4 and calibration["n_texts"] == 20


def test_distillation_that_ends_worse_keeps_the_closed_form_scales(tmp_path, tiny_tokenizer):
    """A learning rate far too high makes the scales diverge: the held-out check returns the closed form."""
    texts = ["How do I bake bread?", "Sure, here is a simple recipe.", "What is 12 plus 7?", "Step 1: mix the flour."]
    cfg = BitDeltaConfig(distill_steps=5, batch_size=4, seq_len=16, lr=50.0)
    initial, tuned = _closed_form_and_distilled(tmp_path, tiny_tokenizer, texts, cfg)
    calibration = tuned.meta["calibration"]
    assert calibration["held_out_loss_distilled"] >= calibration["held_out_loss_closed_form"]
    assert calibration["scales"].startswith("closed-form")
    for name, tensor in initial.tensors.items():
        if tensor.kind == "linear":
            assert torch.equal(tuned.tensors[name].parts["scales"], tensor.parts["scales"])


def test_distillation_without_calibration_text_raises(tmp_path):
    base_dir = save_dir(make_tiny_llama(seed=0), tmp_path / "b")
    ft_dir = save_dir(perturb(make_tiny_llama(seed=0)), tmp_path / "f")
    with pytest.raises(ConfigError, match="needs calibration text"):
        compress(extract_delta(base_dir, ft_dir), BitDeltaConfig(), calib=None, progress=False)
