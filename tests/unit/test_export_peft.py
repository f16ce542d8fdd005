"""``deltaguard export --format peft``: a compressed delta as a PEFT LoRA adapter.

Low-rank deltas export exactly (PEFT's merge equals ``deltaguard merge``); other deltas are a truncated
SVD whose reported error is the measured one, never increasing with the rank; bad input is one line.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from clirun import one_error_line, run
from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.delta import compress, extract_delta, load_delta, merge, method_from_spec
from deltaguard.delta.export import export_peft
from deltaguard.errors import ConfigError
from deltaguard.io import sha256_file
from deltaguard.models import load_model

FULL_RANK = 64  # the tiny Llama's widest matrix side: min(out, in) <= 64 for every projection




@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer):
    """A base, a fine-tune that changes only the projections, one that changes everything, and deltas."""
    root = tmp_path_factory.mktemp("export-peft")
    vocab = len(tiny_tokenizer)
    base = save_dir(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), root / "base")
    proj_ft = make_tiny_llama(seed=0, vocab_size=vocab, tied=False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in proj_ft.named_parameters():
            if name.endswith("_proj.weight"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    ft = save_dir(proj_ft, root / "ft")
    ft_all = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), seed=2, scale=0.02),
                      root / "ft-all")
    for path in (base, ft, ft_all):
        tiny_tokenizer.save_pretrained(path)
    pair = extract_delta(base, ft)
    bitdelta = method_from_spec("bitdelta").without_calibration()  # closed-form scales, no distillation
    deltas = {
        "lowrank": compress(pair, method_from_spec("lowrank8"), progress=False).save(root / "lowrank.delta"),
        "bitdelta": compress(pair, bitdelta, progress=False).save(root / "bitdelta.delta"),
        "mixed": compress(pair, method_from_spec("mixed"), progress=False).save(root / "mixed.delta"),
        "all": compress(extract_delta(base, ft_all), bitdelta, progress=False).save(root / "all.delta"),
    }
    return {"root": root, "base": base, **deltas}


def _peft_merged(base, adapter):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(base), str(adapter)).merge_and_unload().eval()


def _assert_same_model(a, b, atol):
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert set(sd_a) == set(sd_b)
    worst = max(float((sd_a[k].float() - sd_b[k].float()).abs().max()) for k in sd_a)
    assert worst <= atol, worst
    ids = torch.arange(1, 33).reshape(2, 16)
    with torch.no_grad():
        assert torch.allclose(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=10 * atol)


def test_a_lowrank_delta_exports_exactly(tiny, tmp_path):
    out = tmp_path / "adapter"
    code, output = run("export", "--delta", tiny["lowrank"], "--format", "peft", "-o", out)
    assert code == 0, output
    assert "saved" in output and "lowrank8" in output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["bias"] == "none"
    assert config["r"] == config["lora_alpha"] == 8 and config["fan_in_fan_out"] is False
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                "v_proj"]
    assert config["base_model_name_or_path"] == str(tiny["base"])  # recorded in the delta
    weights = load_file(out / "adapter_model.safetensors")
    a = weights["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"]
    b = weights["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"]
    assert a.shape == (8, 64) and b.shape == (32, 8)  # lora_A [r, in], lora_B [out, r]
    record = json.loads((out / "deltaguard_export.json").read_text())
    assert record["manifest_sha256"] == sha256_file(tiny["lowrank"] / "manifest.json")
    assert record["rank"] == 8 and record["exact"] and record["rel_error"] == 0.0 and record["dropped"] == []
    merged_dir = merge(tiny["base"], tiny["lowrank"], tmp_path / "merged")
    _assert_same_model(_peft_merged(tiny["base"], out), load_model(merged_dir), atol=1e-5)


def test_a_mixed_delta_exports_its_dequantised_factors(tiny, tmp_path):
    report = export_peft(tiny["mixed"], tmp_path / "adapter", base="org/tiny")
    assert report.exact and report.rank == FULL_RANK and report.rel_error < 1e-5
    assert {m.source for m in report.matrices} == {"factors"}
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny"


def test_a_bitdelta_at_full_rank_reproduces_the_merged_model(tiny, tmp_path):
    report = export_peft(tiny["bitdelta"], tmp_path / "adapter", rank=FULL_RANK)
    assert report.rank == FULL_RANK and report.rel_error < 1e-5 and report.energy_kept == pytest.approx(1.0)
    assert {m.source for m in report.matrices} == {"svd"}
    merged = load_model(merge(tiny["base"], tiny["bitdelta"], tmp_path / "merged"))
    _assert_same_model(_peft_merged(tiny["base"], tmp_path / "adapter"), merged, atol=1e-5)


def test_the_reported_error_at_a_small_rank_is_the_measured_one(tiny, tmp_path):
    rank = 4
    report = export_peft(tiny["bitdelta"], tmp_path / "adapter", rank=rank)
    delta = load_delta(tiny["bitdelta"])
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    errors, norms = [], []
    for m in report.matrices:
        target = delta.decompress(m.name).double()
        key = "base_model.model." + m.name.removesuffix(".weight")
        approx = scale * weights[f"{key}.lora_B.weight"].double() @ weights[f"{key}.lora_A.weight"].double()
        error = float(torch.linalg.matrix_norm(target - approx) / torch.linalg.matrix_norm(target))
        sigma = torch.linalg.svdvals(target)
        eckart_young = float(sigma[rank:].pow(2).sum().sqrt() / sigma.pow(2).sum().sqrt())
        assert m.rank == rank
        assert m.rel_error == pytest.approx(error, rel=1e-4, abs=1e-6)
        assert m.rel_error == pytest.approx(eckart_young, rel=1e-4)  # the truncated SVD is the optimum
        assert m.energy_kept == pytest.approx(1 - error**2, rel=1e-4)
        errors.append(error * m.norm)
        norms.append(m.norm)
    overall = math.sqrt(sum(e * e for e in errors) / sum(n * n for n in norms))
    assert report.rel_error == pytest.approx(overall, rel=1e-4)
    assert 0.5 < report.rel_error < 1.0  # a 1-bit delta is far from rank 4
    record = json.loads((tmp_path / "adapter" / "deltaguard_export.json").read_text())
    assert record["rel_error"] == pytest.approx(report.rel_error) and len(record["matrices"]) == 14


def test_the_error_never_grows_with_the_rank(tiny, tmp_path):
    delta = load_delta(tiny["bitdelta"])
    reports = [export_peft(delta, tmp_path / f"r{rank}", rank=rank) for rank in (1, 2, 4, 8, 16, 32, FULL_RANK)]
    overall = [r.rel_error for r in reports]
    assert all(later <= earlier + 1e-6 for earlier, later in zip(overall, overall[1:])), overall
    assert overall[0] > 0.9 and overall[-1] < 1e-5
    for name in (m.name for m in reports[0].matrices):
        per_matrix = [next(m.rel_error for m in r.matrices if m.name == name) for r in reports]
        assert all(b <= a + 1e-6 for a, b in zip(per_matrix, per_matrix[1:])), (name, per_matrix)


def test_a_lower_rank_truncates_lowrank_factors(tiny, tmp_path):
    report = export_peft(tiny["lowrank"], tmp_path / "adapter", rank=2)
    assert report.rank == 2 and not report.exact and {m.source for m in report.matrices} == {"factors-truncated"}
    delta = load_delta(tiny["lowrank"])
    for m in report.matrices:
        sigma = torch.linalg.svdvals(delta.decompress(m.name).double())
        assert m.rel_error == pytest.approx(float(sigma[2:].pow(2).sum().sqrt() / sigma.pow(2).sum().sqrt()), rel=1e-3)


def test_non_linear_deltas_are_refused_unless_dropped(tiny, tmp_path):
    out = tmp_path / "adapter"
    code, output = run("export", "--delta", tiny["all"], "--rank", "8", "-o", out)
    assert code == 2 and "--drop-non-linear" in one_error_line(output) and not out.exists()
    code, output = run("export", "--delta", tiny["all"], "--rank", "8", "--drop-non-linear", "-o", out, "--json")
    assert code == 0, output
    data = json.loads(output)
    dropped = {d["name"]: d["reason"] for d in data["dropped"]}
    assert dropped["model.embed_tokens.weight"] == "embedding" and dropped["lm_head.weight"] == "output head"
    assert "model.norm.weight" in dropped and len(data["matrices"]) == 14
    delta = load_delta(tiny["all"])
    norm2 = {name: float(delta.decompress(name).pow(2).sum()) for name in delta.tensors}
    expected = math.sqrt(sum(norm2[n] for n in dropped) / sum(norm2.values()))
    assert data["dropped_rel_norm"] == pytest.approx(expected, rel=1e-4) and 0 < expected < 1
    assert json.loads((out / "deltaguard_export.json").read_text())["dropped_rel_norm"] == pytest.approx(expected)


@pytest.mark.parametrize("case", ["missing-delta", "corrupted-delta", "rank-zero", "rank-negative", "rank-missing",
                                  "unknown-format", "rank-not-int"])
def test_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, case):
    out = tmp_path / "adapter"
    delta = tiny["bitdelta"]
    args = ["export", "--delta", delta, "--format", "peft", "--rank", "4", "-o", out]
    if case == "missing-delta":
        args[2] = tmp_path / "nope.delta"
    elif case == "corrupted-delta":
        broken = tmp_path / "broken.delta"
        compress(extract_delta(tiny["base"], tiny["root"] / "ft"), method_from_spec("kbit4"),
                 progress=False).save(broken)
        tensors = broken / "tensors.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:100])
        args[2] = broken
    elif case == "rank-zero":
        args[6] = "0"
    elif case == "rank-negative":
        args[6] = "-3"
    elif case == "rank-missing":
        args = args[:5] + args[7:]
    elif case == "unknown-format":
        args[4] = "gguf"
    elif case == "rank-not-int":
        args[6] = "abc"
    code, output = run(*args)
    line = one_error_line(output)
    assert code in (1, 2), output
    assert not out.exists() and not list(tmp_path.glob(".adapter*")), "a failed export left output behind"
    if case == "rank-missing":
        assert "--rank" in line and "bitdelta" in line
    if case == "unknown-format":
        assert "--format" in line and "peft" in line


def test_an_existing_output_needs_force(tiny, tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, output = run("export", "--delta", tiny["lowrank"], "-o", out)
    assert code == 2 and "already exists" in one_error_line(output)
    assert (out / "mine.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="already exists"):
        export_peft(tiny["lowrank"], out)
    code, output = run("export", "--delta", tiny["lowrank"], "-o", out, "--force")
    assert code == 0, output
    assert not (out / "mine.txt").exists() and (out / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob(".adapter*"))


def test_the_library_names_the_missing_rank_option(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"--rank is required"):
        export_peft(tiny["bitdelta"], tmp_path / "adapter")
    with pytest.raises(ConfigError, match=r"--rank must be a positive integer"):
        export_peft(tiny["lowrank"], tmp_path / "adapter", rank=0)
    assert not (tmp_path / "adapter").exists()
