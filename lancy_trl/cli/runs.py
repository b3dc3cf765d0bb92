"""`lancy runs`: every run under a folder, one run in full, runs compared, failed runs cleaned away.

    lancy runs list                                  # name, command, model, data, status, steps, time, last eval
    lancy runs show runs/<run>
    lancy runs compare runs/<a> runs/<b> runs/<c>    # figures with the best marked, and only the settings that differ
    lancy runs clean --dry-run                       # failed and interrupted runs and the bytes they hold
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lancy_trl.cli import app, guarded

runs_app = typer.Typer(help="List, show, compare and clean runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

FOLDER = Annotated[Path, typer.Option("--output-dir", help="The folder runs are made in.")]
JSON = Annotated[bool, typer.Option("--json", help="JSON on stdout.")]


def _run_dir(run: Path) -> Path:
    from lancy_trl import runs

    return runs.require(run, "`lancy runs list` shows the runs")


@runs_app.command("list")
@guarded
def list_runs(
    output_dir: FOLDER = Path("runs"),
    command: Annotated[str | None, typer.Option("--command", help="Only this command's runs (sft, dpo, ...).")] = None,
    status: Annotated[str | None, typer.Option("--status", help="complete, interrupted, failed or running.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Runs whose data name contains this.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Runs whose model name contains this.")] = None,
    json_out: JSON = False,
) -> None:
    """Every run in the folder, newest first: command, model, data, status, steps, time, its last eval's headline."""
    from rich.console import Console
    from rich.table import Table

    from lancy_trl import runs
    from lancy_trl.comparison import matches, summarize

    rows = [s for s in map(summarize, runs.all_runs(output_dir)) if matches(s, command, status, dataset, model)]
    if json_out:
        for s in rows:
            typer.echo(json.dumps({**s.__dict__, "path": str(s.path), "metric": list(s.metric) if s.metric else None}))
        return
    table = Table(box=None, title=f"{len(rows)} runs in {output_dir}/ (newest first)")
    table.add_column("run", overflow="fold")
    for col in ("command", "model", "data", "status", "steps", "time", "last eval", "ε"):
        table.add_column(col, overflow="fold")
    for s in rows:
        table.add_row(s.path.name, s.command, s.model, s.dataset, s.status, "" if s.steps is None else str(s.steps),
                      "" if s.seconds is None else f"{s.seconds:.0f} s",
                      f"{s.metric[0].split()[0]} {s.metric[1]:.3f}" if s.metric else "",
                      "" if s.epsilon is None else f"{s.epsilon:g}")
    Console(soft_wrap=False).print(table)


@runs_app.command("show")
@guarded
def show_run(run: Annotated[Path, typer.Argument(help="A run directory.")], json_out: JSON = False) -> None:
    """Everything recorded about one run: what it trained, how, how it ended, its figures and privacy."""
    from rich.console import Console

    from lancy_trl import runs
    from lancy_trl.comparison import figures_of, last_eval

    info = runs.read(_run_dir(run))
    if json_out:
        typer.echo(json.dumps({**info, "last_eval": last_eval(run)}))
        return
    console = Console(highlight=False)
    data = info.get("data", {})
    sections = {
        "run": {"path": run, "command": f"lancy {info.get('command', 'sft')}", "status": info.get("status"),
                "started": info.get("started"), "finished": info.get("finished"), "error": info.get("error")},
        "trained": {"model": info.get("base_model_path"), "data": info.get("dataset"), "task": info.get("task"),
                    "labels": ", ".join(info.get("labels", [])), "rows": data.get("train_examples"),
                    "notes": "; ".join(data.get("notes", [])), "held out": ", ".join(f"{k} {v['rows']}" for k, v in
                                                                            (info.get("held_out") or {}).items())},
        "how": {k: v for k, v in (info.get("config") or {}).items() if v not in (None, [], {}, "")},
        "figures": figures_of(run),
        "privacy": {"dp": info.get("dp"), "audit": info.get("audit"), "offline": info.get("offline")},
    }
    for title, fields in sections.items():
        console.print(f"[bold]{title}[/]")
        for key, value in fields.items():
            if value not in (None, "", {}, []):
                shown = f"{value:.4g}" if isinstance(value, float) else value
                console.print(f"  {key}: {shown}", soft_wrap=True)


