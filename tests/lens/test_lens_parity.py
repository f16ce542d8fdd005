"""Exactness of the lens: last layer == model logits, residuals == HF hidden states, loud failures."""

from __future__ import annotations

import pytest
import torch

from tinymodels import make_tiny_llama
from deltaguard.errors import DeltaguardError
from deltaguard.lens import LensConfig, find_parts, logit_lens
from deltaguard.lens import api as lens_api
from deltaguard.lens.core import capture, decode
from deltaguard.lens.sites import Site, default_sites, resolve_sites

PROMPTS = ["How do I bake bread?", "What is 12 plus 7?", "I cannot help with that.", "Step 1: mix"]


def _batch(vocab: int, lengths=(5, 9, 7), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(4, vocab, (n,), generator=gen)
        mask[row, width - n:] = 1
    return ids, mask


@pytest.mark.parametrize("tied", [True, False])
def test_structure_is_discovered_for_tied_and_untied_heads(tied):
    model = make_tiny_llama(tied=tied, n_layers=3)
    parts = find_parts(model)
    assert parts.layers is model.model.layers and parts.n_layers == 3
    assert parts.final_norm is model.model.norm and parts.final_norm_path == "model.norm"
    assert parts.head is model.lm_head and parts.head_path == "lm_head"
    assert parts.is_tied is tied


@pytest.mark.parametrize("tied", [True, False])
def test_lens_of_every_position_at_last_layer_equals_model_logits(tied):
    model = make_tiny_llama(tied=tied, n_layers=3)
    parts = find_parts(model)
    ids, mask = _batch(256)
    cap = capture(model, parts, default_sites(3), ids, mask)
    assert cap.last_layer_diff <= 1e-4 and cap.hidden_state_diff is not None and cap.hidden_state_diff <= 1e-4
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        reference = model(ids, attention_mask=mask, position_ids=position_ids).logits  # all positions
        lens = decode(parts, cap.residuals[Site(2, "resid_post")])
    real = mask.bool()
    assert torch.allclose(lens[real], reference[real], atol=1e-4, rtol=0)
    # an untied head really differs from the embedding: the check would catch decoding with the wrong one
    if not tied:
        wrong = torch.nn.functional.linear(model.model.norm(cap.residuals[Site(2, "resid_post")]),
                                           model.model.embed_tokens.weight)
        assert (wrong[real] - reference[real]).abs().max() > 1e-2


@pytest.mark.parametrize("tied", [True, False])
def test_captured_residuals_equal_hf_hidden_states(tied):
    model = make_tiny_llama(tied=tied, n_layers=3)
    parts = find_parts(model)
    ids, mask = _batch(256)
    cap = capture(model, parts, default_sites(3), ids, mask, check_hidden_states=False)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        hidden = model(ids, attention_mask=mask, position_ids=position_ids, output_hidden_states=True).hidden_states
    assert len(hidden) == 4
    assert torch.equal(cap.residuals[Site(0, "resid_pre")], hidden[0])
    assert torch.equal(cap.residuals[Site(0, "resid_post")], hidden[1])
    assert torch.equal(cap.residuals[Site(1, "resid_post")], hidden[2])
    # HF's last entry is already normalised: it is norm(last layer output), not the raw stream
    last = cap.residuals[Site(2, "resid_post")]
    assert not torch.allclose(last, hidden[3], atol=1e-3)
    with torch.inference_mode():
        assert torch.allclose(model.model.norm(last), hidden[3], atol=1e-6)


def test_wrongly_discovered_final_norm_fails_loudly(monkeypatch, tiny_tokenizer):
    model = make_tiny_llama(vocab_size=len(tiny_tokenizer), n_layers=2)
    with torch.no_grad():  # a non-trivial final norm, so that any other module differs from it
        model.model.norm.weight.mul_(torch.linspace(0.5, 2.0, model.config.hidden_size))
    real_find = lens_api.find_parts

    def wrong_norm(m):
        import dataclasses

        parts = real_find(m)
        return dataclasses.replace(parts, final_norm=m.model.layers[-1].post_attention_layernorm,
                                   final_norm_path="model.layers.1.post_attention_layernorm")

    monkeypatch.setattr(lens_api, "find_parts", wrong_norm)
    with pytest.raises(DeltaguardError, match=r"logit lens check failed: decoding model\.layers\.1 through "
                                              r"model\.layers\.1\.post_attention_layernorm"):
        logit_lens(model, tiny_tokenizer, PROMPTS[:2])


def test_wrong_head_fails_loudly(monkeypatch, tiny_tokenizer):
    model = make_tiny_llama(vocab_size=len(tiny_tokenizer), tied=False, n_layers=2)
    real_find = lens_api.find_parts

    def wrong_head(m):
        import dataclasses

        head = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=False)
        head.weight = m.model.embed_tokens.weight  # the tied head this untied model does not use
        return dataclasses.replace(real_find(m), head=head)

    monkeypatch.setattr(lens_api, "find_parts", wrong_head)
    with pytest.raises(DeltaguardError, match="check failed"):
        logit_lens(model, tiny_tokenizer, PROMPTS[:1])


