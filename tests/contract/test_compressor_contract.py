"""Every registered compressor honours the same contract (generated from the registry)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.delta import (
    apply_delta, attach_delta_, compress, compressors, extract_delta, load_delta, merge,
)
from deltaguard.errors import FormatError, IncompatibleBaseError
from deltaguard.models import load_model

METHODS = compressors.names()


def default_config(name):
    """The method's defaults, with any calibration step switched off (calibration is tested on its own)."""
    config = compressors.get(name).config_cls()
    return config.without_calibration() if config.needs_calibration else config


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = make_tiny_llama(seed=0)
    save_dir(base, root / "base")
    save_dir(perturb(make_tiny_llama(seed=0), seed=1), root / "ft")
    save_dir(make_tiny_llama(seed=5), root / "other")
    return root, extract_delta(root / "base", root / "ft")


@pytest.fixture(scope="module")
def packed_by_method(pair):
    _, delta = pair
    return {name: compress(delta, default_config(name), progress=False) for name in METHODS}


def test_all_methods_are_registered():
    assert set(METHODS) >= {"bitdelta", "kbit", "lowrank", "mixed", "dare", "compeft", "toy"}


@pytest.mark.parametrize("name", METHODS)
def test_labels_parse_back_to_their_configs(name):
    """Every config owns its short label and its parser: label → config → label is the identity."""
    from deltaguard.delta import method_from_spec

    config = compressors.get(name).config_cls()
    assert method_from_spec(name) == config
    assert method_from_spec(config.label) == config
    for label in compressors.get(name).default_labels:
        parsed = method_from_spec(label)
        assert parsed.name == name and method_from_spec(parsed.label) == parsed


@pytest.mark.parametrize("name", METHODS)
def test_calibration_is_part_of_the_contract(name, pair):
    """A method that calibrates refuses to compress without calibration text (never skips silently);
    switching calibration off gives a config that needs none; a method without one says so."""
    from deltaguard.errors import ConfigError

    _, delta = pair
    config = compressors.get(name).config_cls()
    if config.needs_calibration:
        with pytest.raises(ConfigError, match="needs calibration text"):
            compress(delta, config, calib=None, progress=False)
        assert not config.without_calibration().needs_calibration
    else:
        with pytest.raises(ConfigError, match="no calibration step"):
            config.without_calibration()


@pytest.mark.parametrize("name", METHODS)
def test_sign_planes_reproduce_the_decompressed_delta_exactly(name, packed_by_method):
    """Methods that expose sign planes are served by the 1-bit kernels: Σ s_k·sign_k must BE the delta."""
    from deltaguard.delta.packing import unpack_signs

    packed = packed_by_method[name]
    compressor = compressors.get(name)()
    for tensor in (t for t in packed.tensors.values() if t.kind == "linear"):
        planes = compressor.sign_planes(tensor.parts)
        if planes is None:
            continue
        signs, scales = planes
        rebuilt = sum(s * unpack_signs(bits, tensor.base_shape[-1]) for bits, s in zip(signs, scales))
        assert torch.equal(rebuilt.float(), packed.decompress(tensor.name))


@pytest.mark.parametrize("name", METHODS)
def test_config_json_round_trip(name):
    config = default_config(name)
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("name", METHODS)
def test_save_then_load_is_bit_exact(name, pair, packed_by_method, tmp_path):
    root, _ = pair
    packed = packed_by_method[name]
    loaded = load_delta(packed.save(tmp_path / "d"), base=root / "base")
    assert loaded.config == packed.config and loaded.base_fingerprint == packed.base_fingerprint
    assert loaded.tensors.keys() == packed.tensors.keys()
    for tensor_name, tensor in packed.tensors.items():
        for part, value in tensor.parts.items():
            assert torch.equal(loaded.tensors[tensor_name].parts[part], value), (tensor_name, part)


