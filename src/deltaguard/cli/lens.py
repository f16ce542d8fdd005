"""``deltaguard lens``: where refusal forms across layers, per model, base + delta included."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from deltaguard.cli.app import DEVICE_HELP, app, check_device, console


@app.command("lens")
def lens(
    model: list[str] = typer.Option([], "--model", "-m",
                                    help="Model spec (embedded name, HF dir, .gguf); repeatable. Default: the "
                                         "embedded SmolLM2. The first model is the base for --delta."),
    delta: list[str] = typer.Option([], "--delta", "-d",
                                    help="Compressed delta directory; adds base + delta (merged in memory). Repeatable."),
    prompts: str = typer.Option("advbench:eval", "--prompts", "-p",
                                help="Prompt set (name[:split]) or a .txt file with one prompt per line."),
    limit: int = typer.Option(32, "--limit", "-n", help="Number of prompts."),
    target: list[str] = typer.Option([], "--target",
                                     help="A target answer whose first token is measured (e.g. a backdoor's); repeatable."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (CSV, JSON, PNG)."),
    overrides: list[str] = typer.Option([], "--set", help="LensConfig field=value, repeatable (e.g. positions=all)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (the exactness check is to 1e-4), bfloat16, float16."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    overwrite: bool = typer.Option(False, "--force", "--overwrite", help="Replace an existing output directory."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Write CSV/JSON only."),
) -> None:
    """Logit lens: decode every layer at the answer position; refusal margin per layer and model."""
    from deltaguard.lens.config import LensConfig
    from deltaguard.lens.run import lens_models, plan_models, read_prompts, save_lens_dir
    from deltaguard.models import DEFAULT_MODEL, set_threads

    config = LensConfig().with_overrides(list(overrides))
    if target:
        config = config.replace(targets=(*config.targets, *target))
    check_device(device, dtype)
    set_threads(threads)
    from deltaguard.cli.outputs import check_artifact

    check_artifact(out, force=overwrite)
    plan = plan_models(model or [DEFAULT_MODEL], delta)
    prompt_set = read_prompts(prompts, limit=limit, seed=config.seed)
    result = lens_models(plan, prompt_set, config, dtype=dtype, device=device)
    paths = save_lens_dir(result, out, overwrite=overwrite, plots=not no_plots)

    table = Table(title=f"logit lens on {prompts} ({len(result.prompt_ids)} prompts, answer position)")
    table.add_column("model", overflow="fold")
    for header in ("n", "last-layer margin [95% CI]", "refusal favoured", "first layer > 0 (mean)", "check |diff|"):
        table.add_column(header, justify="right")
    checks = {c.model: c for c in result.checks}
    for s in result.summaries():
        first = "-" if s.mean_first_positive_depth is None else f"{s.mean_first_positive_depth:.1f} ({s.n_ever_positive}/{s.n})"
        table.add_row(s.model, str(s.n), f"{s.final_margin_mean:+.2f} [{s.final_margin_low:+.2f}, {s.final_margin_high:+.2f}]",
                      f"{s.frac_refusal_favoured:.0%}", first, f"{checks[s.model].last_layer_max_abs_diff:.1e}")
    console.print(table)
    console.print(f"wrote {len(paths)} files to {out}")
