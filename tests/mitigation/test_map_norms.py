"""The attack/alignment delta-norm ratio: exact on planted deltas, per layer, over the compressed weights only."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from deltaguard.errors import IncompatibleBaseError
from deltaguard.mitigation import delta_norms


def _tiny(path, *, seed=0, layers=2, hidden=32):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    return model


def _shifted(model, path, shifts):
    """Save ``model`` with ``shifts[name]`` added to each named weight (everything else unchanged)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, shift in shifts.items():
        state[name] += shift
    model.load_state_dict(state)
    model.save_pretrained(path, safe_serialization=True)


def test_norms_and_ratio_are_exact(tmp_path):
    original = _tiny(tmp_path / "o")
    q0, down1 = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"
    shape_q, shape_d = original.state_dict()[q0].shape, original.state_dict()[down1].shape
    align_shift = {q0: torch.full(shape_q, 0.5)}                                 # norm 0.5·sqrt(n_q)
    _shifted(original, tmp_path / "a", align_shift)
    attack_shift = {q0: torch.full(shape_q, 0.5), down1: torch.full(shape_d, -0.25),
                    "model.embed_tokens.weight": torch.ones(64, 32)}           # the embedding is not compressed
    _shifted(original, tmp_path / "f", attack_shift)   # cumulative: aligned + attack
    norms = delta_norms(tmp_path / "o", tmp_path / "a", tmp_path / "f")
    n_q, n_d = shape_q.numel(), shape_d.numel()
    assert norms.alignment == pytest.approx(0.5 * math.sqrt(n_q), rel=1e-6)
    assert norms.attack == pytest.approx(math.sqrt(0.25 * n_q + 0.0625 * n_d), rel=1e-6)
    assert norms.ratio == pytest.approx(norms.attack / norms.alignment)
    assert norms.per_layer_alignment == pytest.approx((0.5 * math.sqrt(n_q), 0.0))
    assert norms.per_layer_attack == pytest.approx((0.5 * math.sqrt(n_q), 0.25 * math.sqrt(n_d)))
    assert norms.n_tensors == 2 * 7
    assert norms.to_dict()["ratio"] == pytest.approx(norms.ratio)


def test_no_alignment_gives_an_infinite_ratio_recorded_as_null(tmp_path):
    _tiny(tmp_path / "o")
    norms = delta_norms(tmp_path / "o", tmp_path / "o", tmp_path / "o")
    assert norms.alignment == 0 and math.isinf(norms.ratio) and norms.to_dict()["ratio"] is None


def test_other_architectures_are_refused(tmp_path):
    _tiny(tmp_path / "o")
    _tiny(tmp_path / "other", hidden=48)
    with pytest.raises(IncompatibleBaseError, match="not the same architecture"):
        delta_norms(tmp_path / "o", tmp_path / "o", tmp_path / "other")