@pytest.mark.parametrize("name", METHODS)
def test_decompressed_shape_dtype_and_fidelity(name, pair, packed_by_method):
    packed = packed_by_method[name]
    linear = [t for t in packed.tensors.values() if t.kind == "linear"]
    assert linear, "the method compressed no linear layer"
    for tensor in linear:
        out = packed.decompress(tensor.name)
        assert out.shape == tensor.base_shape and out.dtype == torch.float32
        assert 0 <= tensor.stats.rel_error < 3.5 and -1 <= tensor.stats.cosine <= 1
    summary = packed.report.summary()
    assert summary["n_bytes"] > 0 and summary["bits_per_param"] > 0


@pytest.mark.parametrize("name", METHODS)
def test_merged_equals_on_the_fly(name, pair, packed_by_method):
    packed = packed_by_method[name]
    base = make_tiny_llama(seed=0)
    merged = apply_delta(base, packed)
    on_the_fly = attach_delta_(make_tiny_llama(seed=0), packed)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, on_the_fly(ids).logits, atol=1e-4)
        assert not torch.equal(merged(ids).logits, base(ids).logits)


@pytest.mark.parametrize("name", METHODS)
def test_tampered_manifest_raises_format_error(name, packed_by_method, tmp_path):
    path = packed_by_method[name].save(tmp_path / "d")
    manifest = json.loads((path / "manifest.json").read_text())
    first = next(iter(manifest["tensors"]))
    first_part = next(iter(manifest["tensors"][first]["parts"]))
    manifest["tensors"][first]["parts"][first_part]["shape"] = [3, 3]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="manifest says"):
        load_delta(path)


@pytest.mark.parametrize("name", METHODS)
def test_truncated_tensors_raise_format_error(name, packed_by_method, tmp_path):
    path = packed_by_method[name].save(tmp_path / "d")
    data = (path / "tensors.safetensors").read_bytes()
    (path / "tensors.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="corrupted or truncated"):
        load_delta(path)


def _with_nan(packed):
    """The packed delta with one NaN in its first floating-point part (a method-encoded tensor's if it has one)."""
    candidates = sorted(packed.tensors.items(), key=lambda item: item[1].kind != "linear")
    name, tensor, part = next((n, t, p) for n, t in candidates for p, v in t.parts.items() if v.is_floating_point())
    bad = tensor.parts[part].clone()
    bad.view(-1)[0] = float("nan")
    return dataclasses.replace(packed, tensors={**packed.tensors, name: dataclasses.replace(
        tensor, parts={**tensor.parts, part: bad})}), f"{name}::{part}"


@pytest.mark.parametrize("name", METHODS)
def test_non_finite_values_are_never_written_or_loaded(name, packed_by_method, tmp_path):
    """A NaN scale with a *valid* checksum used to load, merge and inspect with exit 0."""
    from safetensors.torch import load_file, save_file

    from deltaguard.io import sha256_file

    poisoned, key = _with_nan(packed_by_method[name])
    with pytest.raises(FormatError, match="NaN or infinite"):
        poisoned.save(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    path = packed_by_method[name].save(tmp_path / "d")
    flat = load_file(str(path / "tensors.safetensors"))
    flat[key] = flat[key].clone()
    flat[key].view(-1)[-1] = float("inf")
    save_file(flat, str(path / "tensors.safetensors"), metadata={"format": "deltaguard-delta"})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["tensors.safetensors"] = {"sha256": sha256_file(path / "tensors.safetensors"),
                                                "n_bytes": (path / "tensors.safetensors").stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=f"{key.replace('.', '[.]')} holds 1 NaN or infinite"):
        load_delta(path)


@pytest.mark.parametrize("name", METHODS)
def test_wrong_base_raises_incompatible_base(name, pair, packed_by_method, tmp_path):
    root, _ = pair
    path = packed_by_method[name].save(tmp_path / "d")
    with pytest.raises(IncompatibleBaseError, match="was made for base"):
        load_delta(path, base=root / "other")
    with pytest.raises(IncompatibleBaseError):
        apply_delta(make_tiny_llama(seed=5), load_delta(path))


def test_merge_writes_a_directory_transformers_loads(pair, packed_by_method, tmp_path):
    root, _ = pair
    out = merge(root / "base", packed_by_method["kbit"], tmp_path / "merged")
    model = load_model(out)
    reference = apply_delta(make_tiny_llama(seed=0), packed_by_method["kbit"])
    ids = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)
