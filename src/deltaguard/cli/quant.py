"""``deltaguard realign``: safety-aware quantization of a fine-tune (Q-realign) and its baselines."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from deltaguard.cli.app import DEVICE_HELP, app, check_device, console
from deltaguard.cli.outputs import check_artifact
from deltaguard.errors import ConfigError


@app.command()
def realign(
    model: str = typer.Option(..., "--model", help="the fine-tune to quantize: embedded name, HF dir, .gguf or hub id"),
    reference: str = typer.Option(None, "--reference",
                                  help="the aligned model whose safety probes the quantization restores (qrealign)"),
    out: Path = typer.Option(..., "-o", "--out", help="output directory for the quantized model"),
    method: str = typer.Option("qrealign-w8a8", "--method",
                               help="qrealign-<scheme>, or a baseline: omniquant-<scheme> (no safety term), "
                                    "rtn-<scheme> (round-to-nearest); schemes: w8a8, w4a16, w4a8, w4a4 (experimental)"),
    overrides: list[str] = typer.Option([], "--set", help="method field=value, repeatable (e.g. --set epochs_second=15)"),
    device: str = typer.Option("cpu", "--device", help=f"calibration runs here; {DEVICE_HELP}"),
    diagnose: bool = typer.Option(True, "--diagnose/--no-diagnose",
                                  help="read the aligned model's probes on held-out prompts for the aligned, "
                                       "fine-tuned and realigned models (diagnostics.json / .png)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory"),
) -> None:
    """Quantize a fine-tune block by block while pulling harmful prompts back to the aligned model's safety
    probes (Q-realign), and save the packed model with its probes and per-block record."""
    from deltaguard.eval.variants import ModelDir
    from deltaguard.quant.diagnose import quantize_and_save
    from deltaguard.transforms import transform_from_spec
    from deltaguard.transforms.quantize import RTNConfig

    config = transform_from_spec(method).with_overrides(overrides)
    if not isinstance(config, RTNConfig):
        raise ConfigError(f"--method {method!r} is not a quantization method (qrealign-, omniquant- or rtn-<scheme>)")
    if config.needs_reference and not reference:
        raise ConfigError(f"{config.label} needs --reference: the aligned model whose safety probes it restores")
    if reference and not config.needs_reference:
        raise ConfigError(f"{config.label} does not use a reference model (drop --reference)")
    check_device(device)
    check_artifact(out, force=force)
    if hasattr(config, "prompts"):
        config.prompts()   # draws and checks the calibration prompts before any model loads
    workdir = out.with_name(f".{out.name}.partial")   # finished blocks: a rerun after an interruption resumes
    ft_source, ref_source = ModelDir(model), ModelDir(reference) if reference else None
    finetuned, tokenizer = ft_source.load(device=device)
    aligned = ref_source.load(device=device)[0] if ref_source is not None else None
    describe = {"model": ft_source.describe(), **({"reference": ref_source.describe()} if ref_source else {})}
    _, record = quantize_and_save(finetuned, tokenizer, config, out, reference=aligned, diagnose=diagnose,
                                  workdir=workdir, overwrite=force, describe=describe)
    console.print(_table(config.label, record["calibration"], record))
    if record["diagnostics"] is not None:
        console.print(_diagnostics_line(record["diagnostics"]))
    console.print(f"saved {out}")


def _diagnostics_line(summary: dict) -> str:
    parts = [f"{name} {v['probe_accuracy']:.0%} ({v['harmful_side']:.0%} of harmful prompts on the harmful side)"
             for name, v in summary.items()]
    return ("aligned model's safety probes on held-out prompts, mean over blocks: " + ", ".join(parts)
            + "; per block in diagnostics.json / diagnostics.png")


def _table(label: str, record: dict, bits: dict) -> Table:
    table = Table("block", "epochs", "mse first → last", "safety first → last", "probe hits: fine-tune → quantized",
                  title=f"{label}: {bits['bits_per_param']:.2f} bits/param ({bits['linear_bits_per_param']:.2f} in "
                        f"the linears), {record.get('seconds_total', 0):.0f} s")

    def pair(a: object, b: object, fmt: str) -> str:
        return "-" if a is None or b is None else f"{a:{fmt}} → {b:{fmt}}"

    for block in record.get("blocks", []):
        table.add_row(str(block["block"]), str(block["epochs"]), pair(block["mse_first"], block["mse_last"], ".3g"),
                      pair(block["safety_first"], block["safety_last"], ".3g"),
                      pair(block["probe_hits_target"], block["probe_hits_quantized"], ".0%"))
    return table
