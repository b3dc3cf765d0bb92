"""`lancy eval`: generative evaluation with the template the model was trained on (not yet available)."""

import typer

from lancy_trl.cli import app, guarded
from lancy_trl.errors import LancyError


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@guarded
def eval_(ctx: typer.Context) -> None:
    """Evaluate a model or run: the model writes the label word and lancy scores it (not yet available)."""
    raise LancyError("`lancy eval` is not available yet; training reports eval loss meanwhile")
