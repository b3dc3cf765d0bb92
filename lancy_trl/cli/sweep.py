"""`lancy sweep COMMAND --grid KEY=V1,V2 ... [flags every run shares]`: one run per point of the grid, one after
another, in one folder; killed, it continues with the run it was in; it ends with the compare table.

    lancy sweep sft --grid learning_rate=1e-4,2e-4 lora_r=8,16 --max-steps 100
    lancy sweep sft --grid-file grid.yaml --name lr-r --dataset my_data.jsonl
    lancy sweep --resume runs/lr-r
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from lancy_trl.cli import app, guarded
from lancy_trl.sweep import Spec


@app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@guarded
def sweep(
    ctx: typer.Context,
    command: Annotated[str | None, typer.Argument(help="The training command: sft, pretrain, grpo or dpo.")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="KEY=V1,V2 (repeat, or several in one quoted "
                                                   "value): every combination is one run.")] = None,
    grid_file: Annotated[Path | None, typer.Option("--grid-file", help="A YAML grid: KEY: [V1, V2] per line.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="The sweep's folder name (default: sweep-<time>).")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Where the sweep's folder is made.")] = Path("runs"),
    resume: Annotated[Path | None, typer.Option("--resume", help="A sweep folder to continue.")] = None,
) -> None:
    """Run a grid of training runs one after another and compare them; flags after the grid go to every run."""
    from rich.console import Console

    from lancy_trl import sweep as sw
    from lancy_trl.errors import LancyError

    console = Console(soft_wrap=True, highlight=False)
    if resume is not None:
        folder, spec = resume, sw.Spec.load(resume)
    else:
        if command is None:
            raise LancyError("name the training command: lancy sweep sft --grid KEY=V1,V2 ...")
        extra = list(ctx.args)
        more = next((i for i, a in enumerate(extra) if not sw.GRID_ITEM.match(a)), len(extra))  # `--grid a=1 b=2`
        axes = {**(sw.grid_file(grid_file) if grid_file else {}), **sw.parse_grid((grid or []) + extra[:more])}
        spec = sw.Spec(command, axes, extra[more:])
        folder = output_dir / (name or datetime.now().strftime("sweep-%Y-%m-%d_%Hh%Mm%S"))
        if (folder / sw.SPEC_FILE).is_file() and sw.Spec.load(folder) != spec:
            raise LancyError(f"{folder} holds another sweep (its grid or flags differ): pick another --name, or "
                             f"continue it with `lancy sweep --resume {folder}`")
    spec.check()
    check_flags(spec)
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(folder)
    console.print(f"{sw.describe(spec)} in {folder}")
    failed = run_all(spec, folder, console)
    from lancy_trl.cli.runs import show_comparison

    done = [folder / sw.name(p) for p in spec.points() if (folder / sw.name(p) / "run.json").is_file()]
    if len(done) > 1:
        show_comparison(done)
    if failed:
        raise LancyError(f"{len(failed)} of {len(spec.points())} runs did not finish ({', '.join(failed)}); "
                         f"continue with `lancy sweep --resume {folder}`")


def check_flags(spec: Spec) -> None:
    """Every point's command line parses (flags known, values of their type) before any run starts."""
    import typer.main

    from lancy_trl import sweep as sw
    from lancy_trl.config import resolve
    from lancy_trl.errors import LancyError
    from lancy_trl.train import methods

    command = typer.main.get_command(app).commands[spec.command]  # type: ignore[attr-defined]
    for point in spec.points():
        args = sw.argv(spec, point, Path("runs"), "start")[1:]
        try:
            parsed = command.make_context(spec.command, args).params
        except Exception as e:  # typer vendors its own click: its usage errors are known by their message method
            if not hasattr(e, "format_message"):
                raise
            raise LancyError(f"`lancy {spec.command} {' '.join(args)}`: {e.format_message()}") from None
        resolve(methods.get(spec.command).args, flags={k: parsed[k] for k in point})  # values in range


def run_all(spec: Spec, folder: Path, console: Any) -> list[str]:
    """Each point in turn: skipped when complete, resumed from its checkpoint, else started (a run that stopped
    before its first checkpoint is started again, its folder replaced). Returns the points that did not finish."""
    import shutil

    from lancy_trl import sweep as sw

    failed = []
    points = spec.points()
    for i, point in enumerate(points, 1):
        run = folder / sw.name(point)
        step = sw.next_step(run)
        console.print(f"[{i}/{len(points)}] {sw.name(point)}: " + {
            "done": "complete, skipped", "resume": "resuming", "restart": "stopped before a checkpoint, started "
            "again", "start": "starting"}[step])
        if step == "done":
            continue
        if step == "restart":
            shutil.rmtree(run)
        code = sw.run_point(sw.argv(spec, point, folder, step))
        if code != 0:
            failed.append(sw.name(point))
            if code in (130, -2):  # Ctrl-C: the run saved a checkpoint; the sweep stops with it
                break
    return failed
