"""Commands whose implementation lands in a later release: listed in --help, honest when run."""

import typer

from lancy_trl.cli import app, guarded
from lancy_trl.errors import LancyError


def _not_yet(name: str, what: str) -> None:
    raise LancyError(f"`lancy {name}` is not available yet ({what}); use `lancy sft` meanwhile")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@guarded
def grpo(ctx: typer.Context) -> None:
    """Reinforcement learning with verifiable rewards via TRL's GRPOTrainer (not yet available)."""
    _not_yet("grpo", "GRPO with reward functions")
