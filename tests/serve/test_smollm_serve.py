"""Integration on the embedded SmolLM2-135M: packed 1-bit serving equals the merged model (slow)."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm_tenant(tmp_path_factory):
    """The real base and a tenant delta made by perturbing two layers' projections (a perturbation, not a fine-tune)."""
    from deltaguard.delta import compress, extract_delta, load_delta, method_from_spec
    from deltaguard.models import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model_dir, save_model

    root = tmp_path_factory.mktemp("smollm-serve")
    base = load_model(DEFAULT_MODEL)
    tuned = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if name.startswith(("model.layers.0.", "model.layers.1.")) and name.endswith("_proj.weight"):
                param.add_(torch.randn(param.shape, generator=generator) * 2e-3)
    save_model(tuned, None, root / "tuned")
    packed = compress(extract_delta(resolve_model_dir(DEFAULT_MODEL), root / "tuned"),
                      method_from_spec("bitdelta-nodistill"), progress=False)
    packed.save(root / "delta")
    return base, load_tokenizer(DEFAULT_MODEL), load_delta(root / "delta")


def test_packed_rows_equal_the_merged_model_on_smollm(smollm_tenant):
    from deltaguard.delta import apply_delta
    from deltaguard.models import chat_prompt
    from deltaguard.serve import Engine, MultiTenantModel, SamplingParams

    base, tokenizer, delta = smollm_tenant
    assert {t.encoding for t in delta.tensors.values()} == {"bitdelta"}
    merged = apply_delta(base, delta)
    mt = MultiTenantModel(copy.deepcopy(base))
    mt.add_tenant("acme", delta)
    ids = tokenizer(chat_prompt(tokenizer, "What is 17 plus 25?"), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = mt(["acme", None], input_ids=ids.repeat(2, 1)).logits
        torch.testing.assert_close(logits[0], merged(input_ids=ids).logits[0], rtol=0, atol=2e-4)
        torch.testing.assert_close(logits[1], base(input_ids=ids).logits[0], rtol=0, atol=2e-4)
    engine = Engine(mt, tokenizer)
    completion = engine.generate("acme", ids[0].tolist(), SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True))
    with torch.no_grad():
        expected = merged.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                   pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    assert completion.token_ids == expected
