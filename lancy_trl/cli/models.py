"""`lancy models list`: the built-in catalog of small models, with where they come from and what they need."""

from __future__ import annotations

import typer

from lancy_trl.cli import app

models_app = typer.Typer(help="The model catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def list_models(
    wide: bool = typer.Option(False, "--wide", help="Add each model's memory notes."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per model on stdout."),
) -> None:
    """Short names, sizes and hub ids (--wide adds memory notes)."""
    from lancy_trl.models import CATALOG

    notes = {name: e.note + (f"; offline: GGUF from PyPI {e.pypi_gguf[0]}" if e.pypi_gguf else "") for name, e in CATALOG.items()}
    if json_out:
        import json

        for name, entry in CATALOG.items():
            typer.echo(json.dumps({"name": name, "hub_id": entry.hub_id, "params": entry.params, "notes": notes[name]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lancy models list --wide adds memory notes" if not wide else None, box=None)
    for col in ("name", "params", "hub id"):
        table.add_column(col, no_wrap=True)  # copied into --model: never broken
    if wide:
        table.add_column("notes")
    for name, entry in CATALOG.items():
        table.add_row(name, entry.params, entry.hub_id, *([notes[name]] if wide else []))
    Console().print(table)
