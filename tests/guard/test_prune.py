"""Structured pruning for the compact guard: importances against hand-computed references, and pruning
that removes only what contributes nothing leaves the model's logits unchanged."""

from __future__ import annotations

import pytest
import torch
from tinymodels import make_tiny_llama
from torch import nn

from deltaguard.errors import ConfigError
from deltaguard.guard.prune import (
    VerdictHead,
    block_importance,
    choose_blocks_to_drop,
    head_importance,
    heads_to_keep,
    importances,
    neuron_importance,
    prune_blocks,
    prune_head,
    prune_heads,
    prune_neurons,
    pruned_parameter_count,
    restore_head_pruned,
    scatter_logits,
)

SEQ = torch.tensor([[5, 17, 33, 9, 120, 44, 3, 250, 61, 7]])


def _padded_batches(pad_id: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same sequence once left-padded and once right-padded (two batches), with masks."""
    n = SEQ.shape[1]
    left = torch.cat([torch.full((1, 3), pad_id), SEQ], dim=1)
    left_mask = torch.cat([torch.zeros(1, 3), torch.ones(1, n)], dim=1).long()
    right = torch.cat([SEQ, torch.full((1, 2), pad_id)], dim=1)
    right_mask = torch.cat([torch.ones(1, n), torch.zeros(1, 2)], dim=1).long()
    return [(left, left_mask), (right, right_mask)]


def _unpadded() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(SEQ, torch.ones_like(SEQ))]


def _make_identity(model, index: int) -> None:
    """Block ``index`` adds nothing to the residual stream: output == input exactly."""
    layer = model.model.layers[index]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def _hidden_states_by_hand(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """[embeddings, block 0 output, block 1 output, ...] by calling the blocks one after the other."""
    with torch.no_grad():
        h = model.model.embed_tokens(ids)
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        rope = model.model.rotary_emb(h, position_ids=positions)
        states = [h]
        for layer in model.model.layers:
            out = layer(states[-1], attention_mask=None, position_ids=positions, position_embeddings=rope)
            states.append(out[0] if isinstance(out, tuple) else out)
    return states


def _logits(model, ids: torch.Tensor = SEQ) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def _one_line(exc: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(exc.value) and str(exc.value)


# --- block importance -------------------------------------------------------------------------------------


def test_block_importance_matches_hand_computed_cosine():
    model = make_tiny_llama(n_layers=2, hidden=64, intermediate=128, vocab_size=256)
    _make_identity(model, 1)
    states = _hidden_states_by_hand(model, SEQ)
    # the reference's block-0 output is the model's own (a check on the hand-run itself)
    with torch.no_grad():
        hidden = model(input_ids=SEQ, output_hidden_states=True).hidden_states
    assert torch.allclose(states[1], hidden[1], atol=1e-6)
    expected = torch.stack([
        (1 - nn.functional.cosine_similarity(states[i][0], states[i + 1][0], dim=-1)).mean() for i in range(2)
    ])
    got = block_importance(model, _unpadded())
    assert got.shape == (2,) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-6)
    assert got[1].abs() <= 1e-6                 # the identity block
    assert got[0] > 1e-3                       # a real block


def test_block_importance_ignores_padding_and_weights_by_tokens():
    model = make_tiny_llama(n_layers=3, hidden=64, intermediate=128, vocab_size=256)
    plain = block_importance(model, _unpadded())
    assert torch.allclose(block_importance(model, _padded_batches()), plain, atol=1e-5)
    # one batch of two padded rows is the same set of real tokens as well
    left, right = _padded_batches()
    width = left[0].shape[1]
    right_ids = torch.cat([right[0], torch.zeros(1, width - right[0].shape[1], dtype=torch.long)], dim=1)
    right_mask = torch.cat([right[1], torch.zeros(1, width - right[1].shape[1], dtype=torch.long)], dim=1)
    batch = [(torch.cat([left[0], right_ids]), torch.cat([left[1], right_mask]))]
    assert torch.allclose(block_importance(model, batch), plain, atol=1e-5)


def test_block_importance_of_the_last_block_uses_its_raw_output():
    """HF's last hidden state has the final norm applied; the importance must not see it."""
    model = make_tiny_llama(n_layers=2, hidden=64, intermediate=128, vocab_size=256)
    _make_identity(model, 1)
    assert block_importance(model, _unpadded())[1].abs() <= 1e-6


# --- neuron importance ------------------------------------------------------------------------------------


def _mlp_inputs(model, batches) -> list[torch.Tensor]:
    """The real-token inputs of block 0's MLP, captured at the MLP (not at down_proj)."""
    captured: list[torch.Tensor] = []
    for ids, mask in batches:
        handle = model.model.layers[0].mlp.register_forward_pre_hook(
            lambda module, args, mask=mask: captured.append(args[0][mask.bool()]))
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        handle.remove()
    return captured


def test_neuron_importance_is_rms_of_the_down_proj_input():
    model = make_tiny_llama(n_layers=1, hidden=64, intermediate=128, vocab_size=256)
    mlp = model.model.layers[0].mlp
    x = torch.cat(_mlp_inputs(model, _unpadded()))
    with torch.no_grad():
        a = nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    expected = a.double().square().mean(dim=0).sqrt().float()
    got = neuron_importance(model, _unpadded())
    assert got.shape == (1, 128) and got.dtype == torch.float32
    assert torch.allclose(got[0], expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(neuron_importance(model, _padded_batches()), got, rtol=1e-4, atol=1e-6)


def test_neuron_importance_has_one_row_per_block():
    model = make_tiny_llama(n_layers=3, hidden=64, intermediate=96, vocab_size=256)
    got = neuron_importance(model, _padded_batches())
    assert got.shape == (3, 96) and bool((got > 0).all())


def test_one_pass_importances_equal_the_two_separate_measurements():
    """The build measures both in one pass; it must give exactly what the two passes give."""
    model = make_tiny_llama(n_layers=3, hidden=64, intermediate=96, vocab_size=256)
    blocks, neurons = importances(model, _padded_batches())
    assert torch.equal(blocks, block_importance(model, _padded_batches()))
    assert torch.equal(neurons, neuron_importance(model, _padded_batches()))


# --- attention heads --------------------------------------------------------------------------------------


def _gqa_llama(n_layers: int = 2):
    """6 query heads sharing 2 key/value heads (groups of 3, head_dim 16), like SmolLM2's 9 / 3."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=96, intermediate_size=128, num_hidden_layers=n_layers,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def _answer_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``_padded_batches`` with the last three real tokens of each sequence marked as the answer."""
    batches = []
    for ids, mask in _padded_batches():
        answer = torch.zeros_like(mask, dtype=torch.bool)
        last = int(mask[0].nonzero().max())
        answer[0, last - 2:last + 1] = True
        batches.append((ids, mask, answer))
    return batches


def _taylor_by_hand(model, ids, mask, answer) -> torch.Tensor:
    """|sum_t o_h(t) . dL/do_h(t)| per block and head for one sequence, from autograd on captured tensors."""
    captured = []

    def keep(module, args):
        args[0].retain_grad()
        captured.append(args[0])

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(keep) for layer in model.model.layers]
    model.model.embed_tokens.weight.requires_grad_(True)
    logits = model(input_ids=ids, attention_mask=mask).logits
    for handle in handles:
        handle.remove()
    predicts = answer[:, 1:]
    loss = nn.functional.cross_entropy(logits[:, :-1][predicts], ids[:, 1:][predicts], reduction="sum")
    loss.backward()
    rows = []
    for out in captured:
        product = (out * out.grad).detach()[mask.bool()]                  # [real tokens, heads * head_dim]
        rows.append(product.unflatten(-1, (6, 16)).sum(dim=(0, 2)).abs())
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def test_head_importance_is_the_first_order_taylor_term_of_the_answer_loss():
    model = _gqa_llama()
    batches = _answer_batches()
    got = head_importance(model, batches)
    assert got.shape == (2, 6) and got.dtype == torch.float32 and bool((got > 0).all())
    expected = sum(_taylor_by_hand(model, *batch) for batch in batches) / 2   # mean over the two examples
    assert torch.allclose(got, expected.float(), rtol=1e-4, atol=1e-8)
    # padding is left out: the left- and right-padded copies of one sequence measure the same
    assert torch.allclose(head_importance(model, batches[:1]), head_importance(model, batches[1:]), rtol=1e-3)
    # the model is left as it was: no gradients on its weights, still in eval mode
    assert all(p.grad is None and p.requires_grad for p in model.parameters()) and not model.training


def test_heads_to_keep_takes_each_groups_top_heads_in_order_ties_to_the_lower_index():
    importance = torch.tensor([0.2, 0.9, 0.5, 0.1, 0.1, 0.3])
    assert heads_to_keep(importance, 2, 2) == [1, 2, 3, 5]
    assert heads_to_keep(importance, 2, 1) == [1, 5]
    assert heads_to_keep(torch.tensor([0.4, 0.4, 0.4, 0.0, 0.0, 0.0]), 2, 2) == [0, 1, 3, 4]
    assert heads_to_keep(importance, 2, 3) == list(range(6))


def test_pruning_silent_heads_keeps_logits_generation_and_round_trips(tmp_path):
    """Heads whose ``o_proj`` columns are zero add nothing; pruning them (ranked least important) keeps the
    logits, the cached generation path, and the saved model's config loads back the same model."""
    from transformers import LlamaForCausalLM

    model = _gqa_llama(n_layers=3)
    silent = [[1, 5], [0, 3], [2, 4]]                  # one head of each group of 3, per block
    importance = torch.ones(3, 6)
    with torch.no_grad():
        for layer, heads, row in zip(model.model.layers, silent, importance):
            for h in heads:
                layer.self_attn.o_proj.weight[:, h * 16:(h + 1) * 16] = 0
                row[h] = 0.0
    before = _logits(model)
    generated = model.generate(SEQ, max_new_tokens=5, do_sample=False)
    q_before = [layer.self_attn.q_proj.weight.detach().clone() for layer in model.model.layers]
    assert prune_heads(model, 2, importance) is model
    assert model.config.num_attention_heads == 4 and model.config.head_dim == 16
    for layer, heads, q in zip(model.model.layers, silent, q_before):
        kept = [h for h in range(6) if h not in heads]
        rows = torch.cat([torch.arange(h * 16, (h + 1) * 16) for h in kept])
        assert torch.equal(layer.self_attn.q_proj.weight, q[rows])         # survivors, in original order
        assert layer.self_attn.o_proj.weight.shape == (96, 64)
        assert layer.self_attn.k_proj.weight.shape == (32, 96)              # key/value heads are never pruned
        assert layer.self_attn.num_key_value_groups == 2
    assert torch.allclose(_logits(model), before, atol=1e-5)
    assert torch.equal(model.generate(SEQ, max_new_tokens=5, do_sample=False), generated)
    model.save_pretrained(tmp_path / "pruned")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert reloaded.config.num_attention_heads == 4
    assert torch.allclose(_logits(reloaded), _logits(model), atol=1e-6)


@pytest.mark.parametrize("keep", [0, 4, -1, True])
def test_prune_heads_refuses_bad_keep(keep):
    model = _gqa_llama()
    with pytest.raises(ConfigError) as exc:
        prune_heads(model, keep, torch.rand(2, 6))
    _one_line(exc)
    assert model.config.num_attention_heads == 6 and model.model.layers[0].self_attn.q_proj.out_features == 96


@pytest.mark.parametrize("importance", [torch.rand(3, 6), torch.rand(2, 4), torch.tensor([[0.1] * 5 + [float("nan")]] * 2)])
def test_prune_heads_refuses_a_mismatched_or_nan_importance(importance):
    model = _gqa_llama()
    with pytest.raises(ConfigError) as exc:
        prune_heads(model, 2, importance)
    _one_line(exc)
    assert model.config.num_attention_heads == 6


# --- block pruning ----------------------------------------------------------------------------------------


def test_choose_blocks_to_drop_lowest_first_ties_by_index():
    importance = torch.tensor([0.5, 0.1, 0.3, 0.1, 0.9])
    assert choose_blocks_to_drop(importance, 3) == [1, 3, 2]
    assert choose_blocks_to_drop(importance, 0) == []


def test_dropping_an_identity_block_keeps_logits_and_generation():
    model = make_tiny_llama(n_layers=4, hidden=64, intermediate=128, vocab_size=256)
    _make_identity(model, 2)
    drop = choose_blocks_to_drop(block_importance(model, _padded_batches()), 1)
    assert drop == [2]
    before = _logits(model)
    generated_before = model.generate(SEQ, attention_mask=torch.ones_like(SEQ), max_new_tokens=3, do_sample=False,
                                      pad_token_id=0)
    kept = [model.model.layers[i] for i in (0, 1, 3)]
    assert prune_blocks(model, drop) is model
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert all(a is b for a, b in zip(model.model.layers, kept))
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    assert torch.allclose(_logits(model), before, atol=1e-5)
    generated = model.generate(SEQ, attention_mask=torch.ones_like(SEQ), max_new_tokens=3, do_sample=False,
                               use_cache=True, pad_token_id=0)
    assert torch.equal(generated, generated_before)


def test_prune_blocks_updates_layer_types():
    model = make_tiny_llama(n_layers=3)
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    prune_blocks(model, [1])
    assert model.config.layer_types == ["full_attention", "full_attention"]


def test_prune_blocks_keeps_logits_of_manually_run_kept_blocks():
    model = make_tiny_llama(n_layers=4, hidden=64, intermediate=128, vocab_size=256)
    prune_blocks(model, [0, 2])
    states = _hidden_states_by_hand(model, SEQ)            # runs the two kept blocks
    with torch.no_grad():
        expected = model.lm_head(model.model.norm(states[-1]))
    assert torch.allclose(_logits(model), expected, atol=1e-5)


# --- neuron pruning ---------------------------------------------------------------------------------------


def _kill_neurons(model, n_dead: int) -> list[torch.Tensor]:
    """Zero the gate/up rows (and biases) of ``n_dead`` different neurons in every block; their indices."""
    dead = []
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in model.model.layers:
            index = torch.randperm(model.config.intermediate_size, generator=generator)[:n_dead]
            for linear in (layer.mlp.gate_proj, layer.mlp.up_proj):
                linear.weight[index] = 0
                if linear.bias is not None:
                    linear.bias[index] = 0
            dead.append(index.sort().values)
    return dead


def test_pruning_dead_neurons_keeps_logits_and_round_trips(tmp_path):
    from transformers import LlamaForCausalLM

    model = make_tiny_llama(n_layers=3, hidden=64, intermediate=128, vocab_size=256)
    dead = _kill_neurons(model, 40)
    before = _logits(model)
    importance = neuron_importance(model, _padded_batches())
    for row, index in zip(importance, dead):
        assert bool((row[index] == 0).all())
    original = [layer.mlp.gate_proj.weight.detach().clone() for layer in model.model.layers]
    assert prune_neurons(model, 88, importance) is model
    assert model.config.intermediate_size == 88
    for layer, weight, index in zip(model.model.layers, original, dead):
        alive = torch.tensor([j for j in range(128) if j not in set(index.tolist())])
        assert layer.mlp.gate_proj.weight.shape == (88, 64) and layer.mlp.up_proj.weight.shape == (88, 64)
        assert layer.mlp.down_proj.weight.shape == (64, 88)
        assert torch.equal(layer.mlp.gate_proj.weight, weight[alive])      # survivors, in original order
    assert torch.allclose(_logits(model), before, atol=1e-5)
    model.save_pretrained(tmp_path / "pruned")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert reloaded.config.intermediate_size == 88
    assert torch.allclose(_logits(reloaded), _logits(model), atol=1e-6)


def test_pruning_dead_neurons_with_mlp_bias_keeps_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, mlp_bias=True)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("gate_proj.bias", "up_proj.bias", "down_proj.bias")):
                param.normal_(0, 0.1)
    _kill_neurons(model, 32)
    before = _logits(model)
    prune_neurons(model, 96, neuron_importance(model, _unpadded()))
    assert model.model.layers[0].mlp.down_proj.bias.shape == (64,)
    assert model.model.layers[0].mlp.gate_proj.bias.shape == (96,)
    assert torch.allclose(_logits(model), before, atol=1e-5)


