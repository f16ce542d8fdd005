"""``deltaguard export``: a compressed delta in a serving engine's adapter format (PEFT LoRA for now)."""

from __future__ import annotations

from pathlib import Path

import typer

from deltaguard.cli.app import JSON_HELP, app, console, print_json
from deltaguard.cli.outputs import check_artifact
from deltaguard.errors import ConfigError

FORMATS = ("peft",)


@app.command()
def export(
    delta: Path = typer.Option(..., "--delta", help="compressed delta directory"),
    fmt: str = typer.Option("peft", "--format", help="adapter format: peft (a LoRA adapter PEFT and vLLM load)"),
    rank: int | None = typer.Option(None, "--rank", help="LoRA rank; required unless the delta is low-rank factors "
                                                         "(lowrank, mixed), which export exactly at their own rank"),
    base: str | None = typer.Option(None, "--base", help="recorded as base_model_name_or_path (default: the base "
                                                         "the delta records)"),
    drop_non_linear: bool = typer.Option(False, "--drop-non-linear",
                                         help="export without the deltas of norms, embeddings and the head "
                                              "(a LoRA adapter cannot carry them; else they are refused)"),
    out: Path = typer.Option(..., "-o", "--out", help="output adapter directory"),
    rows: int = typer.Option(12, "--rows", help="per-matrix rows to show (worst first)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Export a compressed delta as a PEFT LoRA adapter (vLLM multi-LoRA); print the error per matrix."""
    if fmt.strip().lower() not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not supported; choose one of: {', '.join(FORMATS)}")
    if rank is not None and rank < 1:
        raise ConfigError(f"--rank must be a positive integer, got {rank}")
    check_artifact(out, force=force)
    from deltaguard.delta.export import export_peft

    report = export_peft(delta, out, rank=rank, base=base, drop_non_linear=drop_non_linear, overwrite=force)
    if as_json:
        print_json(report.to_dict())
        return
    console.print(report.table(max_rows=rows))
    console.print(f"saved {report.out_dir}")
