"""`lancy datasets list|show|preview`: the dataset registry (not yet available beyond the demo)."""

import typer

from lancy_trl.cli import app, guarded
from lancy_trl.errors import LancyError

datasets_app = typer.Typer(help="The dataset registry.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("list")
@guarded
def list_datasets() -> None:
    """Every registry dataset: name, hub id, task, labels, splits, license."""
    raise LancyError("`lancy datasets` is not available yet")
