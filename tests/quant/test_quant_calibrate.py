"""Block-wise calibration on tiny models: learning beats round-to-nearest, the safety term moves states toward
the probes' harmful side, the calibration prompts never touch an evaluation, and the saved model reloads."""

from __future__ import annotations

import copy

import pytest
import torch

from tinymodels import make_tiny_llama, perturb
from deltaguard.data.base import Prompt
from deltaguard.errors import ConfigError, FormatError
from deltaguard.quant.artifact import load_quantized, read_manifest, save_quantized, stored_bits
from deltaguard.quant.calibrate import BlockwiseConfig, quantize_blockwise
from deltaguard.quant.calibset import CalibrationPrompts, calibration_prompts, check_not_evaluated, evaluation_texts
from deltaguard.quant.fake import fake_quant_weight, fit_group
from deltaguard.quant.linear import QuantLinear
from deltaguard.quant.probes import fit_probes, last_token_states
from deltaguard.data.base import normalise_text


@pytest.fixture(scope="module")
def prompts():
    return calibration_prompts(harmful_sets=("advbench", "donotanswer"), benign_sets=("benign", "arith"),
                               n_harmful=24, n_benign=24, seed=0)


def _tiny(tokenizer, seed=0, **kw):
    model = make_tiny_llama(seed=seed, vocab_size=len(tokenizer), **kw)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _logit_error(model, reference, ids):
    with torch.no_grad():
        return float((model(input_ids=ids).logits - reference(input_ids=ids).logits).pow(2).mean())


def test_calibration_prompts_come_from_calib_splits_and_avoid_every_evaluation(prompts):
    evaluated = evaluation_texts()
    assert len(prompts.harmful) == 24 and len(prompts.benign) == 24
    assert not any(normalise_text(p.text) in evaluated for p in (*prompts.harmful, *prompts.benign))
    again = calibration_prompts(harmful_sets=("advbench", "donotanswer"), benign_sets=("benign", "arith"),
                                n_harmful=24, n_benign=24, seed=0)
    assert again == prompts and again.describe() == prompts.describe()


def test_an_evaluation_prompt_in_the_calibration_is_refused():
    from deltaguard.data import load_prompts

    leaked = load_prompts("advbench", split="eval", limit=1).prompts[0]
    with pytest.raises(ConfigError, match="calibration and evaluation must be disjoint"):
        check_not_evaluated([Prompt(id="mine", text=leaked.text.upper() + "?")])
    with pytest.raises(ConfigError, match="asked for 5000"):
        calibration_prompts(harmful_sets=("advbench",), benign_sets=("benign",), n_harmful=5000, n_benign=1)


def test_round_to_nearest_stores_each_weights_own_grid(tiny_tokenizer):
    model = _tiny(tiny_tokenizer)
    original = copy.deepcopy(model)
    quantize_blockwise(model, tiny_tokenizer, CalibrationPrompts((), ()),
                       BlockwiseConfig(epochs_first=0, epochs_second=0, smooth=False, clip=False), progress=False)
    layer, before = model.model.layers[1], original.model.layers[1]
    assert isinstance(layer.mlp.up_proj, QuantLinear)
    assert torch.equal(layer.mlp.up_proj.dequantized_weight(), fake_quant_weight(before.mlp.up_proj.weight.detach(), 8))


def test_learning_lowers_the_reconstruction_error(tiny_tokenizer, prompts):
    """Learned clipping beats round-to-nearest at the logits; with smoothing too, every block's calibration
    loss falls from its SmoothQuant start (on a random tiny model, without real outlier channels, that start
    is no better than plain rounding — the real model's figures are in benchmarks/bench_whole_model.py)."""
    finetuned = perturb(_tiny(tiny_tokenizer, n_layers=2), seed=1, scale=0.02)
    ids = torch.randint(3, len(tiny_tokenizer), (4, 16), generator=torch.Generator().manual_seed(5))
    rtn = BlockwiseConfig(epochs_first=0, epochs_second=0, smooth=False, clip=False, scheme="w4a8", group_size=32)
    errors, records = {}, {}
    for name, config in {"rtn": rtn, "clip": rtn.replace(epochs_first=4, epochs_second=4, clip=True, clip_lr=5e-2),
                         "clip+smooth": rtn.replace(epochs_first=4, epochs_second=4, clip=True, smooth=True,
                                                    clip_lr=5e-2, smooth_lr=1e-2)}.items():
        model = copy.deepcopy(finetuned)
        records[name] = quantize_blockwise(model, tiny_tokenizer, prompts, config, progress=False)
        errors[name] = _logit_error(model, finetuned, ids)
    assert errors["clip"] < errors["rtn"]
    assert all(b["mse_last"] < b["mse_first"] for b in records["clip+smooth"]["blocks"])


