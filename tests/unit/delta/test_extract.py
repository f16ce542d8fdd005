"""Streaming extraction: compatibility checks, tied and grown vocabularies, 16-bit non-linear deltas."""

from __future__ import annotations

import pytest
import torch

from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.delta import KBitConfig, apply_delta, compress, extract_delta, load_delta
from deltaguard.delta.fingerprint import fingerprint_model
from deltaguard.delta.store import base_fingerprint_of
from deltaguard.errors import IncompatibleBaseError, ModelLoadError


def test_unchanged_tensors_are_not_stored_and_norms_are_16_bit(tmp_path):
    base = make_tiny_llama(seed=0)
    ft = make_tiny_llama(seed=0)
    with torch.no_grad():
        ft.model.layers[0].self_attn.q_proj.weight.add_(0.01)
        ft.model.layers[1].input_layernorm.weight.add_(0.001)
    delta = extract_delta(save_dir(base, tmp_path / "b"), save_dir(ft, tmp_path / "f"))
    packed = compress(delta, KBitConfig(), progress=False)
    assert set(packed.tensors) == {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.input_layernorm.weight"}
    norm = packed.tensors["model.layers.1.input_layernorm.weight"]
    assert norm.kind == "dense" and norm.parts["delta"].dtype == torch.float16
    assert packed.report.summary()["n_unchanged_tensors"] == len(delta.entries) - 2


def test_grown_vocabulary_keeps_extra_rows_in_full(tmp_path):
    base = make_tiny_llama(seed=0, vocab_size=256)
    ft = make_tiny_llama(seed=0, vocab_size=256)
    ft.resize_token_embeddings(260, mean_resizing=False)
    with torch.no_grad():
        ft.model.embed_tokens.weight[256:] = torch.randn(4, 64)
    perturb(ft, seed=2)
    delta = extract_delta(save_dir(base, tmp_path / "b"), save_dir(ft, tmp_path / "f"))
    packed = compress(delta, KBitConfig(), progress=False)
    embed = packed.tensors["model.embed_tokens.weight"]
    assert embed.shape == (260, 64) and embed.base_shape == (256, 64)
    merged = apply_delta(base, load_delta(packed.save(tmp_path / "d")))
    assert merged.model.embed_tokens.weight.shape == (260, 64)
    assert torch.equal(merged.model.embed_tokens.weight[256:], ft.model.embed_tokens.weight[256:])
    assert merged.lm_head.weight is merged.model.embed_tokens.weight  # still tied


def test_untied_fine_tune_of_a_tied_base(tmp_path):
    base = make_tiny_llama(seed=0, tied=True)
    ft = make_tiny_llama(seed=0, tied=False)
    ft.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        ft.lm_head.weight.copy_(base.lm_head.weight + 0.01)
    delta = extract_delta(save_dir(base, tmp_path / "b"), save_dir(ft, tmp_path / "f"))
    assert {e.name: e.base_name for e in delta.entries}["lm_head.weight"] == "model.embed_tokens.weight"
    packed = compress(delta, KBitConfig(), progress=False)
    merged = apply_delta(base, packed)
    assert merged.lm_head.weight is not merged.model.embed_tokens.weight
    assert torch.allclose(merged.lm_head.weight, ft.lm_head.weight, atol=1e-5)
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)


def test_architecture_mismatch_is_one_clear_error(tmp_path):
    base = save_dir(make_tiny_llama(seed=0, n_layers=2), tmp_path / "b")
    other = save_dir(make_tiny_llama(seed=0, n_layers=3), tmp_path / "f")
    with pytest.raises(IncompatibleBaseError, match="num_hidden_layers is 2 .* but 3"):
        extract_delta(base, other)
    wide = save_dir(make_tiny_llama(seed=0, intermediate=96), tmp_path / "w")
    with pytest.raises(IncompatibleBaseError, match="intermediate_size"):
        extract_delta(base, wide)


def test_directories_without_a_model_are_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no model"):
        extract_delta(tmp_path / "empty", tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="not a path"):
        extract_delta(tmp_path / "missing", tmp_path / "missing")


def test_fingerprint_is_the_same_from_disk_fp32_and_bf16(tmp_path):
    model = make_tiny_llama(seed=0)
    path = save_dir(model, tmp_path / "b")
    from_disk = base_fingerprint_of(path)
    assert from_disk == fingerprint_model(model) == fingerprint_model(make_tiny_llama(seed=0).to(torch.bfloat16))
    assert from_disk != fingerprint_model(perturb(make_tiny_llama(seed=0), scale=1e-2))
