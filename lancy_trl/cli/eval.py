"""`lancy eval`: the model writes the label word; lancy scores it with the template it was trained on.

    lancy eval --model runs/<run> --compare-base
    lancy eval --model smollm2-135m-instruct --dataset finsent --method generate --limit 50 --json
"""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any

import typer

from lancy_trl.cli import app, guarded
from lancy_trl.cli.options import LancyCommand, config_command
from lancy_trl.config import EvalArgs

JSON_OPTION = inspect.Parameter(
    "json_out", inspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")],
)


@app.command("eval", cls=LancyCommand)
@config_command(EvalArgs, [JSON_OPTION])
@guarded
def eval_(flags: dict[str, Any], json_out: bool = False) -> None:
    """Evaluate a run or model on a classification dataset: accuracy, macro-F1, MCC, calibration."""
    from rich.console import Console

    from lancy_trl.config import resolve
    from lancy_trl.evaluation.runner import run_eval

    console = Console(stderr=json_out)
    result = run_eval(resolve(EvalArgs, flags=flags), console)
    if json_out:
        typer.echo(json.dumps(result))
        return
    show(console, {tag: result[tag] for tag in ("model", "base") if tag in result}, result)


def show(console: Any, summary: dict[str, Any], result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{result['dataset']}: {len(next(iter(summary['model'].values()))['confusion']['labels'])} labels")
    for col in ("model", "method", "n", "accuracy", "macro-F1", "MCC", "ECE", "invalid", "ex/s"):
        table.add_column(col)
    for tag, reports in summary.items():
        for method, r in reports.items():
            table.add_row(tag, method, str(r["n"]), f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", f"{r['mcc']:.3f}",
                          f"{r['ece']:.3f}" if "ece" in r else "", f"{r['invalid_rate']:.1%}" if "invalid_rate" in r else "",
                          f"{r['examples_per_second']:.1f}")
    if "base" in summary:
        for method in summary["model"]:
            delta = summary["model"][method]["accuracy"] - summary["base"][method]["accuracy"]
            table.add_row("delta", method, "", f"{delta:+.3f}", "", "", "", "", "")
    console.print(table)
    console.print(f"metrics.json, predictions.jsonl, confusion.png in {result['output_dir']}")
