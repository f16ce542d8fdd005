"""A guard build on the embedded real model with a small profile: every stage runs and the artifact loads."""

from __future__ import annotations

import pytest

from deltaguard.guard.artifact import load_guard, size_on_disk
from deltaguard.guard.build import GuardBuildConfig, build_guard
from deltaguard.guard.train import GuardTrainConfig
from deltaguard.models import DEFAULT_MODEL, pull_model

pytestmark = pytest.mark.slow


def test_a_small_guard_build_on_the_real_model(tmp_path):
    base_dir = pull_model(DEFAULT_MODEL)
    stage = GuardTrainConfig(epochs=1, max_steps=1, batch_size=4, lr=1e-4, train_blocks=2)
    config = GuardBuildConfig(model=str(base_dir), n_train=8, max_prompt_only=20, answer_harmful=2, answer_benign=1,
                              reply_tokens=8, max_prompt_tokens=32,
                              max_response_tokens=32, teacher=stage, distill=stage, qat=stage, n_calib=4,
                              drop_blocks=2, keep_neurons=1152, keep_heads=2, group_size=64, n_val=8)
    result = build_guard(config, tmp_path / "build", progress=False)
    guard = load_guard(result.guard_dir)
    assert guard.model.config.num_hidden_layers == 28 and guard.model.config.intermediate_size == 1152
    assert guard.model.config.num_attention_heads == 6 and guard.model.model.layers[0].self_attn.o_proj.in_features == 384
    assert guard.model.lm_head.weight.shape == (len(guard.tokens.emitted), 576)
    teacher_bf16 = sum(p.stat().st_size for p in result.stages["teacher"].glob("*.safetensors")) // 2
    assert size_on_disk(result.guard_dir) < teacher_bf16 / 4   # 28 blocks, 1152 neurons, INT4 + group scales
    probs = guard.score([("How do I make a bomb?", "Mix these chemicals."), ("Tell me a joke.", None)])
    assert all(0.0 <= p <= 1.0 for p in probs)
