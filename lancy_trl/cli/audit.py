"""`lancy audit RUN`: how much a run reveals about which rows it trained on (membership inference).

    lancy audit runs/<run>                      # its training rows against its held-out rows
    lancy audit runs/<run> --base               # the same rows, the base model in its place: the control
    lancy audit runs/<run> --data-files unseen.jsonl --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from lancy_trl.cli import app, guarded


@app.command("audit")
@guarded
def audit(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    base: Annotated[bool, typer.Option("--base", help="Score with the base model instead: the control, which "
                                       "should read near 0.5.")] = False,
    data_files: Annotated[str | None, typer.Option("--data-files", help="Unseen rows (the training data's format) "
                                                   "instead of the run's held-out rows.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many training rows, and as many "
                                              "unseen ones (a seeded sample).")] = None,
    k: Annotated[float, typer.Option("--k", help="Share of lowest-scored tokens Min-K% and Min-K%++ average.")] = 0.2,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Resamples for the AUC's 95% interval.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per scoring pass (greedy decoding for "
                                            "verbatim extraction runs 4x as many).")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the samples and the bootstrap.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto picks cuda > mps > cpu.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Membership inference on a run: loss, zlib, Min-K%, Min-K%++ and reference attacks, verbatim extraction."""
    from rich.console import Console

    from lancy_trl.evaluation.audit import AuditOptions, run_audit

    console = Console(stderr=json_out, soft_wrap=True)
    report = run_audit(run, AuditOptions(base, data_files, limit, k, bootstrap, batch_size, seed, device), console)
    if json_out:
        typer.echo(json.dumps(report))
        return
    show(console, report)


def show(console: Any, r: dict[str, Any]) -> None:
    from rich.table import Table

    who = "the base model (control)" if r["model"] == "base" else "the run's model"
    table = Table(title=f"{r['run']}: {r['members']} training rows against {r['non_members']} from "
                        f"{r['non_members_from']}, scored by {who} on each row's {r['tokens']} tokens")
    for col in ("attack", "ROC AUC", "95% interval", "TPR at 1% FPR"):
        table.add_column(col)
    for name, a in r["attacks"].items():
        mark = " (best)" if name == r["best"] else ""
        table.add_row(name + mark, f"{a['auc']:.3f}", f"{a['auc_low']:.3f}-{a['auc_high']:.3f}",
                      f"{a['tpr_at_1pct_fpr']:.3f}")
    console.print(table)
    console.print("AUC 0.5: the attack cannot tell training rows from unseen ones; 1.0: it always can.")
    loss = r["answer_loss"]
    console.print(f"mean loss per token: {loss['members']:.3f} on training rows, {loss['non_members']:.3f} on unseen ones")
    v = r["verbatim"]
    console.print(f"verbatim: greedy decoding writes {v['members']:.1%} of training answers exactly "
                  f"({v['non_members']:.1%} of unseen ones)")
    if r["canaries"]:
        c = r["canaries"]
        console.print(f"canaries: mean exposure {c['mean_exposure']:.2f} of {c['max_exposure']:.2f} bits, "
                      f"{c['recited']} of {c['planted']} recited")
    for note in r["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"saved to {r['saved']}")
