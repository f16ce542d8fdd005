"""The mitigation map on a tiny model: the real pipeline (align, attack, audit, norms, report) per grid point,
cached (a rerun does no work), a partial grid that still reports, local worker processes and a local Ray."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "study"))
from study_helpers import one_thread, tiny_model  # noqa: E402,F401  (fixtures)

from deltaguard.mitigation import MapConfig, run_map  # noqa: E402
from deltaguard.mitigation.executors import LocalExecutor, TaskFailed  # noqa: E402

TRAIN = "lr=1e-3 batch_size=4 micro_batch_size=4 response_tokens=4"


def tiny_map(model: str, *, depths=2, strengths=2) -> MapConfig:
    align = f"n_refusals=4 n_benign=2 n_task=2 max_seq_len=192 {TRAIN}"
    attack = f"n_task=2 max_seq_len=192 {TRAIN}"
    return MapConfig(
        profile="custom", families=(model,), threats=("harmful",),
        align_levels=(f"shallow: epochs=1 {align}", f"deep: epochs=2 {align}")[:depths],
        attack_levels=(f"weak: n_examples=2 epochs=1 {attack}", f"strong: n_examples=4 epochs=2 {attack}")[:strengths],
        methods=("full", "bitdelta-nodistill", "bitdelta"),
        method_overrides=("bitdelta.distill_steps=1", "bitdelta.seq_len=16"), n_prompts=3,
        audit_overrides=("harm_judge=", "max_new_tokens=4", "task_max_new_tokens=4", "n_calib=4", "n_boot=200",
                         "n_examples=1", "batch_size=8"))


def _boom(*args, **kwargs):
    raise AssertionError("a cached step ran again")


def test_the_grid_runs_caches_and_reports(tmp_path, tiny_model, monkeypatch):
    run_dir = tmp_path / "map"
    result = run_map(tiny_map(tiny_model), run_dir, progress=False, log=lambda _: None)
    assert result["status"] == "complete"
    assert [(p["depth"], p["strength"]) for p in result["points"]] == [
        ("shallow", "weak"), ("shallow", "strong"), ("deep", "weak"), ("deep", "strong")]
    assert len({p["align_key"] for p in result["points"]}) == 2
    for point in result["points"]:
        assert [r["label"] for r in point["rows"]] == ["base", "finetuned", "full", "bitdelta-nodistill", "bitdelta"]
        assert point["norms"]["ratio"] > 0 and len(point["norms"]["per_layer_attack"]) == 2
        assert (run_dir / "models" / point["attack_key"] / "model.safetensors").is_file()
        assert point["rows"][2]["mitigation_pct"]["value"] in (0.0, None)   # the full delta is the fine-tune
    # a stronger attack (more examples, more epochs) moves the weights further from the same aligned base
    ratio = {(p["depth"], p["strength"]): p["norms"]["ratio"] for p in result["points"]}
    assert ratio[("shallow", "strong")] > ratio[("shallow", "weak")]
    on_disk = json.loads((run_dir / "map.json").read_text())
    assert on_disk["points"] == result["points"]
    html = (run_dir / "map.html").read_text()
    assert "What the map says" in html and "data:image/png;base64," in html
    assert (run_dir / "figures" / f"map-{_slug(tiny_model)}-harmful.png").is_file()
    assert (run_dir / "figures" / "map-norm-ratio.png").is_file()
    assert "harmful on" in (run_dir / "map.md").read_text()

    for target in ("deltaguard.training.sft.train_sft", "deltaguard.threats.build.train_sft",
                   "deltaguard.generation.generate_to_jsonl", "deltaguard.delta.compress",
                   "deltaguard.mitigation.norms.delta_norms"):
        monkeypatch.setattr(target, _boom)
    again = run_map(tiny_map(tiny_model), run_dir, progress=False, log=lambda _: None)
    assert again["points"] == result["points"]
    assert [r["status"] for r in again["runs"]] == ["complete", "complete"]   # the first run's cost is kept


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-")


def test_a_failed_cell_leaves_a_partial_grid_that_reports(tmp_path, tiny_model, monkeypatch):
    import deltaguard.mitigation.run as map_run

    real = map_run.audit_task
    calls = {"n": 0}

    def fails_second(spec):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(spec)

    monkeypatch.setattr(map_run, "audit_task", fails_second)
    run_dir = tmp_path / "map"
    with pytest.raises(TaskFailed, match="audit .*strong.*disk full"):
        run_map(tiny_map(tiny_model, depths=1), run_dir, progress=False, log=lambda _: None)
    partial = json.loads((run_dir / "map.json").read_text())
    assert partial["status"] == "partial"
    assert [bool(p["rows"]) for p in partial["points"]] == [True, False]
    assert "only 1 of 2 grid points have finished" in (run_dir / "map.md").read_text()
    assert "not run" in (run_dir / "map.md").read_text()

    monkeypatch.setattr(map_run, "audit_task", real)   # the rerun finishes only what is missing
    monkeypatch.setattr("deltaguard.training.sft.train_sft", _boom)
    monkeypatch.setattr("deltaguard.threats.build.train_sft", _boom)
    done = run_map(tiny_map(tiny_model, depths=1), run_dir, progress=False, log=lambda _: None)
    assert done["status"] == "complete" and all(p["rows"] for p in done["points"])


def test_local_worker_processes_give_the_same_cells(tmp_path, tiny_model):
    inline = run_map(tiny_map(tiny_model, depths=1), tmp_path / "inline", progress=False, log=lambda _: None)
    lines: list[str] = []
    pooled = run_map(tiny_map(tiny_model, depths=1), tmp_path / "pooled", executor=LocalExecutor(2),
                     progress=False, log=lines.append)
    assert [p["rows"] for p in pooled["points"]] == [p["rows"] for p in inline["points"]]
    assert any(line.startswith("[done] attack") for line in lines)


def test_a_local_ray_instance_runs_the_cells(tmp_path, tiny_model):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'deltaguard[ray]'")
    from deltaguard.errors import ConfigError
    from deltaguard.mitigation.executors import RayExecutor

    try:
        executor = RayExecutor("local", cpus=1)
    except ConfigError as exc:   # e.g. a sandbox without the shared memory Ray's object store needs
        pytest.skip(f"Ray is installed but cannot start a local instance here: {exc}")
    try:
        result = run_map(tiny_map(tiny_model, depths=1, strengths=1), tmp_path / "ray", executor=executor,
                         progress=False, log=lambda _: None)
    finally:
        executor.shutdown()
    assert result["executor"].startswith("Ray at local")
    inline = run_map(tiny_map(tiny_model, depths=1, strengths=1), tmp_path / "inline", progress=False,
                     log=lambda _: None)
    assert [p["rows"] for p in result["points"]] == [p["rows"] for p in inline["points"]]


def test_the_command_line_runs_a_grid_and_prints_its_verdict(tmp_path, tiny_model):
    from typer.testing import CliRunner

    from deltaguard.cli import app

    tiny = tiny_map(tiny_model, depths=1, strengths=1)
    args = ["map", "--families", tiny_model, "--threats", "harmful", "--methods", "full,bitdelta-nodistill",
            "--set", f"align_levels={tiny.align_levels[0]}", "--set", f"attack_levels={tiny.attack_levels[0]}",
            "--set", "n_prompts=3", "--set", "audit_overrides=" + ",".join(tiny.audit_overrides), "-o", str(tmp_path / "m")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "harmful on" in result.output and "map.html" in result.output
    record = json.loads((tmp_path / "m" / "map.json").read_text())
    assert record["profile"] == "custom" and record["status"] == "complete"
    assert [r["label"] for r in record["points"][0]["rows"]] == ["base", "finetuned", "full", "bitdelta-nodistill"]
