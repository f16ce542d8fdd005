"""Atomic writes: permissions follow the umask, --force over a file leaves nothing, dead writers' temps are swept."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from deltaguard.io import _HOST, _UMASK, atomic_dir, atomic_write, sweep_leftovers


def test_written_files_and_directories_follow_the_umask(tmp_path):
    """mkstemp/mkdtemp alone give 0600/0700: a serving account could not read a delta another user wrote."""
    with atomic_write(tmp_path / "f.json") as handle:
        handle.write("{}")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner").write_text("x")
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~_UMASK
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~_UMASK
    if not _UMASK & 0o044:  # the usual 022 umask: others may read
        assert (tmp_path / "f.json").stat().st_mode & 0o044 and (tmp_path / "d").stat().st_mode & 0o055


def test_overwriting_a_file_with_a_directory_leaves_no_trash(tmp_path):
    target = tmp_path / "out"
    target.write_text("an old file")
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "x").write_text("new")
    assert (target / "x").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_temps_of_a_killed_writer_are_swept_but_not_those_of_live_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    stale_dir = tmp_path / f".model.{_HOST}.{dead_pid}.abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"x" * 100)
    stale_file = tmp_path / f".model.{_HOST}.{dead_pid}.xyz.tmp"
    stale_file.write_text("half")
    stale_trash = tmp_path / f".model.old-{_HOST}.{dead_pid}"
    stale_trash.mkdir()
    live = tmp_path / f".model.{_HOST}.{os.getpid()}.live.tmp"
    live.mkdir()
    other_host = tmp_path / f".model.elsewhere.{dead_pid}.abc.tmp"
    other_host.mkdir()
    unrelated = tmp_path / ".model-notes"
    unrelated.write_text("mine")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"model", live.name, other_host.name, unrelated.name}
    assert sweep_leftovers(tmp_path / "model") == []
