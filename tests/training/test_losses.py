"""The chunked reply-token loss equals the full-logits loss (values and gradients); KL and MSE basics."""

from __future__ import annotations

import pytest
import torch

from tinymodels import make_tiny_llama
from deltaguard.training import IGNORE, masked_kl, masked_logit_mse, token_loss_sum, token_loss_sum_reference


def _batch(vocab: int, *, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0                                   # right padding
    labels = ids.clone()
    labels[:, :8] = IGNORE                             # the prompt
    labels[mask == 0] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("chunk_tokens", [1, 7, 1024])
@pytest.mark.parametrize("tied", [True, False])
def test_chunked_loss_and_gradients_equal_the_full_logits_form(chunk_tokens, tied):
    model = make_tiny_llama(seed=0, tied=tied)
    batch = _batch(model.config.vocab_size)
    fast, n_fast = token_loss_sum(model, batch, chunk_tokens=chunk_tokens)
    fast.backward()
    fast_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    slow, n_slow = token_loss_sum_reference(model, batch)
    slow.backward()
    assert n_fast == n_slow == int((batch["labels"][:, 1:] != IGNORE).sum())
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-4)
    for name, param in model.named_parameters():
        torch.testing.assert_close(fast_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_loss_under_bf16_autocast_matches_the_reference_closely():
    model = make_tiny_llama(seed=1)
    batch = _batch(model.config.vocab_size, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, _ = token_loss_sum(model, batch, chunk_tokens=5)
        slow, _ = token_loss_sum_reference(model, batch)
    torch.testing.assert_close(fast, slow, rtol=1e-2, atol=1e-2)


def test_the_loss_reaches_lora_adapters_inside_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_tiny_llama(seed=2), LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.0))
    batch = _batch(256, seed=2)
    loss, _ = token_loss_sum(model, batch, chunk_tokens=4)
    loss.backward()
    reference, _ = token_loss_sum_reference(model, batch)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-4)
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_no_labelled_tokens_gives_zero_and_a_usable_graph():
    model = make_tiny_llama(seed=0)
    batch = _batch(256)
    batch["labels"][:] = IGNORE
    loss, n = token_loss_sum(model, batch)
    assert n == 0 and float(loss) == 0.0
    loss.backward()


def test_masked_losses_ignore_padding_and_kl_is_zero_on_equal_logits():
    student, teacher = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    noisy = student.clone()
    noisy[0, 2:] += 100.0                                  # padding positions: must not count
    assert torch.allclose(masked_logit_mse(noisy, teacher, mask), masked_logit_mse(student, teacher, mask))
    assert float(masked_kl(teacher, teacher, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(masked_kl(student, teacher, mask, temperature=2.0)) > 0
