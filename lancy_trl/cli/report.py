"""`lancy report`: a self-contained HTML page of a run, or of runs side by side, that opens offline.

    lancy report runs/<run>                          # runs/<run>/report.html
    lancy report runs/<a> runs/<b> runs/<c>          # runs/compare-<a>-and-2-more.html: curves overlaid, best marked
    lancy report runs/<a> runs/<b> --output cmp.html
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lancy_trl.cli import app, guarded


@app.command("report")
@guarded
def report(
    run: Annotated[list[Path], typer.Argument(help="One run directory, or several to compare.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the page (default: "
                                                "RUN/report.html, or compare-...html beside the runs).")] = None,
) -> None:
    """Loss curves, eval figures, confusion matrix, data, memory, privacy and manifest as one HTML file."""
    from lancy_trl import files, runs
    from lancy_trl.errors import LancyError
    from lancy_trl.report.page import page

    picked = [runs.require(r, "`lancy runs list` shows the runs") for r in run]
    if len(set(map(Path.resolve, picked))) < len(picked):
        raise LancyError("a run is named twice; name each run once")
    if output is None:
        more = f"-and-{len(picked) - 1}-more" if len(picked) > 1 else ""
        name = f"compare-{picked[0].name}{more}.html"
        output = picked[0] / "report.html" if len(picked) == 1 else picked[0].parent / name
    if output.is_dir():
        raise LancyError(f"--output {output} is a folder; name a file, e.g. {output / 'report.html'}")
    if not output.parent.is_dir():
        raise LancyError(f"--output {output}: the folder {output.parent} does not exist; make it or name another")
    html = page(picked)
    try:
        files.write_text(output, html)
    except OSError as e:
        if e.errno not in files.NO_ROOM:
            raise
        raise LancyError(files.refused(e, output.parent, len(html.encode()))) from None
    typer.echo(f"wrote {output} (open it in a browser; it needs no network)")
