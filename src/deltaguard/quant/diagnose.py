"""Why did (or didn't) realignment work: the safety probes read on the aligned, fine-tuned and realigned models.

On *diagnostic* prompts — evaluation-split harmful and benign prompts, never used to fit the probes or to
calibrate, and only read here (nothing is tuned on them) — each model's last-token states are scored
by the aligned model's per-layer probes:

- ``probe_accuracy`` per layer: how often the aligned model's harmful/benign boundary still classifies
  the model's states correctly. A harmful fine-tune that erased the safety representation drops here;
  successful realignment brings it back.
- ``harmful_side`` per layer: the share of harmful prompts on the probe's harmful side — the quantity
  Q-realign's loss pushes up.
- ``separability`` per layer: the Fisher ratio of the model's own states (does it still separate the two
  kinds of prompts at all, whatever the direction).
- ``projection``: the states at a few layers projected on the aligned model's first two principal
  components (2-D scatter for the report).

The lens refusal margin per layer comes from ``deltaguard lens --model A --model B --model C``, which
reads quantized directories like any model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from deltaguard.quant.probes import SafetyProbes, last_token_states


def diagnostic_prompts(n_per_class: int = 48, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """(harmful, benign) evaluation-split prompts: AdvBench and the benign instructions."""
    from deltaguard.data import load_prompts

    harmful = [p.text for p in load_prompts("advbench", split="eval", limit=n_per_class, seed=seed).prompts]
    benign = [p.text for p in load_prompts("benign", split="eval", limit=n_per_class, seed=seed).prompts]
    return harmful, benign


def diagnostic_states(model: Any, tokenizer: Any, harmful: Sequence[str], benign: Sequence[str], *,
                      max_tokens: int = 128, label: str = "states") -> torch.Tensor:
    """``[blocks, n_harmful + n_benign, d]`` last-token states (harmful first), for ``probe_diagnostics``."""
    return last_token_states(model, tokenizer, [*harmful, *benign], max_tokens=max_tokens, progress=True, label=label)


def probe_diagnostics(states: dict[str, torch.Tensor], probes: SafetyProbes, n_harmful: int, *,
                      layers_to_project: Sequence[int] | None = None) -> dict[str, Any]:
    """Per-model, per-layer probe accuracy, harmful-side share and separability, plus 2-D projections on the
    first model's principal components (pass the aligned model first)."""
    first = next(iter(states.values()))
    labels = torch.tensor([1] * n_harmful + [0] * (first.shape[1] - n_harmful))
    n_layers = probes.n_layers
    if layers_to_project is None:
        layers_to_project = sorted({n_layers // 4, n_layers // 2, n_layers - 1})
    out: dict[str, Any] = {"n_harmful": n_harmful, "n_benign": int(first.shape[1]) - n_harmful, "models": {},
                           "projection": {}, "labels": labels.tolist()}
    for name, model_states in states.items():
        measured = probes.evaluate(model_states, labels)
        harmful_side = [float((probes.logits(i, model_states[i][labels == 1]) > 0).float().mean())
                        for i in range(n_layers)]
        out["models"][name] = {"probe_accuracy": measured["accuracy"], "harmful_side": harmful_side,
                               "separability": measured["separability"]}
    for layer in layers_to_project:
        reference = first[layer]
        mean = reference.mean(dim=0)
        _, _, components = torch.linalg.svd(reference - mean, full_matrices=False)
        axes = components[:2]
        out["projection"][str(layer)] = {name: ((s[layer] - mean) @ axes.T).tolist() for name, s in states.items()}
    return out


def plot_diagnostics(diagnostics: dict[str, Any], path: str | Path) -> Path:
    """Probe accuracy per layer for each model, and the 2-D projections (harmful ×, benign ○)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deltaguard.io import atomic_write

    projections = diagnostics["projection"]
    fig, axes = plt.subplots(1, 1 + len(projections), figsize=(4.2 * (1 + len(projections)), 3.6))
    for name, values in diagnostics["models"].items():
        axes[0].plot(values["probe_accuracy"], label=name)
    axes[0].set(title="aligned model's probes", xlabel="block", ylabel="accuracy", ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    labels = diagnostics["labels"]
    colours = ["tab:blue", "tab:red", "tab:green", "tab:purple"]
    for ax, (layer, by_model) in zip(axes[1:], projections.items()):
        for colour, (name, points) in zip(colours, by_model.items()):
            xy = torch.tensor(points)
            harm = torch.tensor(labels) == 1
            ax.scatter(xy[harm, 0], xy[harm, 1], marker="x", s=12, color=colour, label=f"{name} harmful")
            ax.scatter(xy[~harm, 0], xy[~harm, 1], marker="o", s=10, facecolors="none", edgecolors=colour,
                       label=f"{name} benign")
        ax.set(title=f"block {layer}: aligned PCs", xticks=[], yticks=[])
    axes[-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb", encoding=None) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path




def quantize_and_save(finetuned: Any, tokenizer: Any, config: Any, out: Path, *, reference: Any = None,
                      diagnose: bool = True, workdir: Path | None = None, overwrite: bool = False,
                      describe: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Apply a quantization transform to ``finetuned`` (in place) and save it; with a reference and
    ``diagnose``, also read the probes on held-out prompts for the aligned, fine-tuned and realigned models
    and save ``diagnostics.json`` / ``.png`` beside the weights. Returns (model, saved record) — the one
    path ``realign`` and the audit share."""
    from deltaguard.io import write_json
    from deltaguard.quant.artifact import save_quantized, stored_bits
    from deltaguard.transforms import transforms

    states: dict[str, torch.Tensor] = {}
    harmful: list[str] = []
    if reference is not None and diagnose:   # evaluation-split prompts, only read
        harmful, benign = diagnostic_prompts()
        states = {"aligned": diagnostic_states(reference, tokenizer, harmful, benign, label="states aligned"),
                  "fine-tune": diagnostic_states(finetuned, tokenizer, harmful, benign, label="states fine-tune")}
    quantized = transforms.get(config.name)().apply_(finetuned, config, tokenizer=tokenizer, reference=reference,
                                                     workdir=workdir)
    calibration = getattr(quantized, "deltaguard_quant_record", {})
    probes = getattr(quantized, "deltaguard_probes", None)
    diagnostics = None
    if states and probes is not None:
        states["realigned"] = diagnostic_states(quantized, tokenizer, harmful, benign, label="states realigned")
        diagnostics = probe_diagnostics(states, probes, len(harmful))

    def extra(directory: Path) -> None:
        if probes is not None:
            probes.write(directory)
        if diagnostics is not None:
            write_json(directory / "diagnostics.json", diagnostics)
            plot_diagnostics(diagnostics, directory / "diagnostics.png")

    record = {**stored_bits(quantized), "seconds": calibration.get("seconds_total"), "method": config.to_dict(),
              "label": config.label, **(describe or {}), "calibration": calibration,
              "diagnostics": summarise(diagnostics) if diagnostics is not None else None}
    save_quantized(quantized, tokenizer, out, overwrite=overwrite, extra=extra, record=record)
    if workdir is not None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return quantized, record


def summarise(diagnostics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per model: the probes' mean accuracy and mean harmful-side share over blocks (held-out prompts)."""
    return {name: {"probe_accuracy": sum(v["probe_accuracy"]) / len(v["probe_accuracy"]),
                   "harmful_side": sum(v["harmful_side"]) / len(v["harmful_side"])}
            for name, v in diagnostics["models"].items()}


__all__ = ["diagnostic_prompts", "diagnostic_states", "plot_diagnostics", "probe_diagnostics", "quantize_and_save",
           "summarise"]
