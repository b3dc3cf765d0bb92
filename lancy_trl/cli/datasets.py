"""`lancy datasets list|show|preview`: the dataset registry, and each dataset exactly as the trainer sees it.

    lancy datasets list [--json]
    lancy datasets show glue --dataset-config wnli
    lancy datasets preview takala/financial_phrasebank --dataset-config sentences_allagree -n 3
    lancy datasets preview stanfordnlp/imdb --data-files mirror/imdb/test.parquet --json
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from lancy_trl.cli import app, guarded
from lancy_trl.cli.options import LancyCommand

datasets_app = typer.Typer(help="The dataset registry: list, show and preview datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

NAME = Annotated[str, typer.Argument(help="Registry name (imdb, glue-sst2, ...) or hub id (glue, takala/financial_phrasebank).")]
CONFIG = Annotated[str | None, typer.Option("--dataset-config", help="Hub config (glue: sst2, wnli, ...).")]
JSON = Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")]


LOADS_FROM = {
    "hub": "the hub, or --data-files",
    "script": "--data-files only (its hub loading script no longer runs)",
    "stream": "the hub, streamed (--max-examples), or --data-files",
}


def _splits(spec: Any) -> str:
    return ", ".join(k if v == k else f"{k}={v if isinstance(v, str) else '|'.join(v)}" for k, v in spec.splits.items())


def _labels(spec: Any) -> str:
    if spec.kind == "multiple_choice":
        return "option letters"
    if spec.label.get("from") == "options":
        return "per-row options"
    if not spec.labels:
        return ""
    words = ", ".join(spec.labels[:4]) + (f", ... ({len(spec.labels)})" if len(spec.labels) > 4 else "")
    return words


def _record(spec: Any) -> dict[str, Any]:
    import dataclasses

    record = {k: v for k, v in dataclasses.asdict(spec).items() if v not in (None, (), {}, [], "")}
    record["columns"] = list(spec.columns)
    if spec.labels:
        record["labels"] = {i: w for i, w in enumerate(spec.labels)}
    return record


WIDE = Annotated[bool, typer.Option("--wide", help="Every column: hub id and config, splits, license.")]


@datasets_app.command("list", cls=LancyCommand)
@guarded
def list_datasets(json_out: JSON = False, wide: WIDE = False) -> None:
    """Every registry dataset: name, task and labels (--wide adds hub id, splits and license; --json everything)."""
    from lancy_trl.data.registry import entries

    if json_out:
        for spec in entries().values():
            typer.echo(json.dumps(_record(spec)))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(entries())} datasets (lancy datasets show NAME for one; --wide for hub ids)", box=None)
    table.add_column("name", no_wrap=True)  # names and hub ids are copied: never broken
    if wide:
        table.add_column("hub id [config]", no_wrap=True)
    table.add_column("task", no_wrap=True)
    table.add_column("labels")
    if wide:
        table.add_column("splits")
        table.add_column("license")
    for spec in entries().values():
        row = [spec.name, spec.kind.replace("_", " "), _labels(spec)]
        if wide:
            row[1:1] = [_hub(spec)]
            row += [_splits(spec), spec.license]
        table.add_row(*row)
    Console(width=None if not wide else 10_000).print(table)


def _hub(spec: Any) -> str:
    hub = spec.hub_id or "(shipped with lancy)"
    if spec.config:
        hub += f" [{spec.config}]"
    elif spec.configs:
        hub += f" [{spec.default_config}, +{len(spec.configs) - 1}]"
    return hub + (f" ({spec.loader})" if spec.loader != "hub" else "")


@datasets_app.command("show", cls=LancyCommand)
@guarded
def show(name: NAME, dataset_config: CONFIG = None, json_out: JSON = False) -> None:
    """Everything in one entry (schema, label words in id order, template, notes) and one rendered example."""
    from lancy_trl.data import adapters
    from lancy_trl.data.registry import require, sample_rows

    spec = require(name, dataset_config)
    rows = sample_rows(spec.name)
    split = next(iter(rows))
    example = next(
        (out[0] for i, row in enumerate(rows[split]) for out in [_try(adapters.from_spec, row, spec, i)] if out), None
    )
    template = adapters.load_template(spec.template) if spec.template else None
    if json_out:
        typer.echo(json.dumps({**_record(spec), "template_text": template, "example": example}))
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    console.print(f"[bold]{spec.name}[/]: {escape(spec.display_name)}  ({spec.kind}, task {spec.task})")
    lines = [
        ("aliases", ", ".join((*spec.aliases, *spec.hub_aliases))),
        ("configs", ", ".join(spec.configs) + (f" (default {spec.default_config})" if spec.default_config else "")),
        ("loads from", LOADS_FROM[spec.loader] if spec.hub_id else "the copy shipped with lancy"),
        ("columns read", ", ".join(spec.columns)),
        ("splits", _splits(spec)),
        ("license", spec.license),
        ("notes", spec.notes),
    ]
    for key, value in lines:
        if value:
            console.print(f"  [cyan]{key:13s}[/]{escape(value)}")
    if spec.labels:
        console.print("  [cyan]labels[/]       " + escape(", ".join(f"{i} {w}" for i, w in enumerate(spec.labels))))
    if spec.label.get("from") == "bins":
        low, high = spec.label["bins"]
        console.print(f"  [cyan]binned[/]       {spec.label['column']} < {low} negative; < {high} neutral; else positive")
    if template:
        console.print(f"  [cyan]template[/]     templates/prompts/{spec.template}.yaml")
        for role in ("system", "user"):
            console.print(f"    [dim]{role}:[/] " + escape(template[role]).replace("\n", "\n      "))
    if example:
        console.print(f"  [cyan]example[/]      (a sample row written for lancy-trl in the {split} split's schema)")
        _print_example(console, example)


def _try(fn: Any, *args: Any) -> list[dict[str, Any]]:
    from lancy_trl.data.adapters import Skip

    try:
        return fn(*args, None)
    except Skip:
        return []


def _print_example(console: Any, example: dict[str, Any]) -> None:
    from rich.markup import escape

    if "text" in example:
        console.print("    [dim]text:[/] " + escape(example["text"]))
        return
    for m in example["prompt"] + example["completion"]:
        console.print(f"    [dim]{m['role']}:[/] " + escape(m["content"]).replace("\n", "\n      "))


@datasets_app.command("preview", cls=LancyCommand)
@guarded
def preview(
    name: NAME,
    dataset_config: CONFIG = None,
    data_files: Annotated[
        list[str] | None, typer.Option("--data-files", help="Local files in the hub's schema: PATH or SPLIT=PATH.")
    ] = None,
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="How many examples.")] = 3,
    split: Annotated[str | None, typer.Option("--split", help="Split to show (default: train, else the first).")] = None,
    system_prompt: Annotated[str | None, typer.Option("--system-prompt", help="Replace the template's system message.")] = None,
    max_examples: Annotated[int | None, typer.Option("--max-examples", help="Rows to stream from huge corpora.")] = None,
    json_out: JSON = False,
) -> None:
    """The first examples exactly as the trainer sees them: chat fields, and the label/target under `target`."""
    from lancy_trl.data import adapters
    from lancy_trl.data.sources import load_source
    from lancy_trl.errors import LancyError

    source = load_source(name, dataset_config, data_files or [], max_examples or n)
    wanted = split or "train"
    raw_split = source.split(wanted) or (None if split else next(iter(source.raw), None))
    if raw_split is None:
        raise LancyError(f"{source.name} has no split {wanted!r} (found {', '.join(source.raw)}); pass --split")
    rows = source.raw[raw_split]
    shown: list[dict[str, Any]] = []
    skipped = 0
    fmt = adapters.detect_format(rows.column_names, name) if source.spec is None else None
    for i, row in enumerate(rows):
        if len(shown) >= n:
            break
        if source.spec is None:
            try:
                shown.append(adapters.from_local(row, fmt or "", system_prompt))
            except adapters.Skip:
                skipped += 1
            continue
        try:
            shown.extend(adapters.from_spec(row, source.spec, i, system_prompt)[: n - len(shown)])
        except adapters.Skip:
            skipped += 1
    if json_out:
        for example in shown:
            typer.echo(json.dumps(example, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    where = f"{source.spec.display_name if source.spec else name}, split {raw_split} ({len(rows):,} rows, from {source.origin})"
    console.print(f"[bold]{source.name}[/]: {escape(where)}" + (f"; {skipped} unlabelled row(s) skipped" if skipped else ""))
    for k, example in enumerate(shown, 1):
        console.rule(f"example {k}" + (f" - target: {example['target']}" if "target" in example else ""))
        _print_example(console, example)


@datasets_app.command("scan", cls=LancyCommand)
@guarded
def scan(
    name: Annotated[str | None, typer.Argument(help="Registry name, hub id or local file (or use --data-files).")] = None,
    dataset_config: CONFIG = None,
    data_files: Annotated[
        list[str] | None, typer.Option("--data-files", help="Local files: PATH or SPLIT=PATH (globs work).")
    ] = None,
    region: Annotated[str, typer.Option("--region", help="Country whose national phone format is read.")] = "US",
    max_examples: Annotated[int | None, typer.Option("--max-examples", help="Rows to stream from huge corpora.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object: counts per kind and where each finding is.")] = False,
) -> None:
    """Personal and secret data in a dataset's text: e-mails, phones, IBANs, cards, SSNs, IPs, API keys, crypto."""
    from collections import Counter, defaultdict

    from lancy_trl.data.sources import files_as_dataset, load_source
    from lancy_trl.errors import LancyError
    from lancy_trl.privacy import pii

    if name is None:
        if not data_files:
            raise LancyError("nothing to scan: pass a dataset name or file, or --data-files PATH")
        name, data_files = files_as_dataset(data_files)
    source = load_source(name, dataset_config, data_files or [], max_examples)
    counts: Counter = Counter()
    where: dict[str, list[str]] = defaultdict(list)
    examples: dict[str, list[str]] = defaultdict(list)
    rows = 0
    for split, ds in source.raw.items():
        locate = source.where(split)
        for i, row in enumerate(ds):
            rows += 1
            text = "\n".join(_strings(row))  # every text cell, messages and nested lists included
            for f in pii.scan(text, region):
                counts[f.kind] += 1
                where[f.kind].append(locate(i))
                if len(examples[f.kind]) < 3:
                    examples[f.kind].append(f"{f.masked()} ({locate(i)})")
    if json_out:
        typer.echo(json.dumps({"dataset": source.name, "rows": rows, "counts": dict(counts), "findings": dict(where),
                               "not_detected": pii.NOT_DETECTED}))
        return
    typer.echo(f"{source.name}: {rows:,} rows scanned, {sum(counts.values())} finding(s)")
    for kind in pii.KINDS:
        if counts[kind]:
            typer.echo(f"  {kind:8s} {counts[kind]:6d}   e.g. " + "; ".join(examples[kind]))
    typer.echo(f"  not detected: {pii.NOT_DETECTED}")


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a cell, row, list of messages or nested structure."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
