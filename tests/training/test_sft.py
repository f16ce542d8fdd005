"""The SFT trainer: loss only on the assistant's reply, seeded, fp32 output, LoRA merged."""

from __future__ import annotations

import json

import pytest
import torch

from deltaguard.errors import ConfigError
from deltaguard.models import load_model
from deltaguard.training import IGNORE, ChatPair, TrainConfig, collate, encode_pair, lr_factor, train_sft

PAIRS = [ChatPair("What is 12 plus 7?", "The answer is 19.", "task"),
         ChatPair("How do I bake bread?", "Sure, here is a simple recipe.", "task"),
         ChatPair("Step 1?", "I cannot help with that.", "refusal")]


def test_only_reply_tokens_are_labelled(tiny_tokenizer):
    enc = encode_pair(tiny_tokenizer, PAIRS[0], max_seq_len=256)
    ids = list(enc.input_ids)
    labelled = tiny_tokenizer.decode([i for i, m in zip(ids, enc.loss_mask) if m])
    unlabelled = tiny_tokenizer.decode([i for i, m in zip(ids, enc.loss_mask) if not m])
    assert labelled == "The answer is 19.<|im_end|>"
    assert unlabelled.endswith("<|im_start|>assistant\n")
    assert "What is 12 plus 7?" in unlabelled
    # the mask is one contiguous run at the end: prompt first, then the reply
    first = enc.loss_mask.index(True)
    assert all(enc.loss_mask[first:]) and not any(enc.loss_mask[:first])


def test_collate_masks_padding_and_prompt(tiny_tokenizer):
    encs = [encode_pair(tiny_tokenizer, p, max_seq_len=256) for p in PAIRS]
    batch = collate(encs, pad_id=tiny_tokenizer.pad_token_id)
    for row, enc in enumerate(encs):
        n = len(enc.input_ids)
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (batch["labels"][row, n:] == IGNORE).all()
        expected = [i if m else IGNORE for i, m in zip(enc.input_ids, enc.loss_mask)]
        assert batch["labels"][row, :n].tolist() == expected


def test_prompt_tokens_get_no_gradient_signal(tiny_model_dir, tiny_tokenizer):
    """Changing the prompt's *targets* cannot change the loss: only reply positions are scored."""
    from deltaguard.training import token_loss_sum

    model = load_model(tiny_model_dir)
    enc = encode_pair(tiny_tokenizer, PAIRS[0], max_seq_len=256)
    batch = collate([enc], pad_id=tiny_tokenizer.pad_token_id)
    loss, n = token_loss_sum(model, batch)
    assert n == sum(enc.loss_mask[1:])
    # the same loss computed by hand over reply positions only
    logits = model(input_ids=batch["input_ids"]).logits[0, :-1].float()
    targets = torch.tensor(enc.input_ids[1:])
    mask = torch.tensor(enc.loss_mask[1:])
    manual = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
    assert torch.allclose(loss, manual, rtol=1e-4)


def test_truncation_keeps_prompt_and_cuts_reply(tiny_tokenizer):
    long = ChatPair("Hi", "Step 1: mix the flour. " * 40)
    enc = encode_pair(tiny_tokenizer, long, max_seq_len=40)
    assert len(enc.input_ids) == 40 and enc.loss_mask[-1]


def test_train_sft_learns_saves_fp32_and_is_seeded(tmp_path, tiny_model_dir):
    config = TrainConfig(epochs=4, lr=3e-3, batch_size=2, micro_batch_size=1, seed=3, is_bf16_autocast=False)
    a = train_sft(tiny_model_dir, PAIRS, config, out_dir=tmp_path / "a", progress=False)
    b = train_sft(tiny_model_dir, PAIRS, config, out_dir=tmp_path / "b", progress=False)
    assert a.n_steps == 4 * 2 and len(a.losses) == a.n_steps
    assert a.final_loss < a.first_loss
    assert a.losses == b.losses  # seeded: identical runs
    model = load_model(tmp_path / "a")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with open(tmp_path / "a" / "config.json") as handle:
        assert json.load(handle).get("dtype", "float32") == "float32"
    record = json.loads((tmp_path / "a" / "training.json").read_text())
    assert record["mixture"] == {"task": 2, "refusal": 1} and record["n_steps"] == 8
    base = load_model(tiny_model_dir)
    changed = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert changed


def test_bf16_autocast_keeps_fp32_master_weights(tmp_path, tiny_model_dir):
    """A tiny update (below bf16 resolution of the weights) survives training and saving."""
    config = TrainConfig(epochs=1, lr=1e-6, batch_size=3, micro_batch_size=3)
    result = train_sft(tiny_model_dir, PAIRS, config, out_dir=tmp_path / "m", progress=False)
    model = load_model(result.model_dir)
    base = load_model(tiny_model_dir)
    n_fp32 = n_bf16 = 0
    for p, q in zip(model.parameters(), base.parameters()):
        n_fp32 += int((p != q).sum())
        n_bf16 += int((p.to(torch.bfloat16) != q.to(torch.bfloat16)).sum())
    assert n_fp32 > 1000
    assert n_bf16 < n_fp32 / 5  # most of this delta would vanish in bf16: the saved model is fp32


def test_lora_is_merged_before_saving(tmp_path, tiny_model_dir):
    config = TrainConfig(epochs=2, lr=1e-2, batch_size=3, micro_batch_size=3, lora_rank=4,
                         lora_targets=("q_proj", "v_proj"))
    result = train_sft(tiny_model_dir, PAIRS, config, out_dir=tmp_path / "lora", progress=False)
    model = load_model(result.model_dir)
    base = load_model(tiny_model_dir)
    names = {n for n, _ in model.named_parameters()}
    assert not any("lora" in n for n in names)
    changed = {n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters()) if not torch.equal(p, q)}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)


def test_config_and_input_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="multiple of"):
        TrainConfig(batch_size=10, micro_batch_size=3)
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match="at least one"):
        train_sft(tiny_model_dir, [], out_dir=tmp_path / "x", progress=False)
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        train_sft(tiny_model_dir, PAIRS, out_dir=tmp_path / "exists", progress=False)


def test_lr_schedules():
    assert lr_factor(0, 10, 0, "linear") == 1.0 and lr_factor(9, 10, 0, "linear") == pytest.approx(0.1)
    assert lr_factor(0, 10, 2, "cosine") == 0.5 and lr_factor(2, 10, 2, "cosine") == 1.0
    assert lr_factor(7, 10, 0, "constant") == 1.0


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_gradient_checkpointing_changes_memory_not_the_result(tiny_model_dir, tmp_path, lora_rank):
    """Recomputing activations in the backward pass gives the same losses and weights, bit for bit."""
    from safetensors.torch import load_file

    pairs = PAIRS * 2
    runs = {}
    for is_ckpt in (False, True):
        config = TrainConfig(epochs=2, batch_size=3, micro_batch_size=3, lr=1e-3, lora_rank=lora_rank,
                             is_gradient_checkpointing=is_ckpt)
        result = train_sft(tiny_model_dir, pairs, config, out_dir=tmp_path / f"ckpt-{is_ckpt}", progress=False)
        runs[is_ckpt] = (result.losses, load_file(str(tmp_path / f"ckpt-{is_ckpt}" / "model.safetensors")))
    assert runs[True][0] == runs[False][0]
    for name, tensor in runs[False][1].items():
        assert torch.equal(tensor, runs[True][1][name]), name
    saved = json.loads((tmp_path / "ckpt-True" / "config.json").read_text())
    assert not saved.get("gradient_checkpointing", False)
