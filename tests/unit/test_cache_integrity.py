"""Cache entries are verified every time they are used, not only when first written.

An extracted wheel member (a prompt file) that was later truncated or edited used to be trusted
forever (a partial prompt set, silently); a converted model truncated in the cache made every run
fail with an internal error while ``pull_model`` still returned it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile

import pytest

from tinymodels import make_tiny_llama
from deltaguard import assets, models
from deltaguard.assets import RECORD_SUFFIX, QuickDigest, WheelAsset, quick_digest, wheel_member
from deltaguard.io import content_key, sha256_file
from deltaguard.models import MODEL_RECORD, save_model

MEMBER = "fakepkg/data/prompts.txt"
CONTENT = "".join(f"prompt number {i}\n" for i in range(200)).encode()


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A pinned 'wheel' already in an isolated cache: a zip holding one prompt file."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DELTAGUARD_CACHE_DIR", str(cache))
    wheel = cache / "wheels" / "fakepkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(MEMBER, CONTENT)
        archive.writestr("fakepkg/__init__.py", "")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setattr(assets, "WHEELS", {"fakepkg": WheelAsset("fakepkg", "1.0", digest, "test data")})
    return cache


def _record(path):
    return json.loads(path.with_name(path.name + RECORD_SUFFIX).read_text())


def _rebuilt_warnings(caplog):
    return [r for r in caplog.records if r.name == "deltaguard.assets" and r.levelno == logging.WARNING]


def test_a_member_is_extracted_with_a_record_of_its_size_and_hash(fake_wheel):
    path = wheel_member("fakepkg", MEMBER)
    assert path == fake_wheel / "assets" / "fakepkg-1.0" / MEMBER and path.read_bytes() == CONTENT
    record = _record(path)
    assert record["n_bytes"] == len(CONTENT) and record["sha256"] == hashlib.sha256(CONTENT).hexdigest()
    assert record["quick_sha256"] == record["sha256"]  # small files are hashed whole
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_verified_member_is_used_without_opening_the_wheel(fake_wheel, monkeypatch, caplog):
    path = wheel_member("fakepkg", MEMBER)
    monkeypatch.setattr(assets, "fetch_wheel", lambda name: pytest.fail("the wheel was opened again"))
    with caplog.at_level(logging.WARNING, logger="deltaguard.assets"):
        assert wheel_member("fakepkg", MEMBER) == path
    assert not _rebuilt_warnings(caplog)


def test_a_truncated_member_is_extracted_again_with_a_warning(fake_wheel, caplog):
    path = wheel_member("fakepkg", MEMBER)
    path.write_bytes(CONTENT[: len(CONTENT) // 2])
    with caplog.at_level(logging.WARNING, logger="deltaguard.assets"):
        assert wheel_member("fakepkg", MEMBER).read_bytes() == CONTENT
    warnings = _rebuilt_warnings(caplog)
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage() and "truncated" in warnings[0].getMessage()


def test_a_member_edited_to_the_same_size_is_extracted_again(fake_wheel, caplog):
    path = wheel_member("fakepkg", MEMBER)
    path.write_bytes(CONTENT.replace(b"prompt number 7\n", b"PROMPT NUMBER 7\n"))
    assert path.stat().st_size == len(CONTENT)
    with caplog.at_level(logging.WARNING, logger="deltaguard.assets"):
        assert wheel_member("fakepkg", MEMBER).read_bytes() == CONTENT
    warnings = _rebuilt_warnings(caplog)
    assert len(warnings) == 1 and "differs from the wheel's member" in warnings[0].getMessage()


@pytest.mark.parametrize("damage", ["record-missing", "record-not-json", "member-missing"])
def test_a_member_with_a_missing_or_bad_record_is_extracted_again(fake_wheel, caplog, damage):
    path = wheel_member("fakepkg", MEMBER)
    record = path.with_name(path.name + RECORD_SUFFIX)
    if damage == "record-missing":  # as extracted by an older deltaguard: even a partial copy was trusted
        record.unlink()
        path.write_bytes(CONTENT[:10])
    elif damage == "record-not-json":
        record.write_text("{oops")
    else:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="deltaguard.assets"):
        assert wheel_member("fakepkg", MEMBER).read_bytes() == CONTENT
    assert len(_rebuilt_warnings(caplog)) == 1 and str(path) in _rebuilt_warnings(caplog)[0].getMessage()
    assert _record(path)["n_bytes"] == len(CONTENT)


def test_large_files_are_checked_by_size_and_both_4_mib_ends(tmp_path):
    size = (16 << 20) + 12345
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    streamed = QuickDigest(size)
    for start in range(0, size, 1_000_003):  # odd chunk sizes, as when copying out of a zip
        streamed.update(data[start:start + 1_000_003])
    assert streamed.partial and streamed.hexdigest() == quick_digest(path)
    assert quick_digest(path) != hashlib.sha256(data).hexdigest()
    for offset in (0, (4 << 20) - 1, size - (4 << 20), size - 1):  # a change at either end is caught
        changed = bytearray(data)
        changed[offset] ^= 0xFF
        path.write_bytes(changed)
        assert quick_digest(path) != streamed.hexdigest(), offset
    small = tmp_path / "small.bin"
    small.write_bytes(data[: 16 << 20])
    assert quick_digest(small) == hashlib.sha256(data[: 16 << 20]).hexdigest()


# ---- converted models -------------------------------------------------------------------------------


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DELTAGUARD_CACHE_DIR", str(cache))
    return cache / "models"


def _saved_tiny(path):
    save_model(make_tiny_llama(seed=0), None, path)
    models._write_model_record(path)
    return path


def test_the_model_record_lists_every_file_and_verifies(model_cache):
    path = _saved_tiny(model_cache / "tiny")
    record = json.loads((path / MODEL_RECORD).read_text())
    assert set(record["files"]) == {p.name for p in path.iterdir()} - {MODEL_RECORD}
    assert record["files"]["model.safetensors"]["n_bytes"] == (path / "model.safetensors").stat().st_size
    assert models._model_record_problem(path) is None
    assert models._verified_conversion(path) and path.is_dir()


@pytest.mark.parametrize("damage,message", [
    ("truncate", "model.safetensors is 1000 bytes"),
    ("edit", "model.safetensors differs from what was converted"),
    ("remove", "config.json is missing"),
    ("extra", "extra.safetensors was not written by the conversion"),
    ("no-record", "has no deltaguard-model.json"),
])
def test_a_damaged_converted_model_is_named_and_removed(model_cache, caplog, damage, message):
    path = _saved_tiny(model_cache / "tiny")
    weights = path / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "edit":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(data)
    elif damage == "remove":
        (path / "config.json").unlink()
    elif damage == "extra":
        (path / "extra.safetensors").write_bytes(b"{}")
    else:
        (path / MODEL_RECORD).unlink()
    assert message in models._model_record_problem(path)
    with caplog.at_level(logging.WARNING, logger="deltaguard.models"):
        assert not models._verified_conversion(path)
    assert not path.exists()
    assert any(str(path) in r.getMessage() and message in r.getMessage() for r in caplog.records)


def test_a_users_own_model_directory_is_never_touched(model_cache, tmp_path):
    user_dir = tmp_path / "mine"
    save_model(make_tiny_llama(seed=0), None, user_dir)  # no record: not made by a conversion
    assert models._verified_conversion(user_dir)
    assert (user_dir / "model.safetensors").is_file() and not (user_dir / MODEL_RECORD).exists()


@pytest.fixture
def fake_conversion(model_cache, tmp_path, monkeypatch):
    """pull_model with the GGUF extraction and conversion replaced by a tiny model (no download, no GGUF)."""
    calls = []
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "wheel_member", lambda asset, member: gguf)

    def convert(gguf_path, *, target=None):
        calls.append(target)
        models._save_converted(make_tiny_llama(seed=0), None, target)
        return target

    monkeypatch.setattr(models, "convert_gguf", convert)
    return calls


def test_pull_model_reuses_a_verified_conversion(fake_conversion, model_cache):
    first = models.pull_model("smollm2-135m-instruct")
    assert first == model_cache / "smollm2-135m-instruct" and (first / MODEL_RECORD).is_file()
    assert models.pull_model("smollm2-135m-instruct") == first
    assert len(fake_conversion) == 1


def test_pull_model_rebuilds_a_truncated_conversion(fake_conversion, caplog):
    path = models.pull_model("smollm2-135m-instruct")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="deltaguard.models"):
        assert models.pull_model("smollm2-135m-instruct") == path
    assert len(fake_conversion) == 2
    assert models._model_record_problem(path) is None
    assert any("model.safetensors" in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)


def test_pull_model_rebuilds_a_conversion_without_a_record(fake_conversion, model_cache):
    legacy = model_cache / "smollm2-135m-instruct"
    save_model(make_tiny_llama(seed=0), None, legacy)  # as converted by an older deltaguard
    assert models.pull_model("smollm2-135m-instruct") == legacy
    assert len(fake_conversion) == 1 and (legacy / MODEL_RECORD).is_file()


def test_a_recorded_conversion_is_named_by_its_content_so_a_moved_cache_keeps_its_keys(model_cache, tmp_path,
                                                                                      monkeypatch):
    path = _saved_tiny(model_cache / "tiny")
    record = json.loads((path / MODEL_RECORD).read_text())
    assert record["files"]["model.safetensors"]["sha256"] == sha256_file(path / "model.safetensors")
    here = models.model_identity(path)
    moved_cache = tmp_path / "moved"
    shutil.copytree(model_cache.parent, moved_cache)   # a new mtime and a new place, the same bytes
    monkeypatch.setenv("DELTAGUARD_CACHE_DIR", str(moved_cache))
    assert models.model_identity(moved_cache / "models" / "tiny") == here
    other = moved_cache / "models" / "other-weights"
    save_model(make_tiny_llama(seed=1), None, other)
    models._write_model_record(other)
    assert models.model_identity(other) != here   # other weights, another name


def test_other_directories_are_named_by_place_and_file_stats(model_cache, tmp_path):
    user_dir = tmp_path / "mine"
    save_model(make_tiny_llama(seed=0), None, user_dir)   # outside the models cache: never hashed
    copy = tmp_path / "copy"
    shutil.copytree(user_dir, copy)
    assert models.model_identity(user_dir) != models.model_identity(copy)
    old_record = _saved_tiny(model_cache / "old-record")   # a record from before full digests: as before
    record = json.loads((old_record / MODEL_RECORD).read_text())
    for entry in record["files"].values():
        entry.pop("sha256", None)
    (old_record / MODEL_RECORD).write_text(json.dumps(record))
    assert models._model_record_problem(old_record) is None
    assert models.model_identity(old_record) == content_key("model", {
        "dir": str(old_record.resolve()),
        "weights": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in old_record.glob("*.safetensors")]})
    weights = old_record / "model.safetensors"   # rewritten in place: a new key, never a stale cache
    before = models.model_identity(old_record)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert models.model_identity(old_record) != before
