"""`lancy pretrain`: continued pretraining on plain text (causal LM loss on every token, packed blocks).

    lancy pretrain --dataset my_filings.txt --max-steps 200
    lancy pretrain --data-files "reports/*.txt" --max-length 1024
    lancy pretrain --model smollm2-135m-instruct --dataset wikitext --dataset-config wikitext-2-raw-v1 --max-steps 200
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lancy_trl.cli import app, guarded, training_console
from lancy_trl.cli.options import LancyCommand, config_command
from lancy_trl.cli.sft import CONFIG_OPTION
from lancy_trl.config import PretrainArgs


@app.command(cls=LancyCommand)
@config_command(PretrainArgs, [CONFIG_OPTION])
@guarded
def pretrain(flags: dict[str, Any], config: Path | None = None) -> None:
    """Continue pretraining on plain text: every token learned, documents packed into blocks, perplexity held out."""
    from lancy_trl.config import load_yaml, resolve
    from lancy_trl.train.pretrain import run_pretrain

    args = resolve(PretrainArgs, load_yaml(config) if config else {}, flags, source=str(config) if config else "config")
    console = training_console(args, "pretrain", flags)
    result = run_pretrain(args, console, flags)
    if result.status != "complete":
        raise typer.Exit(130)
    held = result.final_eval.get("eval_perplexity")
    console.print(
        f"[green]Done[/] in {result.seconds:.0f} s: {result.steps} steps, train loss {result.train_loss:.4f}"
        + (f", held-out perplexity {held:.2f}" if held else "") + f".\n  model: {result.run_dir / 'model'}\n"
        f"  logs: tensorboard --logdir {result.run_dir / 'tensorboard'}"
    )
