"""``deltaguard realign``: safety-aware quantization of a fine-tune (Q-realign) and its baselines."""

from __future__ import annotations

import shutil
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
    from deltaguard.io import write_json
    from deltaguard.quant.artifact import save_quantized, stored_bits
    from deltaguard.quant.diagnose import diagnostic_prompts, diagnostic_states, plot_diagnostics, probe_diagnostics
    from deltaguard.transforms import transform_from_spec, transforms
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
    states = {}
    if aligned is not None and diagnose:   # evaluation-split prompts, only read (see quant.diagnose)
        harmful, benign = diagnostic_prompts()
        states = {"aligned": diagnostic_states(aligned, tokenizer, harmful, benign, label="states aligned"),
                  "fine-tune": diagnostic_states(finetuned, tokenizer, harmful, benign, label="states fine-tune")}
    transform = transforms.get(config.name)()
    quantized = transform.apply_(finetuned, config, tokenizer=tokenizer, reference=aligned, workdir=workdir)
    record = getattr(quantized, "deltaguard_quant_record", {})
    probes = getattr(quantized, "deltaguard_probes", None)
    diagnostics = None
    if states and probes is not None:
        states["realigned"] = diagnostic_states(quantized, tokenizer, harmful, benign, label="states realigned")
        diagnostics = probe_diagnostics(states, probes, len(harmful))
    bits = stored_bits(quantized)

    def extra(directory: Path) -> None:
        if probes is not None:
            probes.write(directory)
        if diagnostics is not None:
            write_json(directory / "diagnostics.json", diagnostics)
            plot_diagnostics(diagnostics, directory / "diagnostics.png")

    describe = {"model": ft_source.describe(), **({"reference": ref_source.describe()} if ref_source else {})}
    saved = save_quantized(quantized, tokenizer, out, overwrite=force, extra=extra,
                           record={**bits, "seconds": record.get("seconds_total"), "method": config.to_dict(),
                                   "label": config.label, **describe, "calibration": record})
    shutil.rmtree(workdir, ignore_errors=True)
    console.print(_table(config.label, record, bits))
    if diagnostics is not None:
        console.print(_diagnostics_line(diagnostics))
    console.print(f"saved {saved}")


def _diagnostics_line(diagnostics: dict) -> str:
    """Mean over blocks of the aligned probes' accuracy on evaluation prompts, per model."""
    parts = [f"{name} {sum(v['probe_accuracy']) / len(v['probe_accuracy']):.0%}"
             for name, v in diagnostics["models"].items()]
    return ("aligned model's safety probes on held-out prompts (mean accuracy over blocks): " + ", ".join(parts)
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
