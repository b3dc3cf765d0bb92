"""`lancy grpo`: reinforcement learning with verifiable rewards (TRL's GRPOTrainer).

    lancy grpo --model runs/<sft-run> --dataset finsent --reward label --num-generations 4
    lancy grpo --dataset openai/gsm8k --dataset-config main --data-files train.parquet --reward numeric --reward format:0.2
    lancy grpo --dataset my_rows.jsonl --reward my_rewards.py:score
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lancy_trl.cli import app, guarded, training_console
from lancy_trl.cli.options import LancyCommand, config_command
from lancy_trl.cli.sft import CONFIG_OPTION
from lancy_trl.config import GRPOArgs


@app.command(cls=LancyCommand)
@config_command(GRPOArgs, [CONFIG_OPTION])
@guarded
def grpo(flags: dict[str, Any], config: Path | None = None) -> None:
    """Reinforcement learning with verifiable rewards: sample completions, score them, learn from the better ones."""
    from lancy_trl.config import load_yaml, resolve
    from lancy_trl.train.grpo import run_grpo

    args = resolve(GRPOArgs, load_yaml(config) if config else {}, flags, source=str(config) if config else "config")
    console = training_console(args, "grpo", flags)
    result = run_grpo(args, console, flags)
    if result.status != "complete":
        raise typer.Exit(130)
    curve = result.final_eval
    rise = (f", mean reward {curve['reward_first_tenth']:.3f} in the first tenth of steps -> "
            f"{curve['reward_last_tenth']:.3f} in the last") if "reward_first_tenth" in curve else ""
    console.print(
        f"[green]Done[/] in {result.seconds:.0f} s: {result.steps} steps{rise}.\n  model: {result.run_dir / 'model'}\n"
        f"  score it: lancy eval --model {result.run_dir}\n  logs: tensorboard --logdir {result.run_dir / 'tensorboard'}"
    )