@runs_app.command("compare")
@guarded
def compare(runs_: Annotated[list[Path], typer.Argument(help="Two or more run directories.")],
            json_out: JSON = False) -> None:
    """The runs' figures side by side, the best of each marked, and only the settings that differ."""
    from lancy_trl.errors import LancyError

    if len(runs_) < 2:
        raise LancyError("compare needs two or more run directories")
    show_comparison([_run_dir(r) for r in runs_], json_out)


def show_comparison(picked: list[Path], json_out: bool = False) -> None:
    """The compare table of `picked` (also what a sweep ends with)."""
    from rich.console import Console
    from rich.table import Table

    from lancy_trl.comparison import best_of, config_diff, figures_of

    figures = {r: figures_of(r) for r in picked}
    best, diff = best_of(figures), config_diff(picked)
    if json_out:
        typer.echo(json.dumps({"runs": [str(r) for r in picked], "figures": {str(r): f for r, f in figures.items()},
                               "best": {k: [str(r) for r in v] for k, v in best.items()}, "differences": diff}))
        return
    console = Console(highlight=False)
    for i, r in enumerate(picked, 1):
        console.print(f"#{i} {r}", soft_wrap=True)
    table = Table(title="figures (* the best)", box=None)
    table.add_column("figure", overflow="fold")
    for i in range(len(picked)):
        table.add_column(f"#{i + 1}", justify="right")
    for name in sorted({n for f in figures.values() for n in f}):
        table.add_row(name, *(_cell(figures[r].get(name), r in best.get(name, [])) for r in picked))
    console.print(table)
    settings = Table(title="settings that differ" if diff else "no setting differs", box=None)
    settings.add_column("setting", overflow="fold")
    for i in range(len(picked)):
        settings.add_column(f"#{i + 1}", overflow="fold")
    for key, values in diff.items():
        settings.add_row(key, *(json.dumps(v) if not isinstance(v, str) else v for v in values))
    console.print(settings)


def _cell(value: float | None, best: bool) -> str:
    if value is None:
        return ""
    text = f"{value:.4g}"
    return f"[bold]*{text}[/]" if best else text


@runs_app.command("clean")
@guarded
def clean(
    output_dir: FOLDER = Path("runs"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Name what would be deleted, delete nothing.")] = False,
    everything: Annotated[bool, typer.Option("--all", help="Complete runs too.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Delete without asking.")] = False,
) -> None:
    """Delete failed and interrupted runs (complete ones only with --all; never one a process trains in)."""
    import shutil
    import sys

    from rich.console import Console

    from lancy_trl.comparison import cleanable
    from lancy_trl.errors import LancyError
    from lancy_trl.files import gb

    console = Console(highlight=False, soft_wrap=True)
    found = cleanable(output_dir, everything)
    total = sum(size for _, _, size in found)
    for run, status, size in found:
        console.print(f"{'would delete' if dry_run else 'delete'} {run} ({status}, {gb(size)})")
    if not found or dry_run:
        console.print(f"{len(found)} runs, {gb(total)}" + (" would be freed" if found else ": nothing to clean"))
        return
    if not yes:
        if not sys.stdin.isatty():
            raise LancyError(f"{len(found)} runs ({gb(total)}) would be deleted: pass --yes to delete them, or "
                             "--dry-run to list them")
        typer.confirm(f"Delete {len(found)} runs ({gb(total)})?", abort=True)
    for run, _, _ in found:
        shutil.rmtree(run)
    console.print(f"deleted {len(found)} runs, {gb(total)} freed")
