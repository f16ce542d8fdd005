"""``deltaguard map``: the mitigation map (alignment depth × attack strength × compression, per threat and family)."""

from __future__ import annotations

from pathlib import Path

import typer

from deltaguard.cli.app import DEVICE_HELP, DTYPE_HELP, JSON_HELP, app, check_device, console, print_json
from deltaguard.cli.outputs import prepare_run_dir
from deltaguard.errors import ConfigError


def _names(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


@app.command("map")
def map_cmd(
    out: Path = typer.Option(..., "-o", "--out", help="run directory (rerun to resume; the demo's directory reuses "
                                                      "its models)"),
    profile: str = typer.Option("default", "--profile",
                                help="default (2 depths × 2 strengths × 6 compressions, harmful, ~1 h on a 2-core CPU) "
                                     "or full (both families, 3 threats, every compressor family: a GPU job)"),
    families: str | None = typer.Option(None, "--families", help="comma-separated models (e.g. smollm2-135m-instruct,"
                                                                 "gemma3-270m); default: the profile's"),
    threats: str | None = typer.Option(None, "--threats", help="comma-separated threats; default: the profile's"),
    methods: str | None = typer.Option(None, "--methods", help="comma-separated compression specs; default: the "
                                                               "profile's"),
    overrides: list[str] = typer.Option([], "--set", help="map field=value, repeatable (e.g. --set n_prompts=100, "
                                                          "--set \"align_levels=light: epochs=1,demo:\")"),
    workers: int = typer.Option(1, "--workers", help="local worker processes (each gets cores ÷ workers threads)"),
    ray: str | None = typer.Option(None, "--ray", help="run the cells as Ray tasks on the cluster at ADDRESS "
                                                       "(ray://host:10001, auto, or local); needs deltaguard[ray]"),
    ray_cpus: int = typer.Option(2, "--ray-cpus", help="CPUs Ray gives each task"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    force: bool = typer.Option(False, "--force", help="discard the run directory's cached results and start over"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Map where compressing a fine-tune's delta keeps safety: align at each depth, attack at each strength,
    audit every compression, and report mitigation heatmaps, its relation to the attack/alignment norm ratio
    and, per threat, whether any cell reproduces the seed's claim."""
    from deltaguard.mitigation import map_profile, run_map
    from deltaguard.mitigation.executors import LocalExecutor, RayExecutor
    from deltaguard.models import resolve_model_dir

    config = map_profile(profile)
    changes = {k: v for k, v in (("families", _names(families)), ("threats", _names(threats)),
                                 ("methods", _names(methods))) if v is not None}
    if changes or overrides:
        config = config.replace(profile="custom", **changes).with_overrides(overrides)
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1")
    if ray is not None and workers != 1:
        raise ConfigError("--workers and --ray exclude each other: Ray decides where tasks run (--ray-cpus per task)")
    check_device(device, dtype)
    for family in config.families:
        resolve_model_dir(family)   # a missing model fails before any work
        if (responder := config.responder(family)) is not None:
            resolve_model_dir(responder)
    prepare_run_dir(out, force=force)
    executor = (RayExecutor(ray, cpus=ray_cpus, gpus=1.0 if device.startswith("cuda") else 0.0) if ray is not None
                else LocalExecutor(workers))
    console.print(f"profile {config.profile}; run directory {out} (finished cells are reused)", highlight=False)
    result = run_map(config, out, executor=executor, device=device, dtype=dtype,
                     log=lambda line: console.print(line, highlight=False, markup=False))
    if as_json:
        print_json(result)
        return
    from deltaguard.mitigation.summary import finding_text, findings

    for finding in findings(result):
        console.print(finding_text(finding), highlight=False, markup=False)
    console.print(f"wrote {out / 'map.html'}, {out / 'map.md'} and {out / 'map.json'} ({result['seconds'] / 60:.1f} min)")
