"""Hub model specs: ``org/name@revision`` reaches snapshot_download, and the fetched commit can be recorded.

No network: ``huggingface_hub.snapshot_download`` is replaced by a fake that records its arguments and
returns a tiny model laid out like the HF cache (``.../snapshots/<40-hex commit>/``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deltaguard.errors import ModelLoadError
from deltaguard.models import hub_commit, load_model, resolve_model_dir
from tinymodels import make_tiny_llama, save_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """The snapshot directory the fake download returns, and the calls it saw."""
    import huggingface_hub

    snapshot = save_dir(make_tiny_llama(), tmp_path / "hub" / "models--org--name" / "snapshots" / COMMIT)
    calls: list[dict] = []

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None, **kwargs):
        calls.append({"repo_id": repo_id, "revision": revision, **kwargs})
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return snapshot, calls


@pytest.mark.parametrize("spec,revision", [
    ("org/name", None),
    ("org/name@v1.0", "v1.0"),
    (f"org/name@{COMMIT}", COMMIT),
    ("org/name@refs/pr/1", "refs/pr/1"),  # a revision may hold slashes
])
def test_hub_spec_passes_the_revision(fake_hub, spec, revision):
    snapshot, calls = fake_hub
    path = resolve_model_dir(spec)
    assert calls == [{"repo_id": "org/name", "revision": revision}]
    assert path == snapshot
    assert hub_commit(path) == COMMIT  # what a caller records as the exact weights served


def test_hub_model_loads_through_a_pinned_spec(fake_hub):
    model = load_model(f"org/name@{COMMIT}")
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize("spec", ["org/name@", "org/name@ main"])
def test_a_malformed_revision_is_refused_before_any_download(fake_hub, spec):
    _, calls = fake_hub
    with pytest.raises(ModelLoadError, match="revision after '@'"):
        resolve_model_dir(spec)
    assert calls == []


def test_hub_commit_is_none_outside_the_cache_layout(tmp_path):
    assert hub_commit(tmp_path) is None
    assert hub_commit(tmp_path / "snapshots" / "not-a-commit") is None
    assert hub_commit(tmp_path / "other" / COMMIT) is None
    assert hub_commit(Path("snapshots") / COMMIT.upper()) is None  # the cache writes lowercase hex
    assert hub_commit(tmp_path / "snapshots" / COMMIT) == COMMIT
