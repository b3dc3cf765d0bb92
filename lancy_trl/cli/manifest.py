"""`lancy manifest RUN [--verify]`: what a run read and wrote, by sha256; --verify names any file that changed.

    lancy manifest runs/<run>
    lancy manifest runs/<run> --verify
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lancy_trl.cli import app, guarded


@app.command("manifest")
@guarded
def manifest_(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    verify: Annotated[bool, typer.Option("--verify", help="Re-hash every file and name any that changed.")] = False,
) -> None:
    """Hashes of a run's data, base model and output, with its config and versions; --verify checks them."""
    from lancy_trl import runs
    from lancy_trl.errors import LancyError
    from lancy_trl.privacy import manifest

    runs.require(run)
    if not verify:
        path = run / manifest.MANIFEST
        if not path.is_file():
            raise LancyError(f"{run} has no {manifest.MANIFEST} (it is written when a run completes)")
        typer.echo(path.read_text())
        return
    problems = manifest.verify(run)
    for line in problems:
        typer.echo(f"changed: {line}", err=True)
    if problems:
        raise typer.Exit(1)
    data = json.loads((run / manifest.MANIFEST).read_text())
    n = len(data["data"]) + len(data["held_out"]) + len(data["base_model"]["files"]) + len(data["output"]["files"])
    typer.echo(f"verified: {n} files match {run / manifest.MANIFEST}")
