"""``deltaguard list <family>``: every registry with one-line docs."""

from __future__ import annotations

import importlib

import typer
from rich.table import Table

from deltaguard.cli.app import JSON_HELP, app, console, fail_usage, print_json

# family → "module:attribute" of its Registry; modules are imported only when listed.
FAMILIES = {
    "compressors": "deltaguard.delta.methods:compressors",
    "judges": "deltaguard.judges:judges",
    "datasets": "deltaguard.data:datasets",
    "backends": "deltaguard.generation:backends",
    "threats": "deltaguard.threats:threats",
    "kernels": "deltaguard.kernels:kernels",
    "suites": "deltaguard.eval.suites:suites",
    "transforms": "deltaguard.transforms:transforms",
}


@app.command("list")
def list_family(family: str = typer.Argument(..., help=f"one of: {', '.join(FAMILIES)}"),
                as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the members of a plug-in family (compressors, judges, datasets, threats, backends, suites, ...)."""
    if family not in FAMILIES:
        fail_usage(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    module_name, attr = FAMILIES[family].split(":")
    registry = getattr(importlib.import_module(module_name), attr)
    if as_json:
        print_json([{"name": name, "description": registry.describe(name)} for name in registry.names()])
        return
    table = Table("name", "description", title=family)
    for name in registry.names():
        table.add_row(name, registry.describe(name))
    console.print(table)
