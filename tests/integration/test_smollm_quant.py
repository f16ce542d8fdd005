"""W8A8 quantization of the embedded real model: RTN and a one-epoch Q-realign on a tiny calibration set stay
close to the float model, save, reload bit-identically and still answer."""

from __future__ import annotations

import copy

import pytest
import torch

from deltaguard.models import DEFAULT_MODEL, chat_prompt, load_model, load_tokenizer, pull_model
from deltaguard.quant.artifact import save_quantized, stored_bits
from deltaguard.transforms import transform_from_spec, transforms

pytestmark = pytest.mark.slow


def _kl(model, reference, batch) -> float:
    with torch.no_grad():
        p = reference(**batch).logits.float().log_softmax(-1)
        q = model(**batch).logits.float().log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_w8a8_on_the_real_model(tmp_path):
    model_dir = pull_model(DEFAULT_MODEL)
    reference, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    batch = tokenizer([chat_prompt(tokenizer, "Give me three tips for a good night's sleep.")], return_tensors="pt")
    rtn = transforms.get("rtn")().apply_(copy.deepcopy(reference), transform_from_spec("rtn-w8a8"))
    config = transform_from_spec("qrealign-w8a8", epochs_first=0, epochs_second=1, n_harmful=8, n_benign=8)
    realigned = transforms.get("qrealign")().apply_(copy.deepcopy(reference), config, tokenizer=tokenizer,
                                                    reference=reference)
    assert len(realigned.deltaguard_quant_record["blocks"]) == 30
    assert 0 < _kl(rtn, reference, batch) < 0.5 and 0 < _kl(realigned, reference, batch) < 0.5
    bits = stored_bits(realigned)
    assert 8 < bits["linear_bits_per_param"] < 8.1 and bits["bits_per_param"] < 11

    out = save_quantized(realigned, tokenizer, tmp_path / "q", record={}, extra=realigned.deltaguard_probes.write)
    again = load_model(out)
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, realigned(**batch).logits)
        reply = again.generate(**batch, max_new_tokens=12, do_sample=False)
    assert tokenizer.decode(reply[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
