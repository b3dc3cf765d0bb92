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
    """Evaluate a run or model with its training template: classification, multiple choice, math, QA, perplexity."""
    from rich.console import Console

    from lancy_trl.config import resolve
    from lancy_trl.evaluation.runner import run_eval

    console = Console(stderr=json_out, soft_wrap=True)
    result = run_eval(resolve(EvalArgs, flags=flags), console)
    if json_out:
        typer.echo(json.dumps(result))
        return
    if "canaries" in result:
        show_canaries(console, result)
        return
    for part in result.get("sources", {}).values():  # a mixture: each source, then the overall score
        show(console, {tag: part[tag] for tag in ("model", "base") if tag in part}, part)
    show(console, {tag: result[tag] for tag in ("model", "base") if tag in result}, result)
    console.print(f"metrics.json, predictions.jsonl and any confusion.png in {result['output_dir']}")


COLUMNS = [("accuracy", "accuracy", "{:.3f}"), ("margin", "margin", "{:+.2f}"), ("macro_f1", "macro-F1", "{:.3f}"),
           ("mcc", "MCC", "{:.3f}"),
           ("ece", "ECE", "{:.3f}"), ("exact_match", "EM", "{:.3f}"), ("f1", "F1", "{:.3f}"),
           ("perplexity", "perplexity", "{:.2f}"), ("invalid_rate", "invalid", "{:.1%}"),
           ("examples_per_second", "ex/s", "{:.1f}")]


def show(console: Any, summary: dict[str, Any], result: dict[str, Any]) -> None:
    from rich.table import Table

    reports = [r for rs in summary.values() for r in rs.values()]
    columns = [c for c in COLUMNS if any(c[0] in r for r in reports)]
    labels = next((r["confusion"]["labels"] for r in reports if "confusion" in r), None)
    task = "overall: accuracy (F1 for free-text answers) weighted by rows" if result["task"] == "mixture" else \
        result["task"].replace("_", " ") + (f", {len(labels)} labels" if labels else "")
    title = f"{result['dataset']} ({task}; {result['rows']} rows: {result['rows_from']})"
    paired = next((r["timed_with"] for r in reports if "timed_with" in r), None)
    table = Table(title=title, caption=f"{' and '.join(paired)} ran from one prompt pass: ex/s is for both together"
                  if paired else None)
    for col in ("model", "method", "n", *(c[1] for c in columns)):
        table.add_column(col)
    for tag, rs in summary.items():
        for method, r in rs.items():
            table.add_row(tag, method, str(r["n"]), *(fmt.format(r[key]) if key in r else "" for key, _, fmt in columns))
    if "base" in summary:
        headline = next(c for c in ("accuracy", "f1", "perplexity") if any(c in r for r in reports))
        for method in summary["model"]:
            delta = summary["model"][method][headline] - summary["base"][method][headline]
            table.add_row("delta", method, "", *(f"{delta:+.3f}" if key == headline else "" for key, _, _ in columns))
    console.print(table)


def show_canaries(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"Canaries planted in {result['model']}, each ranked among {result['candidates']} random "
                        "secrets of its format")
    for col in ("secret", "planted", "rank", "exposure (bits)", "recited"):
        table.add_column(col)
    for r in result["canaries"]:
        table.add_row(r["secret"], f"x{r['repeats']}", f"{r['rank']}", f"{r['exposure']:.2f} of {r['max_exposure']:.2f}",
                      "yes" if r["recited"] else "no")
    console.print(table)
    console.print(f"mean exposure {result['mean_exposure']:.2f} bits: about 1 means the model ranks its secrets like "
                  "any other (nothing memorised); the maximum means it ranks each first.")
    console.print(f"recited {result['recited']} of {len(result['canaries'])}: greedy decoding after the prefix wrote "
                  "the secret whole.")
    console.print(f"saved to {result['output_dir']}/canaries.json")
