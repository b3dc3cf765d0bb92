"""`lancy models list`: the built-in catalog of small models, with where they come from and what they need."""

from __future__ import annotations

import typer

from lancy_trl.cli import app

models_app = typer.Typer(help="The model catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def list_models() -> None:
    """Short names, hub ids, sizes and memory notes."""
    from rich.console import Console
    from rich.table import Table

    from lancy_trl.models import CATALOG

    table = Table("name", "hub id", "params", "notes")
    for name, entry in CATALOG.items():
        note = entry.note + (f"; offline: GGUF from PyPI {entry.pypi_gguf[0]}" if entry.pypi_gguf else "")
        table.add_row(name, entry.hub_id, entry.params, note)
    Console().print(table)
