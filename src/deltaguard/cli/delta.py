"""``deltaguard compress | merge | inspect``: the delta verbs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from deltaguard import delta as delta_api
from deltaguard.cli.app import DEVICE_HELP, JSON_HELP, app, check_device, console, err_console, print_json
from deltaguard.cli.outputs import check_artifact
from deltaguard.errors import ConfigError


@app.command()
def compress(
    base: str = typer.Option(..., "--base", help="base model: embedded name, HF dir, .gguf or hub id"),
    finetuned: str = typer.Option(..., "--finetuned", help="fine-tuned model of the same architecture"),
    method: str = typer.Option(delta_api.BitDeltaConfig.name, "--method",
                               help="method label (deltaguard list compressors): " + ", ".join(delta_api.default_methods())
                                    + ", or any label with settings (bitdelta-k3, kbit2, lowrank64, dare-p0.5, ...)"),
    out: Path = typer.Option(..., "-o", "--out", help="output delta directory"),
    calibrate: bool | None = typer.Option(None, "--calibrate/--no-calibrate", "--distill/--no-distill",
                                          help="run the method's calibration step (BitDelta: scale distillation; "
                                               "default on for methods that have one)"),
    calib: str = typer.Option("calib-chat", "--calib", help="calibration text: a prompt set name or a .txt file"),
    calib_limit: int = typer.Option(256, "--calib-limit", help="at most this many calibration texts"),
    overrides: list[str] = typer.Option([], "--set", help="method field=value, repeatable (e.g. --set distill_steps=50)"),
    device: str = typer.Option("cpu", "--device", help=f"calibration runs here; {DEVICE_HELP}"),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory"),
) -> None:
    """Compress a fine-tune as a delta over its base, print sizes and errors, save the delta."""
    from deltaguard.data.calibration import calibration_texts
    from deltaguard.models import load_tokenizer

    config = delta_api.method_from_spec(method).with_overrides(overrides)
    if calibrate is False:
        config = config.without_calibration()
    elif calibrate and not config.needs_calibration:
        raise ConfigError(f"{config.label} has no calibration step to run (drop --calibrate)")
    check_device(device)
    if calib_limit < 1:
        raise ConfigError(f"--calib-limit={calib_limit} must be >= 1")
    check_artifact(out, force=force)
    calibration = None
    if config.needs_calibration:  # read the calibration text before the (long) compression starts
        texts = calibration_texts(calib, tokenizer=load_tokenizer(base), limit=calib_limit)
        calibration = delta_api.Calibration(tuple(texts), device=device)
    delta = delta_api.extract_delta(base, finetuned)
    packed = delta_api.compress(delta, config, calib=calibration)
    console.print(packed.report.table())
    if packed.tensors and not any(t.kind == "linear" for t in packed.tensors.values()):
        from deltaguard.delta.compress import nothing_compressed_message

        err_console.print(f"[bold yellow]warning:[/] {nothing_compressed_message(config)}", highlight=False,
                          soft_wrap=True)
    console.print(f"saved {packed.save(out, overwrite=force)}")


@app.command()
def merge(
    base: str = typer.Option(..., "--base", help="the base the delta was made from"),
    delta: Path = typer.Option(..., "--delta", help="compressed delta directory"),
    out: Path = typer.Option(..., "-o", "--out", help="output Hugging Face directory"),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory"),
) -> None:
    """Write base + decompressed delta as a Hugging Face model directory."""
    check_artifact(out, force=force)
    with console.status("merging"):
        path = delta_api.merge(base, delta, out, overwrite=force)
    console.print(f"saved {path}")


@app.command()
def inspect(delta: Path = typer.Argument(..., help="compressed delta directory"),
            rows: int = typer.Option(12, "--rows", help="per-tensor rows to show (worst first)"),
            as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Sizes, bits per parameter, compression ratios and per-matrix errors of a compressed delta."""
    packed = delta_api.load_delta(delta)  # verifies the manifest, every checksum, shape and finite value
    if as_json:
        print_json({"path": str(delta), "method": packed.config.to_dict(), "label": packed.config.label,
                    "base_fingerprint": packed.base_fingerprint, "base": packed.meta.get("base"),
                    "finetuned": packed.meta.get("finetuned"), "calibration": packed.meta.get("calibration"),
                    "summary": packed.report.summary(),
                    "tensors": {name: {"kind": t.kind, "encoding": t.encoding, "shape": list(t.shape),
                                       **t.stats.to_dict()} for name, t in packed.tensors.items()}})
        return
    console.print(packed.report.table(max_rows=rows))
    info = Table("field", "value", title="provenance")
    info.add_row("method", str(packed.config.to_dict()["fields"]))
    info.add_row("base", f"{packed.meta.get('base', {}).get('source')} ({packed.base_fingerprint[:28]}…)")
    info.add_row("fine-tune", str(packed.meta.get("finetuned", {}).get("source")))
    if calibration := packed.meta.get("calibration"):
        info.add_row("calibration", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in calibration.items()))
    console.print(info)