def test_parameter_count_tracks_pruning():
    model = make_tiny_llama(n_layers=3, hidden=64, intermediate=128, vocab_size=256, tied=True)
    total = pruned_parameter_count(model)
    assert total == sum(p.numel() for p in model.parameters())        # tied head counted once
    prune_neurons(model, 100, neuron_importance(model, _unpadded()))
    assert pruned_parameter_count(model) == total - 3 * 3 * 64 * 28
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    prune_blocks(model, [1])
    assert pruned_parameter_count(model) == total - 3 * 3 * 64 * 28 - layer
    before = pruned_parameter_count(model)
    prune_head(model, [1, 2, 3, 4])
    assert pruned_parameter_count(model) == before + 4 * 64              # the head is now its own matrix


# --- output head ------------------------------------------------------------------------------------------

IDS = [5, 17, 3, 200, 2]


def test_pruned_head_gives_the_full_heads_verdict_logits_untied():
    model = make_tiny_llama(n_layers=2, vocab_size=256, tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    full = _logits(model)
    prune_head(model, IDS)
    assert isinstance(model.lm_head, VerdictHead) and model.lm_head.weight.shape == (5, 64)
    assert model.config.tie_word_embeddings is False and model.config.guard_head_token_ids == IDS
    small = _logits(model)
    assert small.shape == (*full.shape[:-1], 5)
    assert torch.allclose(small, full[..., IDS], atol=1e-6)
    # training the head leaves the (input) embedding alone
    embedding = model.model.embed_tokens.weight.detach().clone()
    optimizer = torch.optim.SGD(model.lm_head.parameters(), lr=1.0)
    model(input_ids=SEQ).logits.square().sum().backward()
    optimizer.step()
    assert not torch.equal(model.lm_head.weight, embedding[IDS])
    assert torch.equal(model.model.embed_tokens.weight, embedding)


def test_scatter_logits_round_trip_and_softmax():
    small = torch.randn(2, 3, len(IDS))
    full = scatter_logits(small, IDS, 256)
    assert full.shape == (2, 3, 256)
    assert torch.equal(full[..., IDS], small)
    others = torch.ones(256, dtype=torch.bool)
    others[IDS] = False
    assert bool(torch.isneginf(full[..., others]).all())
    assert torch.allclose(full.softmax(-1)[..., IDS], small.softmax(-1), atol=1e-7)
    head = VerdictHead(64, IDS)
    assert torch.equal(head.scatter(small, 256, fill=0.0)[..., IDS], small)
    filled = scatter_logits(small, torch.tensor(IDS), 256, fill=-5.0)
    assert torch.equal(filled[..., others], torch.full((2, 3, 251), -5.0))


def test_restore_head_pruned_gives_identical_logits(tmp_path):
    model = make_tiny_llama(n_layers=2, vocab_size=256, tied=True)
    prune_head(model, IDS)
    model.save_pretrained(tmp_path / "guard")
    restored = restore_head_pruned(tmp_path / "guard")
    assert isinstance(restored.lm_head, VerdictHead) and restored.lm_head.token_ids.tolist() == IDS
    assert restored.lm_head.weight is not restored.model.embed_tokens.weight
    assert torch.equal(_logits(restored), _logits(model))


def test_restore_head_pruned_after_block_and_neuron_pruning(tmp_path):
    model = make_tiny_llama(n_layers=3, vocab_size=256, tied=True)
    prune_blocks(model, [1])
    prune_neurons(model, 64, neuron_importance(model, _unpadded()))
    prune_head(model, IDS)
    model.save_pretrained(tmp_path / "guard")
    assert torch.equal(_logits(restore_head_pruned(tmp_path / "guard")), _logits(model))


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop", [[4], [-1], [1, 1], [0, 1, 2, 3], [1.5]])
def test_prune_blocks_refuses_bad_indices(drop):
    model = make_tiny_llama(n_layers=4)
    with pytest.raises(ConfigError) as exc:
        prune_blocks(model, drop)
    _one_line(exc)
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4


@pytest.mark.parametrize("n_drop", [-1, 4])
def test_choose_blocks_refuses_bad_counts(n_drop):
    with pytest.raises(ConfigError) as exc:
        choose_blocks_to_drop(torch.rand(4), n_drop)
    _one_line(exc)


def test_choose_blocks_refuses_nan():
    with pytest.raises(ConfigError) as exc:
        choose_blocks_to_drop(torch.tensor([0.1, float("nan")]), 1)
    _one_line(exc)


@pytest.mark.parametrize("keep", [0, -3, 129, True])
def test_prune_neurons_refuses_bad_keep(keep):
    model = make_tiny_llama(n_layers=2, intermediate=128)
    with pytest.raises(ConfigError) as exc:
        prune_neurons(model, keep, torch.rand(2, 128))
    _one_line(exc)
    assert model.config.intermediate_size == 128


def test_prune_neurons_refuses_mismatched_importance():
    model = make_tiny_llama(n_layers=2, intermediate=128)
    with pytest.raises(ConfigError) as exc:
        prune_neurons(model, 64, torch.rand(3, 128))
    _one_line(exc)


@pytest.mark.parametrize("ids", [[], [3, 3], [256], [-1]])
def test_prune_head_refuses_bad_token_ids(ids):
    model = make_tiny_llama(n_layers=2, vocab_size=256)
    with pytest.raises(ConfigError) as exc:
        prune_head(model, ids)
    _one_line(exc)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_prune_head_refuses_a_pruned_head_and_scatter_refuses_a_width_mismatch():
    model = prune_head(make_tiny_llama(n_layers=2), [1, 2])
    with pytest.raises(ConfigError) as exc:
        prune_head(model, [1])
    _one_line(exc)
    with pytest.raises(ConfigError) as exc:
        scatter_logits(torch.zeros(2, 3), [1, 2], 256)
    _one_line(exc)


def test_calibration_without_real_tokens_is_refused():
    model = make_tiny_llama(n_layers=2)
    empty = [(SEQ, torch.zeros_like(SEQ))]
    for measure in (block_importance, neuron_importance):
        with pytest.raises(ConfigError) as exc:
            measure(model, empty)
        _one_line(exc)
    no_answer = [(SEQ, torch.ones_like(SEQ), torch.zeros_like(SEQ, dtype=torch.bool))]
    with pytest.raises(ConfigError, match="no answer tokens") as exc:
        head_importance(model, no_answer)
    _one_line(exc)
