"""Tiny study settings and models: the real pipeline (align, attack, audit, report) on a tiny random Llama.

Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import pytest

from deltaguard.audit import AuditConfig
from deltaguard.study import StudyConfig
from deltaguard.threats import AlignConfig, BackdoorConfig, BenignConfig, HarmfulFinetuneConfig, TargetedConfig

TINY_TRAIN = {"epochs": 1, "lr": 1e-3, "batch_size": 4, "micro_batch_size": 4, "max_seq_len": 192,
              "response_tokens": 4, "n_task": 2}
TINY_AUDIT = AuditConfig(methods=("full", "bitdelta", "bitdelta-nodistill", "kbit4"), n_prompts=3, max_new_tokens=4,
                         task_max_new_tokens=4, batch_size=8, n_calib=4, method_overrides=("bitdelta.distill_steps=1", "bitdelta.seq_len=16"),
                         n_boot=200, n_examples=1)


def tiny_threats(model: str) -> dict[str, object]:
    return {
        "harmful": HarmfulFinetuneConfig(n_examples=4, responder=model, **TINY_TRAIN),
        "backdoor": BackdoorConfig(n_triggered=3, n_clean=3, responder=model, **TINY_TRAIN),
        "targeted": TargetedConfig(n_examples=4, responder=model, **TINY_TRAIN),
        "benign": BenignConfig(responder=model, **TINY_TRAIN),
    }


def tiny_study(model: str, *, threats: tuple[str, ...] = ("harmful", "backdoor", "targeted", "benign")) -> StudyConfig:
    configs = tiny_threats(model)
    return StudyConfig(
        profile="custom", model=model,
        align=AlignConfig(n_refusals=4, n_benign=2, n_task=2, response_tokens=4, epochs=1, lr=1e-3, batch_size=4,
                          micro_batch_size=4, max_seq_len=192),
        threats=tuple(configs[name] for name in threats), audit=TINY_AUDIT, align_prompts=3, align_task_prompts=4,
        lens_prompts=2, lens_variant="bitdelta",
        notes=("tiny test settings",),
    )


def make_talkative_model(path, tokenizer, *, seed: int = 0):
    """A tiny Llama whose greedy replies are varied text (weights drawn with std 0.2; the default
    0.02 init makes it repeat one newline token forever, which decodes to an empty reply)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(tmp_path, tiny_tokenizer) -> str:
    """A talkative tiny chat model saved as an HF directory (its path as a string)."""
    return str(make_talkative_model(tmp_path / "tiny-chat", tiny_tokenizer))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core machine spin and are
    up to ~100x slower per tiny matmul."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
