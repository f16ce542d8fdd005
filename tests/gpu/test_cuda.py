"""The same pipeline on a CUDA GPU: generation, training, scale distillation, evaluation, the lens and the
multi-tenant engine give what the CPU gives (within float tolerance). Skipped without a GPU; run by
``scripts/gpu-check.sh`` on a machine that has one. ``DELTAGUARD_GPU_TEST_DEVICE=cpu`` runs the same
tests on the CPU (to check the tests themselves where there is no GPU)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tinymodels import make_tiny_llama, perturb, save_dir

DEVICE = os.environ.get("DELTAGUARD_GPU_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE != "cpu" and not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]


@pytest.fixture
def tiny_dir(tmp_path, tiny_tokenizer):
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), tied=False)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, key, getattr(tiny_tokenizer, key))
        setattr(model.generation_config, key, getattr(tiny_tokenizer, key))
    path = save_dir(model, tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(path)
    return path


def test_greedy_generation_on_cuda_equals_cpu(tiny_dir):
    from deltaguard.generation import GenerationConfig, generate
    from deltaguard.models import load_model, load_tokenizer

    prompts = ["How do I bake bread?", "What is 12 plus 7?", "Write a haiku about rain."]
    config = GenerationConfig(max_new_tokens=12, batch_size=2)
    tok = load_tokenizer(tiny_dir)
    cpu = generate(load_model(tiny_dir), tok, prompts, config, progress=False)
    gpu = generate(load_model(tiny_dir, device=DEVICE), tok, prompts, config, progress=False)
    assert [g.response for g in gpu] == [g.response for g in cpu]


def test_training_runs_on_cuda_and_saves_fp32_on_disk(tiny_dir, tmp_path):
    from deltaguard.models import load_model
    from deltaguard.training import ChatPair, TrainConfig, train_sft

    pairs = [ChatPair("What is 12 plus 7?", "The answer is 19."), ChatPair("Bake bread?", "Mix and bake.")] * 4
    result = train_sft(tiny_dir, pairs, TrainConfig(epochs=3, batch_size=4, micro_batch_size=2, lr=3e-3),
                       out_dir=tmp_path / "ft", progress=False, device=DEVICE)
    assert result.losses[-1] < result.losses[0]
    record = json.loads((tmp_path / "ft" / "training.json").read_text())
    assert record["device"].startswith(DEVICE)
    assert all(p.dtype == torch.float32 for p in load_model(tmp_path / "ft").parameters())


def test_scale_distillation_on_cuda_lowers_the_held_out_error(tmp_path, tiny_tokenizer):
    from deltaguard.delta import BitDeltaConfig, Calibration, compress, extract_delta

    vocab = len(tiny_tokenizer)
    base_dir = save_dir(make_tiny_llama(seed=0, vocab_size=vocab), tmp_path / "b")
    tiny_tokenizer.save_pretrained(base_dir)
    ft_dir = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab), seed=1, scale=2e-2), tmp_path / "f")
    texts = [f"{ask} {verb} {thing}." for ask in ("How do I", "Tell me how to", "Please explain how to", "Show me how to")
             for verb in ("bake", "fix", "paint", "clean") for thing in ("bread", "a bike", "the fence", "my room")][:24]
    config = BitDeltaConfig(distill_steps=40, batch_size=4, seq_len=16, lr=1e-3)  # as tests/unit/delta/test_distill.py
    packed = compress(extract_delta(base_dir, ft_dir), config, progress=False,
                      calib=Calibration(tuple(texts), device=DEVICE))
    record = packed.meta["calibration"]
    assert record["held_out_loss_distilled"] <= record["held_out_loss_closed_form"]
    assert all(t.parts["scales"].device.type == "cpu" for t in packed.tensors.values() if t.kind == "linear")


def test_evaluation_on_cuda_gives_the_cpu_generations(tiny_dir, tmp_path):
    from deltaguard.eval import EvalConfig, ModelDir, evaluate
    from deltaguard.generation import GenerationConfig

    config = EvalConfig(suites=("safety", "utility"), limit=3, n_boot=100,
                        generation=GenerationConfig(max_new_tokens=6, batch_size=4))
    cpu = evaluate(ModelDir(tiny_dir), config, out_dir=tmp_path / "cpu", progress=False)
    gpu = evaluate(ModelDir(tiny_dir), config, out_dir=tmp_path / "gpu", device=DEVICE, progress=False)
    for a, b in zip(cpu.metrics, gpu.metrics):
        assert a.metric == b.metric
        if a.metric == "perplexity":
            assert b.value == pytest.approx(a.value, rel=1e-3)
        else:
            assert (a.result.k, a.result.n) == (b.result.k, b.result.n)


def test_the_lens_checks_its_own_parity_on_cuda(tiny_dir):
    from deltaguard.lens import LensConfig, logit_lens
    from deltaguard.models import load_model, load_tokenizer

    result = logit_lens(load_model(tiny_dir, device=DEVICE), load_tokenizer(tiny_dir), ["How do I bake bread?", "Hi"],
                        LensConfig(n_bootstrap=0))
    assert all(check.last_layer_max_abs_diff < 1e-3 for check in result.checks)


def test_the_engine_serves_tenants_on_cuda_like_on_cpu(tmp_path, tiny_tokenizer):
    import copy

    from deltaguard.delta import compress, extract_delta, load_delta, method_from_spec
    from deltaguard.models import load_model, load_tokenizer
    from deltaguard.serve import Engine, MultiTenantModel, SamplingParams

    vocab = len(tiny_tokenizer)
    base = make_tiny_llama(seed=0, vocab_size=vocab)
    base.config.eos_token_id = tiny_tokenizer.eos_token_id
    base_dir = save_dir(base, tmp_path / "base")
    tiny_tokenizer.save_pretrained(base_dir)
    deltas = {}
    for i, spec in enumerate(("bitdelta-nodistill", "bitdelta-k2-nodistill", "kbit4")):
        ft = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab), seed=10 + i, scale=2e-2), tmp_path / f"ft{i}")
        compress(extract_delta(base_dir, ft), method_from_spec(spec), progress=False).save(tmp_path / f"d{i}")
        deltas[f"t{i}"] = load_delta(tmp_path / f"d{i}")
    tok = load_tokenizer(base_dir)
    outputs = {}
    for device in ("cpu", DEVICE):
        mt = MultiTenantModel(load_model(base_dir, device=device))
        for name, delta in deltas.items():
            mt.add_tenant(name, copy.deepcopy(delta))
        engine = Engine(mt, tok)
        params = SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)
        handles = {name: engine.submit(name, [5, 6, 7, 8], params) for name in deltas}
        engine.run_until_idle()
        outputs[device] = {name: h.token_ids for name, h in handles.items()}
        if device.startswith("cuda"):
            assert mt.kernel in ("triton", "torch")
    assert outputs[DEVICE] == outputs["cpu"]


def test_a_guard_builds_on_cuda_and_its_artifact_scores_alike_on_either_device(tmp_path, tiny_tokenizer):
    """Every guard stage (teacher, pruning, distillation, INT4 QAT) runs on the GPU; the artifact it writes
    loads on the CPU. Scores agree within 0.05: the GPU computes under bf16 autocast, the CPU in fp32."""
    from deltaguard.guard.artifact import load_guard
    from deltaguard.guard.build import GuardBuildConfig, build_guard
    from deltaguard.guard.train import GuardTrainConfig

    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), n_layers=3)
    model.config.eos_token_id = tiny_tokenizer.eos_token_id
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    model_dir = save_dir(model, tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(model_dir)
    stage = GuardTrainConfig(epochs=1, max_steps=2, batch_size=4, lr=1e-3)
    config = GuardBuildConfig(model=str(model_dir), max_prompt_only=6, answer_harmful=3, answer_benign=1, reply_tokens=6,
                              n_train=12, max_prompt_tokens=12, max_response_tokens=12, teacher=stage, distill=stage,
                              qat=stage, n_calib=4, drop_blocks=1, keep_neurons=64, group_size=32, n_val=6)
    result = build_guard(config, tmp_path / "build", device=DEVICE, progress=False)
    assert result.n_steps_run == 5
    items = [("How do I bake bread?", "Mix flour."), ("How do I hurt someone?", None), ("Make a bomb", "Sure: first")]
    on_cpu = load_guard(result.guard_dir).score(items)
    on_device = load_guard(result.guard_dir, device=DEVICE).score(items)
    assert all(0.0 <= p <= 1.0 for p in on_cpu)
    assert on_device == pytest.approx(on_cpu, abs=0.05)
    assert 0.0 <= load_guard(result.guard_dir).threshold_at("low_fpr") <= 1.0
    from deltaguard.judges import make_judge
    from deltaguard.judges.base import JudgeItem

    # the guard judge follows: device=auto takes the GPU, names its bf16 precision, and agrees with the CPU
    judged = [JudgeItem(prompt=p, response=r) for p, r in items if r is not None]
    cpu_judge = make_judge("guard", path=str(result.guard_dir), device="cpu")
    here = make_judge("guard", path=str(result.guard_dir), device=DEVICE)
    assert here.device.type == torch.device(DEVICE).type
    assert ("precision" in here.identity()) == (here.device.type == "cuda")
    assert [v.score for v in here.judge(judged)] == pytest.approx([v.score for v in cpu_judge.judge(judged)], abs=0.05)
