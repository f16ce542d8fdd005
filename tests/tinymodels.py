"""Tiny random Llama models and a tiny chat tokenizer, built in-process for fast tests.

Test modules import these directly (``from tinymodels import make_tiny_llama``); fixtures live in conftest.py."""

from __future__ import annotations

from pathlib import Path

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


def transform_errors(model, tokenizer, labels, **overrides):
    """Mean squared logit error of each transform (by label) against ``model`` on held-out text of the
    calibration's kind (calib-chat's eval split): the objective GPTQ, AWQ and SparseGPT minimise.
    Returns ``({label: error}, {label: transformed model})``."""
    import copy

    from deltaguard.data import load_prompts
    from deltaguard.quant.probes import encode_right_padded
    from deltaguard.transforms import transform_from_spec, transforms

    texts = [p.text for p in load_prompts("calib-chat", split="eval", limit=8).prompts]
    ids, _ = encode_right_padded(tokenizer, texts, 48)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    errors, models = {}, {}
    for label in labels:
        config = transform_from_spec(label)
        config = config.replace(**{k: v for k, v in overrides.items() if hasattr(config, k)})
        models[label] = transforms.get(config.name)().apply_(copy.deepcopy(model), config, tokenizer=tokenizer)
        with torch.no_grad():
            errors[label] = float((models[label](input_ids=ids).logits - reference).pow(2).mean())
    return errors, models
