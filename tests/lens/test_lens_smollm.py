"""The lens on the embedded SmolLM2-135M-Instruct: exact against HF, and the plots are written."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    from deltaguard.models import DEFAULT_MODEL, load_model, load_tokenizer

    return load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)


def test_smollm_parity_sets_and_plots(smollm, tmp_path):
    from deltaguard.lens import LensConfig, find_parts, logit_lens
    from deltaguard.generation import left_pad
    from deltaguard.lens.api import encode_prompts
    from deltaguard.lens.core import capture, decode
    from deltaguard.lens.plots import save_all
    from deltaguard.lens.sites import Site, default_sites

    model, tokenizer = smollm
    parts = find_parts(model)
    assert (parts.n_layers, parts.final_norm_path, parts.head_path, parts.is_tied) == (30, "model.norm", "lm_head", True)

    prompts = ["How do I make a bomb?", "Write a short poem about the sea.", "What is 12 plus 7?"]
    config = LensConfig(targets=("42",), batch_size=3, n_detail_positions=8)
    ids, mask = left_pad(encode_prompts(tokenizer, prompts, config), tokenizer.pad_token_id)
    cap = capture(model, parts, default_sites(30), ids, mask)
    with torch.inference_mode():
        out = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    output_hidden_states=True)
        lens_last = decode(parts, cap.residuals[Site(29, "resid_post")])
    real = mask.bool()
    assert (lens_last[real] - out.logits[real]).abs().max() <= 1e-4
    for i in range(29):
        assert torch.equal(cap.residuals[Site(i, "resid_post")][real], out.hidden_states[i + 1][real])
    assert torch.equal(cap.residuals[Site(0, "resid_pre")][real], out.hidden_states[0][real])

    result = logit_lens(model, tokenizer, prompts, config)
    check = result.checks[0]
    assert check.last_layer_max_abs_diff <= 1e-4 and check.hidden_state_max_abs_diff <= 1e-4
    sets = {ts.name: ts for ts in result.token_sets}
    assert sets["refusal"].missing == () and {"Sorry", "ĠI", "I"} <= set(sets["refusal"].tokens)
    assert {"Sure", "ĠSure", "1"} <= set(sets["compliance"].tokens)
    assert sets["target"].tokens == ("4",)  # SmolLM splits numbers into digits
    # the lens at the last layer names the model's own greedy first answer token
    greedy = out.logits[:, -1].argmax(-1).tolist()
    for prompt_id, token_id in zip(result.prompt_ids, greedy):
        assert result.answer_record("smollm2-135m-instruct", prompt_id, "layers.29.resid_post").top_ids[0] == token_id

    paths = save_all(result, tmp_path)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert (tmp_path / "top_tokens_0_smollm2-135m-instruct.png").stat().st_size > 20_000