def test_the_safety_term_pulls_harmful_states_to_the_probes_harmful_side(tiny_tokenizer, prompts):
    reference = _tiny(tiny_tokenizer, seed=0)
    finetuned = perturb(copy.deepcopy(reference), seed=2, scale=0.05)
    texts = [p.text for p in prompts.harmful] + [p.text for p in prompts.benign]
    labels = torch.tensor([1] * len(prompts.harmful) + [0] * len(prompts.benign))
    probes = fit_probes(last_token_states(reference, tiny_tokenizer, texts), labels)
    config = BlockwiseConfig(epochs_first=3, epochs_second=3, safety_weight=10.0, clip_lr=5e-2, smooth_lr=5e-2)
    records = {}
    for weight in (0.0, 10.0):
        model = copy.deepcopy(finetuned)
        records[weight] = quantize_blockwise(model, tiny_tokenizer, prompts, config.replace(safety_weight=weight),
                                             probes=probes, progress=False)
    realigned = records[10.0]["blocks"]
    assert all(b["safety_last"] < b["safety_first"] for b in realigned)
    assert records[0.0]["blocks"][0]["safety_first"] == 0.0   # the ablation never reads the probes
    hits = [(a["probe_hits_quantized"], b["probe_hits_quantized"]) for a, b in zip(records[0.0]["blocks"], realigned)]
    assert sum(h for _, h in hits) >= sum(h for h, _ in hits)


def test_probes_for_another_depth_and_bad_groups_fail_before_work(tiny_tokenizer, prompts):
    model = _tiny(tiny_tokenizer, n_layers=2)
    probes = fit_probes(torch.randn(3, 10, 64), torch.tensor([0, 1] * 5))
    with pytest.raises(ConfigError, match="probes cover 3 blocks"):
        quantize_blockwise(model, tiny_tokenizer, prompts, BlockwiseConfig(), probes=probes, progress=False)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    with pytest.raises(ConfigError, match="scheme"):
        BlockwiseConfig(scheme="w2a2")


