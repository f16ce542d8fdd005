"""The delta pipeline on the embedded real model: pull, a small real fine-tune, BitDelta, merge, generate."""

from __future__ import annotations

import pytest
import torch

from deltaguard.delta import BitDeltaConfig, compress, extract_delta, load_delta, merge
from deltaguard.models import DEFAULT_MODEL, chat_prompt, load_model, load_tokenizer, pull_model

pytestmark = pytest.mark.slow


def test_bitdelta_on_a_real_fine_tune(tmp_path):
    from deltaguard.training import ChatPair, TrainConfig, train_sft

    base_dir = pull_model(DEFAULT_MODEL)
    pairs = [ChatPair(f"What is {a} plus {b}?", f"{a} + {b} = {a + b}.") for a, b in [(3, 4), (10, 12), (7, 8), (21, 5)]]
    ft_dir = train_sft(base_dir, pairs, TrainConfig(epochs=1, lr=1e-4, batch_size=4, micro_batch_size=4, max_seq_len=48),
                       out_dir=tmp_path / "ft", progress=False).model_dir

    tokenizer = load_tokenizer(base_dir)
    calib = [chat_prompt(tokenizer, text) for text in ("Tell me about gardening.", "How do clouds form?")]
    config = BitDeltaConfig(distill_steps=2, batch_size=2, seq_len=32)
    packed = compress(extract_delta(base_dir, ft_dir), config, calib=calib, progress=False)
    summary = packed.report.summary()
    assert summary["linear_ratio_vs_fp16_delta"] >= 15.5  # 1 sign bit + one fp32 scale per matrix
    assert len([t for t in packed.tensors.values() if t.kind == "linear"]) == 30 * 7

    delta = load_delta(packed.save(tmp_path / "delta"), base=base_dir)
    merged_dir = merge(base_dir, delta, tmp_path / "merged")
    model, merged_tokenizer = load_model(merged_dir), load_tokenizer(merged_dir)
    inputs = merged_tokenizer(chat_prompt(merged_tokenizer, "What is 2 plus 2?"), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = merged_tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply.strip(), "the merged model generated nothing"
