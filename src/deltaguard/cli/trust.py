"""``deltaguard trust``: the compressed-trust sweep (method × trust dimension)."""

from __future__ import annotations

from pathlib import Path

import typer

from deltaguard.cli.app import DEVICE_HELP, DTYPE_HELP, JSON_HELP, app, check_device, console, print_json
from deltaguard.cli.eval import CONCURRENCY_HELP, ENDPOINT_HELP, endpoint_source
from deltaguard.cli.outputs import prepare_run_dir
from deltaguard.errors import ConfigError
from deltaguard.models import DEFAULT_MODEL


def parse_methods(value: str) -> tuple[str, ...]:
    """``--methods``: comma-separated specs; ``none`` (or nothing) means only the model itself is scored."""
    specs = tuple(m.strip() for m in value.split(",") if m.strip())
    return () if specs == ("none",) else specs


@app.command("trust")
def trust_cmd(
    ctx: typer.Context,
    model: str = typer.Option(DEFAULT_MODEL, "--model",
                              help="the model to compress (with --base: a fine-tune of it; with --endpoint: the served name)"),
    endpoint: str | None = typer.Option(None, "--endpoint",
                                        help=ENDPOINT_HELP + "; nothing can be compressed, so only that model is scored "
                                             "(--methods none)"),
    concurrency: int = typer.Option(4, "--concurrency", help=CONCURRENCY_HELP),
    base: str | None = typer.Option(None, "--base",
                                    help="the model --model was fine-tuned from: delta compressors join the sweep"),
    methods: str | None = typer.Option(None, "--methods",
                                       help="comma-separated methods (rtn4,gptq4,gptq3,awq4,wanda-2:4,kbit4,bitdelta,...); "
                                            "default: the profile's"),
    profile: str = typer.Option("default", "--profile", help="default (CPU, ~30 min) or full (the paper's grid, GPU)"),
    seeds: str | None = typer.Option(None, "--seeds", help="calibration seeds, e.g. 0,1,2 (default: the profile's)"),
    out: Path = typer.Option(..., "-o", "--out", help="run directory (rerun to resume)"),
    overrides: list[str] = typer.Option([], "--set", help="trust field=value, repeatable (e.g. --set n_prompts=32)"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    force: bool = typer.Option(False, "--force", help="discard the run directory's cached results and start over"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Compress a model every way and score toxicity, stereotypes, jailbreaks, privacy, truthfulness and
    fairness of each variant, with refusal rates, drops from the uncompressed model and flags.

    With --endpoint URL --model NAME only the served model is scored (its weights are not here to compress)."""
    from deltaguard.models import resolve_model_dir
    from deltaguard.trust import run_trust, trust_profile
    from deltaguard.trust.run import check_methods

    remote = endpoint_source(ctx, endpoint, model, concurrency) if endpoint is not None else None
    if remote is not None:
        if base is not None:
            raise ConfigError("--base cannot be used with --endpoint: deltaguard does not hold the served model's "
                              "weights, so no delta can be made from it")
        if methods is not None and parse_methods(methods):
            raise ConfigError(f"--methods {methods} cannot run on a model behind --endpoint: deltaguard does not hold "
                              "its weights (only the served model is scored; omit --methods or pass --methods none)")
    config = trust_profile(profile, with_base=base is not None)
    changes: dict[str, object] = {}
    if methods is not None:
        changes["methods"] = parse_methods(methods)
    if remote is not None:
        changes["methods"] = ()
    if seeds is not None:
        try:
            changes["seeds"] = tuple(int(s) for s in seeds.split(",") if s.strip())
        except ValueError:
            raise ConfigError(f"--seeds {seeds!r} must be comma-separated integers") from None
    if changes or overrides:
        config = config.replace(profile="custom", **changes).with_overrides(overrides)
    check_methods(config, has_base=base is not None)
    check_device(device, dtype)
    if remote is None:
        resolve_model_dir(model)
    if base is not None:
        resolve_model_dir(base)
    prepare_run_dir(out, force=force)
    what = (f"{model} at {remote.base_url} (an endpoint: no compression methods)" if remote is not None
            else f"profile {config.profile}: {len(config.methods)} methods × seeds {list(config.seeds)}")
    console.print(f"{what}, {config.n_prompts} prompts per dimension; run directory {out} (finished steps are reused)",
                  highlight=False, markup=False)
    result = run_trust(remote if remote is not None else model, config, run_dir=out, base=base, device=device, dtype=dtype,
                       log=lambda line: console.print(line, highlight=False, markup=False))
    if as_json:
        print_json(result)
        return
    from rich.markdown import Markdown

    console.print(Markdown((out / "trust.md").read_text(encoding="utf-8")))
    console.print(f"wrote {out / 'trust.md'}, {out / 'trust.png'} and {out / 'trust.json'} "
                  f"({result['seconds']:.0f}s, {result['n_steps_run']} steps run)")
