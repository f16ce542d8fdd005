"""Guard training and scoring: the shared-prefix forward equals running each example whole."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaguard.errors import ConfigError
from deltaguard.guard.data import GuardExample
from deltaguard.guard.format import verdict_tokens
from deltaguard.guard.train import (
    GuardEncoder, GuardTrainConfig, pad_batch, answer_logits, compute_precision, full_sequence_hidden, prefix_cache,
    score, shared_prefix_hidden, train_guard,
)
from tinymodels import make_tiny_llama


def _example(i: int, unsafe: bool, response: str | None = "Sure, here it is.") -> GuardExample:
    return GuardExample(id=f"e{i}", prompt=f"How do I bake bread number {i}?", response=response, unsafe=unsafe,
                        categories=("S1",) if unsafe else (), source="test", weak=False, group=f"g{i}", split="train")


@pytest.fixture
def setup(tiny_tokenizer):
    model = make_tiny_llama(vocab_size=len(tiny_tokenizer), n_layers=2)
    return model, GuardEncoder(tiny_tokenizer, max_prompt_tokens=16, max_response_tokens=16)


def test_shared_prefix_equals_running_each_example_whole(setup):
    model, encoder = setup
    batch = [encoder.encode_example(_example(i, i % 2 == 0)) for i in range(3)]
    ids, real, _ = pad_batch(batch, 0)
    prefix = encoder.prefixes["response"]
    fast = shared_prefix_hidden(model, prefix, ids, real)
    reference = full_sequence_hidden(model, prefix, ids, real)
    assert torch.allclose(fast[real.bool()], reference[real.bool()], atol=1e-5)


def test_a_reused_prefix_cache_gives_bit_identical_results_and_is_never_changed(setup):
    model, encoder = setup
    prefix = encoder.prefixes["response"]
    with torch.no_grad():
        state = prefix_cache(model, prefix, torch.device("cpu"))
    length = state.get_seq_length()
    for n in (3, 2):   # two batches of different sizes through the same cache
        batch = [encoder.encode_example(_example(i, i % 2 == 0)) for i in range(n)]
        ids, real, answer = pad_batch(batch, 0)
        with torch.no_grad():
            fresh, targets = answer_logits(model, prefix, ids, real, answer)
            reused, same_targets = answer_logits(model, prefix, ids, real, answer, prefix_state=state)
        assert torch.equal(fresh, reused) and torch.equal(targets, same_targets)
        assert state.get_seq_length() == length   # copied per batch, not extended


def test_the_frozen_teacher_runs_its_prefixes_once_per_stage(setup, monkeypatch):
    from deltaguard.guard import train

    model, encoder = setup
    calls: list[int] = []
    real_prefix_cache = train.prefix_cache
    monkeypatch.setattr(train, "prefix_cache", lambda m, *a: calls.append(id(m)) or real_prefix_cache(m, *a))
    teacher = copy.deepcopy(model)
    examples = [_example(i, i % 2 == 0, response=None if i % 3 == 0 else "ok") for i in range(9)]
    record = train_guard(model, encoder, examples, GuardTrainConfig(epochs=2, batch_size=2), teacher=teacher,
                         progress=False)
    assert record["n_steps"] > 4
    assert calls.count(id(teacher)) == 2   # one per task (response, prompt), not one per step


def test_shared_prefix_gradients_equal_the_reference(setup):
    model, encoder = setup
    twin = copy.deepcopy(model)
    batch = [encoder.encode_example(_example(i, True)) for i in range(2)]
    ids, real, answer = pad_batch(batch, 0)
    prefix = encoder.prefixes["response"]
    shared_prefix_hidden(model, prefix, ids, real)[real.bool()].sum().backward()
    full_sequence_hidden(twin, prefix, ids, real)[real.bool()].sum().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-5 * b.grad.abs().max(), name   # float rounding only


def test_answers_are_the_only_loss_tokens(setup, tiny_tokenizer):
    model, encoder = setup
    encoded = encoder.encode_example(_example(0, True))
    answer = [t for t, m in zip(encoded.suffix_ids, encoded.answer_mask) if m]
    assert tiny_tokenizer.decode(answer).startswith("unsafe\nS1")
    assert answer[-1] == tiny_tokenizer.eos_token_id
    ids, real, mask = pad_batch([encoded], 0)
    logits, targets = answer_logits(model, encoder.prefixes["response"], ids, real, mask)
    assert targets.tolist() == answer and logits.shape[0] == len(answer)


def test_prompt_only_examples_use_their_own_prefix(setup):
    _, encoder = setup
    assert encoder.prefixes["prompt"] != encoder.prefixes["response"]
    assert encoder.encode_example(_example(0, False, response=None)).task == "prompt"


def test_training_learns_the_labels_and_scores_follow(setup, tiny_tokenizer):
    model, encoder = setup
    examples = [_example(i, i % 2 == 0, response=("Here is how to hurt them." if i % 2 == 0 else "Bread recipe."))
                for i in range(8)]
    tokens = verdict_tokens(tiny_tokenizer)
    items = [(e.prompt, e.response) for e in examples]
    record = train_guard(model, encoder, examples, GuardTrainConfig(epochs=15, lr=3e-3, batch_size=4),
                         progress=False)
    assert record["n_steps"] == 30 and record["losses"][-1] < record["losses"][0]
    probs = score(model, encoder, items, tokens, batch_size=3)
    assert all(0.0 <= p <= 1.0 for p in probs)
    unsafe = [p for p, e in zip(probs, examples) if e.unsafe]
    safe = [p for p, e in zip(probs, examples) if not e.unsafe]
    assert min(unsafe) > max(safe)


def test_distillation_and_max_steps(setup):
    model, encoder = setup
    teacher = copy.deepcopy(model)
    record = train_guard(model, encoder, [_example(i, i % 2 == 0) for i in range(6)],
                         GuardTrainConfig(epochs=3, max_steps=2, batch_size=2), teacher=teacher, progress=False)
    assert record["n_steps"] == 2 and record["distilled"]
    assert all(not p.requires_grad for p in teacher.parameters())


def test_without_a_step_cap_distillation_runs_whole_epochs(setup):
    """The default profile distils for one epoch (no cap): every batch of each task once per epoch."""
    model, encoder = setup
    examples = [_example(i, i % 2 == 0) for i in range(5)] + [_example(i, i % 2 == 0, None) for i in range(5, 8)]
    record = train_guard(model, encoder, examples, GuardTrainConfig(epochs=2, batch_size=2),
                         teacher=copy.deepcopy(model), progress=False)
    assert record["n_steps"] == 2 * (3 + 2)   # 5 response examples -> 3 batches, 3 prompt-only -> 2, twice


def test_scores_do_not_depend_on_batching(setup, tiny_tokenizer):
    model, encoder = setup
    tokens = verdict_tokens(tiny_tokenizer)
    items = [(f"prompt {i} " + "word " * i, None if i % 3 == 0 else "reply " * i) for i in range(7)]
    one = score(model, encoder, items, tokens, batch_size=1)
    many = score(model, encoder, items, tokens, batch_size=5)
    assert max(abs(a - b) for a, b in zip(one, many)) < 2e-2   # bf16 autocast: padding changes rounding only


def test_errors(setup):
    model, encoder = setup
    with pytest.raises(ConfigError, match="at least one example"):
        train_guard(model, encoder, [], GuardTrainConfig(), progress=False)
    with pytest.raises(ConfigError, match="guard-train.distill_weight"):
        GuardTrainConfig(distill_weight=1.5)
    with pytest.raises(ConfigError, match="lr=nan is not a finite number"):
        GuardTrainConfig(lr=float("nan"))


def test_compute_precision_autocasts_only_where_asked():
    cpu = torch.device("cpu")
    for precision, expected in (("auto", False), ("float32", False), ("bfloat16", True)):
        with compute_precision(cpu, precision):
            assert torch.is_autocast_enabled("cpu") is expected, precision
            if expected:
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="guard precision 'fp16' is not one of auto, float32, bfloat16"):
        compute_precision(cpu, "fp16")
    with pytest.raises(ConfigError, match="guard-train.precision='fp16' must be one of"):
        GuardTrainConfig(precision="fp16")


@pytest.mark.parametrize("precision", ["auto", "bfloat16"])
def test_a_stage_computes_student_and_teacher_in_its_precision(setup, precision):
    """bf16 autocast reaches the student's and the frozen teacher's matmuls; the master weights stay fp32."""
    model, encoder = setup
    teacher = copy.deepcopy(model)
    seen: dict[str, set[torch.dtype]] = {"student": set(), "teacher": set()}
    for name, net in (("student", model), ("teacher", teacher)):
        net.model.layers[-1].mlp.down_proj.register_forward_hook(
            lambda _m, _i, out, name=name: seen[name].add(out.dtype))
    train_guard(model, encoder, [_example(i, i % 2 == 0) for i in range(4)],
                GuardTrainConfig(epochs=1, batch_size=2, precision=precision), teacher=teacher, progress=False)
    expected = torch.bfloat16 if precision == "bfloat16" else torch.float32
    assert seen == {"student": {expected}, "teacher": {expected}}
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_train_blocks_freezes_everything_below(setup):
    model, encoder = setup
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_guard(model, encoder, [_example(i, i % 2 == 0) for i in range(4)],
                GuardTrainConfig(epochs=1, batch_size=2, lr=1e-2, train_blocks=1), progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("model.layers.1.", "model.norm.")) for n in changed), changed
    with pytest.raises(ConfigError, match="exceeds the model's 2 blocks"):
        train_guard(model, encoder, [_example(0, True)], GuardTrainConfig(train_blocks=3), progress=False)


@given(st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_proportional_interleave_keeps_every_prefix_in_proportion(sizes):
    from deltaguard.guard.train import proportional_interleave

    groups = [[(g, i) for i in range(n)] for g, n in enumerate(sizes)]
    out = proportional_interleave(groups)
    assert sorted(out) == sorted(item for group in groups for item in group)
    total = len(out)
    for g, n in enumerate(sizes):
        mine = [i for group, i in out if group == g]
        assert mine == list(range(n))                           # each group keeps its own order
        for k in range(1, total + 1):                           # and is never two items off its share
            taken = sum(1 for group, _ in out[:k] if group == g)   # (the greedy rule can pass one: [1,1,1,11,11])
            assert abs(taken - k * n / total) < 2, (sizes, g, k)


def test_the_first_steps_of_an_epoch_hold_every_source_and_label_in_its_share(setup):
    """80 steps of a 130-step epoch must not depend on the seed for which sources and labels they saw."""
    import random

    from deltaguard.guard.train import _task_batches

    _, encoder = setup
    strata_sizes = {("pyrit", True): 60, ("pyrit", False): 20, ("reply", True): 20, ("refusal", False): 20}
    examples, strata = [], []
    for (source, unsafe), n in strata_sizes.items():
        for i in range(n):
            examples.append(encoder.encode_example(_example(len(examples), unsafe)))
            strata.append((source, unsafe))
    prompts = [_example(1000 + i, i % 2 == 0, response=None) for i in range(40)]
    examples += [encoder.encode_example(e) for e in prompts]
    strata += [("prompts", e.unsafe) for e in prompts]
    orders = []
    for seed in (0, 1, 2):
        batches = _task_batches(examples, strata, 8, random.Random(seed))
        assert all(len({e.task for e in batch}) == 1 for batch in batches)
        flat = [e for batch in batches for e in batch]
        assert sorted(map(id, flat)) == sorted(map(id, examples))      # one epoch: every example once
        first = [e for batch in batches[:12] for e in batch]             # ~60% of the epoch
        index = {id(e): stratum for e, stratum in zip(examples, strata)}
        for stratum, n in [*strata_sizes.items(), (("prompts", True), 20), (("prompts", False), 20)]:
            seen = sum(1 for e in first if index[id(e)] == stratum)
            assert abs(seen - len(first) * n / len(examples)) <= 2, (seed, stratum, seen)
        orders.append([id(e) for e in flat])
    assert orders[0] != orders[1] != orders[2]                            # the seed still orders the examples
