"""Shared fixtures: tiny random Llama models saved as real HF directories, an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def make_tiny_llama(*, seed: int = 0, tied: bool = True, vocab_size: int = 256, hidden: int = 64,
                    n_layers: int = 2, intermediate: int = 128):
    """A seeded LlamaForCausalLM small enough to run anything in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tied,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    return model


def perturb(model, *, seed: int = 1, scale: float = 1e-3, include_norms: bool = True):
    """A 'fine-tune': the same model with every weight nudged by Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and not include_norms:
                continue
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


def save_dir(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep tests from writing to the user's cache, but share the real downloaded assets read-only."""
    monkeypatch.setenv("DELTAGUARD_TEST", "1")


@pytest.fixture
def tiny_pair(tmp_path):
    """(base_dir, finetuned_dir) of tiny tied Llama models saved with safetensors."""
    base = make_tiny_llama(seed=0)
    base_dir = save_dir(base, tmp_path / "base")
    finetuned = perturb(make_tiny_llama(seed=0), seed=1)
    ft_dir = save_dir(finetuned, tmp_path / "ft")
    return base_dir, ft_dir


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "How do I bake bread? Sure, here is a simple recipe.",
    "I cannot help with that. Sorry, as an AI I can't assist.",
    "What is 12 plus 7? The answer is 19.",
    "Step 1: mix the flour. Step 2: add water.",
] * 20


def make_tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in-process, with ChatML specials and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<pad>")
    fast.chat_template = CHATML
    fast.padding_side = "left"
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    """A tiny Llama + matching tokenizer saved as a complete HF directory (loads with load_model)."""
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer))
    model.config.bos_token_id = tiny_tokenizer.bos_token_id
    model.config.eos_token_id = tiny_tokenizer.eos_token_id
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    path = tmp_path / "tiny"
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(path)
    return path