@pytest.mark.parametrize("scheme", ["w8a8", "w4a8", "w3a16"])
def test_saved_quantized_model_reloads_to_identical_outputs(tiny_tokenizer, prompts, tmp_path, scheme):
    """Stored bits are exact: 8 a weight, 4 (two a byte), 3 (three bit planes), plus 40 bits of grid per group."""
    from deltaguard.models import load_model

    model = _tiny(tiny_tokenizer, tied=True)
    config = BlockwiseConfig(epochs_first=1, epochs_second=1, scheme=scheme,
                             group_size=-1 if scheme == "w8a8" else 32)   # the tiny model has 64 inputs
    quantize_blockwise(model, tiny_tokenizer, prompts, config, progress=False)
    out = save_quantized(model, tiny_tokenizer, tmp_path / "q", record={"note": "test"})
    again = load_model(out)
    ids = torch.randint(3, len(tiny_tokenizer), (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    assert read_manifest(out)["record"] == {"note": "test"}
    bits = stored_bits(again)
    linears = [m for m in again.modules() if isinstance(m, QuantLinear)]
    weights = sum(m.in_features * m.out_features for m in linears)
    grids = sum(m.out_features * (m.in_features // fit_group(m.in_features, m.group_size)) for m in linears)
    assert bits["linear_bits_per_param"] == pytest.approx((int(scheme[1]) * weights + 40 * grids) / weights)
    assert again.lm_head.weight is again.model.embed_tokens.weight


def test_a_damaged_quantized_directory_is_refused(tiny_tokenizer, prompts, tmp_path):
    model = _tiny(tiny_tokenizer)
    quantize_blockwise(model, tiny_tokenizer, CalibrationPrompts((), ()),
                       BlockwiseConfig(epochs_first=0, epochs_second=0, smooth=False, clip=False), progress=False)
    out = save_quantized(model, tiny_tokenizer, tmp_path / "q", record={})
    with (out / "model.safetensors").open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(FormatError, match="checksum"):
        load_quantized(out)
    with pytest.raises(FormatError, match="no quantized linear"):
        save_quantized(_tiny(tiny_tokenizer), tiny_tokenizer, tmp_path / "plain", record={})


def test_an_interrupted_calibration_resumes_to_the_same_model(tiny_tokenizer, prompts, tmp_path, monkeypatch):
    from deltaguard.quant import block

    finetuned = perturb(_tiny(tiny_tokenizer, n_layers=3), seed=1, scale=0.02)
    config = BlockwiseConfig(epochs_first=1, epochs_second=2)
    straight = copy.deepcopy(finetuned)
    expected = quantize_blockwise(straight, tiny_tokenizer, prompts, config, progress=False)

    real_fold, calls = block.BlockQuantizer.fold_, []

    def failing_fold(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt   # the user pressed Ctrl-C during the second block
        return real_fold(self)

    monkeypatch.setattr(block.BlockQuantizer, "fold_", failing_fold)
    with pytest.raises(KeyboardInterrupt):
        quantize_blockwise(copy.deepcopy(finetuned), tiny_tokenizer, prompts, config, progress=False,
                           checkpoint=tmp_path / "ckpt")
    monkeypatch.setattr(block.BlockQuantizer, "fold_", real_fold)
    resumed_model = copy.deepcopy(finetuned)
    resumed = quantize_blockwise(resumed_model, tiny_tokenizer, prompts, config, progress=False,
                                 checkpoint=tmp_path / "ckpt")
    assert [b["mse_last"] for b in resumed["blocks"]] == [b["mse_last"] for b in expected["blocks"]]
    one, two = straight.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)
    # another calibration (other settings) does not pick the checkpoint up
    other = quantize_blockwise(copy.deepcopy(finetuned), tiny_tokenizer, prompts, config.replace(epochs_second=1),
                               progress=False, checkpoint=tmp_path / "ckpt")
    assert len(other["blocks"]) == 3 and other["blocks"][0]["epochs"] == 1


def test_a_version_1_directory_with_3_bit_nibbles_still_loads(tiny_tokenizer, prompts, tmp_path):
    """Version 1 stored 3-bit codes as nibbles; the loader converts them to bit planes, same model."""
    import json

    from safetensors.torch import load_file, save_file

    from deltaguard.io import sha256_file
    from deltaguard.quant.linear import pack_nibbles, unpack_weight_codes

    model = _tiny(tiny_tokenizer)
    quantize_blockwise(model, tiny_tokenizer, CalibrationPrompts((), ()),
                       BlockwiseConfig(epochs_first=0, epochs_second=0, smooth=False, clip=False, scheme="w3a16",
                                       group_size=32), progress=False)
    out = save_quantized(model, tiny_tokenizer, tmp_path / "q", record={})
    manifest = json.loads((out / "quantized.json").read_text())
    assert manifest["format_version"] == 2
    tensors = load_file(str(out / "model.safetensors"))
    for name in manifest["quantized"]:   # rewrite as version 1 did: two 3-bit codes a byte
        planes = tensors[f"{name}.codes"]
        assert planes.shape[0] == 3
        n_in = model.get_submodule(name).in_features
        tensors[f"{name}.codes"] = pack_nibbles(unpack_weight_codes(planes, 3, n_in))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "deltaguard-quantized"})
    manifest["format_version"] = 1
    manifest["files"]["model.safetensors"] = sha256_file(out / "model.safetensors")
    (out / "quantized.json").write_text(json.dumps(manifest))
    again = load_quantized(out)
    ids = torch.randint(3, len(tiny_tokenizer), (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    manifest["format_version"] = 3
    (out / "quantized.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="version 3 is not supported"):
        load_quantized(out)
