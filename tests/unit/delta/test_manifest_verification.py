"""The delta manifest is verified before it is trusted: its schema, and that it lists exactly the files on disk.

A manifest edited to drop a file from ``files`` used to let that file load unverified (a corrupted
tensors file merged with exit 0); a malformed one raised KeyError/TypeError deep inside the loader.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.cli import app
from deltaguard.delta import compress, extract_delta, load_delta, method_from_spec
from deltaguard.errors import FormatError


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_tokenizer):
    """A kbit4 delta of a tiny fine-tune that carries its tokenizer (so the delta has a tokenizer/ folder)."""
    root = tmp_path_factory.mktemp("pair")
    vocab = len(tiny_tokenizer)
    save_dir(make_tiny_llama(seed=0, vocab_size=vocab), root / "base")
    save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab), seed=1), root / "ft")
    tiny_tokenizer.save_pretrained(root / "ft")
    return compress(extract_delta(root / "base", root / "ft"), method_from_spec("kbit4"), progress=False)


@pytest.fixture
def delta_dir(packed, tmp_path):
    return packed.save(tmp_path / "d")


def _edit_manifest(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _corrupt_tensors(path):
    """Change one stored value but keep the file a valid safetensors file (it would load and merge)."""
    flat = load_file(str(path / "tensors.safetensors"))
    key = next(k for k, v in flat.items() if v.is_floating_point())
    flat[key] = flat[key].clone()
    flat[key].view(-1)[0] += 1.0
    save_file(flat, str(path / "tensors.safetensors"), metadata={"format": "deltaguard-delta"})


def test_an_untampered_delta_still_loads(delta_dir, packed):
    loaded = load_delta(delta_dir)
    assert set(loaded.tensors) == set(packed.tensors)
    assert loaded.tokenizer_dir == delta_dir / "tokenizer"
    assert (delta_dir / "tokenizer" / "tokenizer_config.json").is_file()


def test_a_corrupted_tensors_file_dropped_from_the_list_is_refused(delta_dir):
    _corrupt_tensors(delta_dir)
    _edit_manifest(delta_dir, lambda m: m["files"].pop("tensors.safetensors"))
    with pytest.raises(FormatError, match="files must list tensors.safetensors"):
        load_delta(delta_dir)


def test_a_tokenizer_file_dropped_from_the_list_is_refused(delta_dir):
    _edit_manifest(delta_dir, lambda m: m["files"].pop("tokenizer/tokenizer.json"))
    with pytest.raises(FormatError, match="tokenizer/tokenizer.json is not listed in manifest.json"):
        load_delta(delta_dir)


def test_an_extra_unlisted_tokenizer_file_is_refused(delta_dir):
    (delta_dir / "tokenizer" / "vocab.json").write_text("{}")
    with pytest.raises(FormatError, match="tokenizer/vocab.json is not listed in manifest.json"):
        load_delta(delta_dir)


def test_a_listed_file_that_is_missing_is_refused(delta_dir):
    (delta_dir / "tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(FormatError, match="is incomplete: tokenizer/tokenizer_config.json is missing"):
        load_delta(delta_dir)


@pytest.mark.parametrize("where", [".", "tokenizer"])
def test_a_leftover_temporary_file_is_refused(delta_dir, where):
    (delta_dir / where / ".x.tmp").write_bytes(b"half a file")
    with pytest.raises(FormatError, match="temporary file left by an interrupted write; a completed delta never"):
        load_delta(delta_dir)


def _first_tensor(manifest):
    return manifest["tensors"][next(iter(manifest["tensors"]))]


def _first_part(manifest):
    parts = _first_tensor(manifest)["parts"]
    return parts[next(iter(parts))]


MALFORMED = {
    "files-is-a-list": (lambda m: m.update(files=list(m["files"])), "files must be an object"),
    "entry-lacks-sha256": (lambda m: m["files"]["tensors.safetensors"].pop("sha256"),
                           'files["tensors.safetensors"].sha256 must be 64 lower-case hex digits, got nothing'),
    "n_bytes-is-a-string": (lambda m: m["files"]["tensors.safetensors"].update(n_bytes="12"),
                            "n_bytes must be a non-negative integer, got '12' (a string)"),
    "file-outside-the-directory": (lambda m: m["files"].update({"../x": m["files"]["tensors.safetensors"]}),
                                   'files key "../x" must be a relative path inside the delta directory'),
    "tensor-lacks-parts": (lambda m: _first_tensor(m).pop("parts"), ".parts must be an object"),
    "part-lacks-dtype": (lambda m: _first_part(m).pop("dtype"), ".dtype must be a string, got nothing"),
    "shape-of-strings": (lambda m: _first_tensor(m).update(shape=["4", "4"]),
                         ".shape must be a list of non-negative integers"),
    "rel_error-is-a-string": (lambda m: _first_tensor(m).update(rel_error="0.1"), ".rel_error must be a number"),
    "n_params-is-null": (lambda m: _first_tensor(m).update(n_params=None), ".n_params must be an integer, got None"),
    "format_version-is-a-string": (lambda m: m.update(format_version="1"),
                                   "format_version must be the integer 1, got '1' (a string)"),
    "method-is-a-string": (lambda m: m.update(method="kbit"), "method must be an object, got 'kbit'"),
    "method-lacks-fields": (lambda m: m["method"].pop("fields"), "method.fields must be an object"),
    "base_fingerprint-is-a-number": (lambda m: m.update(base_fingerprint=7), "base_fingerprint must be a string"),
    "model_config-is-a-list": (lambda m: m.update(model_config=[]), "model_config must be an object"),
    "meta-base-is-a-string": (lambda m: m["meta"].update(base="somewhere"), "meta.base must be an object"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_manifest_is_one_format_error_naming_the_field(delta_dir, case):
    edit, fragment = MALFORMED[case]
    _edit_manifest(delta_dir, edit)
    with pytest.raises(FormatError) as caught:
        load_delta(delta_dir)
    message = str(caught.value)
    assert message.startswith(f"{delta_dir}/manifest.json: ") and fragment in message, message
    assert "\n" not in message


def test_a_newer_format_version_names_both_versions(delta_dir):
    _edit_manifest(delta_dir, lambda m: m.update(format_version=2))
    with pytest.raises(FormatError, match="has delta format version 2; this deltaguard reads version 1"):
        load_delta(delta_dir)


@pytest.mark.parametrize("tamper", ["unlisted-file", "malformed-manifest"])
def test_inspect_on_a_tampered_delta_exits_1_with_one_error_line(delta_dir, tamper):
    if tamper == "unlisted-file":
        (delta_dir / "tokenizer" / "vocab.json").write_text("{}")
    else:
        _edit_manifest(delta_dir, lambda m: m["files"].update({"tensors.safetensors": []}))
    result = CliRunner().invoke(app, ["inspect", str(delta_dir)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
