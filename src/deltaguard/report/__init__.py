"""The study report: one self-contained HTML page (plots embedded as base64 PNG), the same content as
Markdown (plots as PNG files beside it), and ``results.json``.

``write_report(results, out_dir)`` renders from the ``results.json`` dictionary alone, so a report can
be rebuilt without rerunning anything: ``deltaguard report runs/demo`` style tools just reload it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltaguard.io import atomic_write, read_json, write_json
from deltaguard.report import plots
from deltaguard.report.document import Document, build_document


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` (+ ``figures/*.png``) and ``results.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    figures = {
        "headline": plots.headline(results) if results.get("audits") else None,
        "alignment": plots.alignment_bars(results) if results.get("alignment") else None,
        "attack_vs_bits": plots.attack_vs_bits(results) if results.get("audits") else None,
        "utility_vs_attack": plots.utility_vs_attack(results) if results.get("audits") else None,
        "fidelity_sweep": plots.fidelity_sweep(results) if results.get("audits") else None,
        "training_losses": plots.training_losses(results),
    }
    for threat, lens in (results.get("lens") or {}).items():
        for plot in lens.get("plots", []):
            path = out_dir / plot
            if path.is_file():
                figures[f"lens-{threat}-{Path(plot).stem}"] = path.read_bytes()
    for threat, audit in (results.get("audits") or {}).items():   # Q-realign's probe diagnostics, saved with the model
        for row in audit.get("rows", []):
            path = out_dir / "quantized" / str(row.get("model_key")) / "diagnostics.png"
            if (row.get("compression") or {}).get("diagnostics") and path.is_file():
                figures[f"diagnostics-{threat}-{row['label']}"] = path.read_bytes()
    figures = {k: v for k, v in figures.items() if v is not None}
    for name, png in figures.items():
        with atomic_write(out_dir / "figures" / f"{name}.png", "wb", encoding=None) as handle:
            handle.write(png)
    map_path = out_dir / "map.json"
    document = build_document(results, figures,
                              read_json(map_path, what="mitigation map") if map_path.is_file() else None)
    with atomic_write(out_dir / "report.html") as handle:
        handle.write(document.html())
    with atomic_write(out_dir / "report.md") as handle:
        handle.write(document.markdown(figure_dir="figures"))
    write_json(out_dir / "results.json", results)
    return {"html": out_dir / "report.html", "markdown": out_dir / "report.md", "results": out_dir / "results.json"}


def rerender(run_dir: str | Path) -> dict[str, Path]:
    """Rebuild the report of a finished run from its ``results.json``."""
    run_dir = Path(run_dir)
    return write_report(read_json(run_dir / "results.json", what="study results"), run_dir)


__all__ = ["Document", "build_document", "rerender", "write_report"]
