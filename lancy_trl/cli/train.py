"""The training commands, one per method of the registry (lancy_trl/train/methods/): `lancy sft`, `lancy pretrain`,
`lancy grpo`, ... Each takes its method's config as flags or a YAML file, and runs it through the one driver.

    lancy sft                                  # the embedded demo
    lancy sft --config recipes/finance_sentiment.yaml --learning-rate 1e-4
    lancy pretrain --data-files "reports/*.txt" --max-steps 200
    lancy grpo --model runs/<sft-run> --dataset finsent --reward label
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from lancy_trl.cli import app, guarded, training_console
from lancy_trl.cli.options import LancyCommand, config_command
from lancy_trl.train import methods

CONFIG_OPTION = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Path | None, typer.Option("--config", help="YAML file of options; flags given here override it.", rich_help_panel="Run")
    ],
)


def command(name: str) -> None:
    """`lancy NAME`: the method's flags (or a --config YAML), the run, and its closing line."""
    method = methods.get(name)

    def train(flags: dict[str, Any], config: Path | None = None) -> None:
        from lancy_trl.config import load_yaml, resolve
        from lancy_trl.train import driver

        args = resolve(method.args, load_yaml(config) if config else {}, flags, source=str(config) if config else "config")
        plan = driver.prepare(method, args, flags)  # a resume's run and checkpoint, resolved once
        console = training_console(plan.args, name)
        result = driver.run(method, plan, console)
        if result.status != "complete":
            raise typer.Exit(130)
        console.print(method.done(result))

    train.__doc__ = method.help
    train.__name__ = name
    app.command(name, cls=LancyCommand)(config_command(method.args, [CONFIG_OPTION])(guarded(train)))


for _name in methods.names():
    command(_name)
