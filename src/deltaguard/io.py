"""Atomic file writes, canonical JSON and content keys for cached pipeline steps.

A step's output is complete exactly when its final path exists: everything is written to a temporary
name in the same directory, flushed, fsynced and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from deltaguard.errors import FormatError


def _read_umask() -> int:
    """The process umask (read once, at import, before any thread starts: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
_HOST = socket.gethostname().replace(".", "-") or "host"


def _temp_prefix(path: Path) -> str:
    """``.NAME.HOST.PID.``: whose temp this is, so a later writer can tell a dead writer's leftovers."""
    return f".{path.name}.{_HOST}.{os.getpid()}."


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def sweep_leftovers(path: Path) -> list[Path]:
    """Remove temp files and directories a killed writer of ``path`` left beside it (same host, dead PID).

    A save interrupted by SIGKILL cannot clean up after itself; for a merged model that is gigabytes.
    Only names of the form ``.NAME.HOST.PID.*.tmp`` or ``.NAME.old-HOST.PID`` written on this host by a
    process that no longer runs are touched; anything else (another host, a live writer) stays.
    """
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for candidate in (c for c in path.parent.iterdir() if c.name.startswith(prefix)):
        rest = candidate.name[len(path.name) + 2:]
        host, _, tail = rest.removeprefix("old-").partition(".")
        pid_text = tail.split(".", 1)[0]
        is_ours = candidate.name.endswith(".tmp") or rest.startswith("old-")
        if not (is_ours and host == _HOST and pid_text.isdigit()) or _is_alive(int(pid_text)):
            continue
        _remove(candidate)
        removed.append(candidate)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync and rename it to ``path``, else delete it.

    The file gets the permissions the umask gives a new file (``mkstemp`` alone would make it 0600, so a
    serving account could not read a delta another user wrote).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temp name and rename it to ``path`` only when the block succeeds.

    With ``overwrite`` an existing ``path`` (directory or file) is replaced only after the new one is
    complete, so an interrupted run never destroys what the user had. Leftovers of writers of the same
    path that were killed are swept first; the directory gets the umask's permissions.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            trash = path.with_name(f".{path.name}.old-{_HOST}.{os.getpid()}")
            os.replace(path, trash)
            os.replace(tmp, path)
            _remove(trash)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) for hashing settings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def json_text(obj: Any) -> str:
    """Pretty JSON for people and scripts (keys in their order; Paths, sets and configs converted)."""
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def content_key(step: str, payload: Any) -> str:
    """``<step>-<10 hex>``: the name of a step's output, keyed by its inputs and settings."""
    digest = hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:10]
    return f"{step}-{digest}"


def read_text_lines(path: Path, *, what: str) -> list[str]:
    """A text file's non-empty lines, stripped (prompt and calibration files): a missing, binary or empty file
    is a one-line ConfigError naming ``what`` and the path."""
    from deltaguard.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text (a binary file?)") from None
    if not lines:
        raise ConfigError(f"{what} {path} has no non-empty lines")
    return lines


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write pretty JSON."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, ensure_ascii=False, default=_json_default)
        handle.write("\n")
    return Path(path)


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or malformed file into a one-line FormatError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what} {path} is not valid JSON ({exc})") from None


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Atomically write rows as JSON Lines."""
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    return Path(path)


def read_jsonl(path: str | Path, *, what: str = "JSONL file") -> list[dict[str, Any]]:
    """Read JSON Lines; a malformed line raises FormatError naming the line number."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{what} {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise FormatError(f"{what} {path} line {number} is not valid JSON ({exc.msg})") from None
    return rows


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
