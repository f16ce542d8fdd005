"""``deltaguard compress | merge | inspect``: the delta verbs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from deltaguard import delta as delta_api
from deltaguard.cli.app import app, console
from deltaguard.errors import ConfigError


def calibration_texts(spec: str, *, limit: int, tokenizer_source: str | Path) -> list[str]:
    """Calibration text from a .txt file (one text per line) or a named prompt set (chat-formatted)."""
    path = Path(spec)
    if path.suffix == ".txt":
        if not path.is_file():
            raise ConfigError(f"calibration file {path} does not exist")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ConfigError(f"calibration file {path} holds no text")
        return lines[:limit]
    from deltaguard.data import load_prompts
    from deltaguard.models import chat_prompt, load_tokenizer

    prompts = load_prompts(spec, split="calib", limit=limit)
    tokenizer = load_tokenizer(tokenizer_source)
    return [chat_prompt(tokenizer, p.text) for p in prompts.prompts]


@app.command()
def compress(
    base: str = typer.Option(..., "--base", help="base model: embedded name, HF dir, .gguf or hub id"),
    finetuned: str = typer.Option(..., "--finetuned", help="fine-tuned model of the same architecture"),
    method: str = typer.Option("bitdelta", "--method", help="bitdelta, bitdelta-k2, kbit4, lowrank16, mixed, dare, compeft, ..."),
    out: Path = typer.Option(..., "-o", "--out", help="output delta directory"),
    distill: bool | None = typer.Option(None, "--distill/--no-distill", help="BitDelta scale distillation (default on)"),
    calib: str = typer.Option("calib-chat", "--calib", help="calibration text: a prompt set name or a .txt file"),
    calib_limit: int = typer.Option(256, "--calib-limit", help="at most this many calibration texts"),
    overrides: list[str] = typer.Option([], "--set", help="method field=value, repeatable (e.g. --set distill_steps=50)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory"),
) -> None:
    """Compress a fine-tune as a delta over its base, print sizes and errors, save the delta."""
    config = delta_api.method_from_spec(method)
    if distill is not None:
        if config.name != "bitdelta":
            raise ConfigError(f"--distill/--no-distill applies to bitdelta, not {config.name}")
        overrides = [f"distill={distill}", *overrides]
    config = config.with_overrides(overrides)
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists (pass --force to replace it)")
    delta = delta_api.extract_delta(base, finetuned)
    texts = None
    if getattr(config, "distill", False):
        texts = calibration_texts(calib, limit=calib_limit, tokenizer_source=base)
    packed = delta_api.compress(delta, config, calib=texts)
    console.print(packed.report.table())
    console.print(f"saved {packed.save(out, overwrite=force)}")


@app.command()
def merge(
    base: str = typer.Option(..., "--base", help="the base the delta was made from"),
    delta: Path = typer.Option(..., "--delta", help="compressed delta directory"),
    out: Path = typer.Option(..., "-o", "--out", help="output Hugging Face directory"),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory"),
) -> None:
    """Write base + decompressed delta as a Hugging Face model directory."""
    with console.status("merging"):
        path = delta_api.merge(base, delta, out, overwrite=force)
    console.print(f"saved {path}")


@app.command()
def inspect(delta: Path = typer.Argument(..., help="compressed delta directory"),
            rows: int = typer.Option(12, "--rows", help="per-tensor rows to show (worst first)")) -> None:
    """Sizes, bits per parameter, compression ratios and per-matrix errors of a compressed delta."""
    packed = delta_api.load_delta(delta)
    console.print(packed.report.table(max_rows=rows))
    info = Table("field", "value", title="provenance")
    info.add_row("method", str(packed.config.to_dict()["fields"]))
    info.add_row("base", f"{packed.meta.get('base', {}).get('source')} ({packed.base_fingerprint[:28]}…)")
    info.add_row("fine-tune", str(packed.meta.get("finetuned", {}).get("source")))
    if calibration := packed.meta.get("calibration"):
        info.add_row("calibration", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in calibration.items()))
    console.print(info)
