"""`lancy sft`: supervised fine-tuning on chat-formatted data with completion-only loss.

    lancy sft                                        # embedded demo: finance sentiment, SmolLM2-135M, LoRA
    lancy sft --model Qwen/Qwen3-0.6B --dataset my_data.jsonl --max-steps 200
    lancy sft --config recipes/finance_sentiment.yaml --learning-rate 1e-4
    lancy sft --resume latest --run-dir runs/<name>
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from lancy_trl.cli import app, guarded, training_console
from lancy_trl.cli.options import LancyCommand, config_command
from lancy_trl.config import SFTArgs

CONFIG_OPTION = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Path | None, typer.Option("--config", help="YAML file of options; flags given here override it.", rich_help_panel="Run")
    ],
)


@app.command(cls=LancyCommand)
@config_command(SFTArgs, [CONFIG_OPTION])
@guarded
def sft(flags: dict[str, Any], config: Path | None = None) -> None:
    """Fine-tune a model on chat-style examples (loss on the answer only); with no options, the embedded demo."""
    from lancy_trl.config import load_yaml, resolve
    from lancy_trl.train.sft import run_sft

    yaml_values = load_yaml(config) if config else {}
    args = resolve(SFTArgs, yaml_values, flags, source=str(config) if config else "config")
    console = training_console(args, "sft", flags)
    result = run_sft(args, console, flags)
    if result.status != "complete":
        raise typer.Exit(130)
    losses = f"train loss {result.train_loss:.4f}" + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss else "")
    console.print(
        f"[green]Done[/] in {result.seconds:.0f} s: {result.steps} steps, {losses}.\n"
        f"  model: {result.run_dir / 'model'}\n  logs: tensorboard --logdir {result.run_dir / 'tensorboard'}"
    )