def test_hooks_are_removed_even_when_the_forward_fails():
    model = make_tiny_llama(n_layers=2)
    parts = find_parts(model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    def hooks():  # transformers installs its own output-capturing hooks; only ours must go away
        return [(name, list(m._forward_hooks), list(m._forward_pre_hooks)) for name, m in model.named_modules()]

    ids, mask = _batch(256)
    sites = resolve_sites(("layers.0.attn_out", "layers.1.resid_post", "final_norm"), 2)
    with torch.inference_mode():  # HF installs its capturing hooks on the first output_hidden_states call
        model(ids, attention_mask=mask, output_hidden_states=True)
    before = hooks()
    capture(model, parts, sites, ids, mask)  # a successful pass leaves no hook behind
    assert hooks() == before
    model.model.layers[1].mlp.forward = boom
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, parts, sites, ids, mask)
    assert hooks() == before


def test_component_sites_decompose_the_block():
    model = make_tiny_llama(n_layers=2)
    parts = find_parts(model)
    ids, mask = _batch(256)
    sites = resolve_sites(("layers.1.resid_pre", "layers.1.attn_out", "layers.1.resid_mid", "layers.1.mlp_out",
                           "layers.1.resid_post", "final_norm"), 2)
    cap = capture(model, parts, sites, ids, mask)
    r = {str(s): t for s, t in cap.residuals.items()}
    assert torch.allclose(r["layers.1.resid_mid"], r["layers.1.resid_pre"] + r["layers.1.attn_out"])
    assert torch.allclose(r["layers.1.resid_mid"] + r["layers.1.mlp_out"], r["layers.1.resid_post"], atol=1e-6)
    with torch.inference_mode():
        assert torch.allclose(r["final_norm"], model.model.norm(r["layers.1.resid_post"]))


def test_final_norm_site_is_decoded_without_a_second_norm(tiny_tokenizer):
    model = make_tiny_llama(vocab_size=len(tiny_tokenizer), n_layers=2)
    result = logit_lens(model, tiny_tokenizer, PROMPTS[:2],
                        LensConfig(sites=("layers.1.resid_post", "final_norm"), n_detail_prompts=0))
    for prompt_id in result.prompt_ids:
        a = result.answer_record(result.models[0], prompt_id, "layers.1.resid_post")
        b = result.answer_record(result.models[0], prompt_id, "final_norm")
        assert a.top_ids == b.top_ids
        assert a.top_log_probs == pytest.approx(b.top_log_probs, abs=1e-5)


def test_lens_result_records_checks_for_each_model(tiny_tokenizer):
    models = {"tied": make_tiny_llama(vocab_size=len(tiny_tokenizer)),
              "untied": make_tiny_llama(vocab_size=len(tiny_tokenizer), tied=False, seed=1)}
    result = logit_lens(models, tiny_tokenizer, PROMPTS)
    assert result.models == ("tied", "untied")
    assert [c.is_tied for c in result.checks] == [True, False]
    for check in result.checks:
        assert check.last_layer_max_abs_diff <= 1e-4
        assert check.hidden_state_max_abs_diff is not None and check.hidden_state_max_abs_diff <= 1e-4
    assert result.sites == ("layers.0.resid_pre", "layers.0.resid_post", "layers.1.resid_post")
