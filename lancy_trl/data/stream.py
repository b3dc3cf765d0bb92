"""Streamed corpora for `lancy pretrain --streaming`: read as training goes, tokenized and packed on the fly.

    data = streamed_text(args)   # a DataBundle: train is an IterableDataset, eval the held-out documents

Memory stays flat however large the corpus: datasets reads local files (.txt as one document each, JSON lines, CSV,
parquet; globs expanded) or a hub dataset shard by shard, and TRL tokenizes and packs each thousand documents as the
trainer asks for them. The documents pass through a seeded shuffle buffer; the first --eval-max-batches x
--batch-size of them are held out (saved with the run, scored for perplexity) and the training stream skips exactly
those, so no held-out document is trained on. A stream has no length, so the run needs --max-steps. Several
datasets interleave at --mixture-rates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError

BUFFER = 10_000  # documents in the shuffle buffer


def open_text(name: str, config: str | None, data_files: list[str]) -> tuple[Any, str]:
    """(a stream of {"text": ...} rows, its name) for one --dataset: a local file, a registry entry (from its hub
    repository, or from --data-files in its schema), or a hub id with a `text` column."""
    from datasets import load_dataset

    from lancy_trl.data.registry import lookup
    from lancy_trl.data.sources import LOCAL_BUILDERS, parse_data_files

    local = Path(name).suffix.lower() in LOCAL_BUILDERS and lookup(name) is None
    spec = None if local else lookup(name, config)
    files = ([name] if local else []) + parse_data_files(data_files).get("train", []) if local or data_files else []
    if local and not Path(name).is_file():
        raise LancyError(f"dataset file {name!r} not found; check the path given to --dataset")
    if spec is not None and spec.kind != "pretraining" and not files:
        raise LancyError(f"--streaming reads plain-text corpora; {spec.name} is a {spec.kind} dataset: drop --streaming")
    column = spec.text if spec is not None and spec.text else "text"
    if files:
        builders = {LOCAL_BUILDERS.get(Path(f).suffix.lower()) for f in files}
        if len(builders) != 1 or None in builders:
            raise LancyError(f"--streaming reads files of one kind (.txt, .jsonl, .csv or .parquet); got {', '.join(files)}")
        builder = builders.pop()
        extra = {"sample_by": "document"} if builder == "text" else {}
        stream = load_dataset(builder, data_files=files, split="train", streaming=True, **extra)
        label = Path(files[0]).resolve().parent.name if len(files) > 1 else Path(files[0]).stem
    else:
        hub_id = spec.hub_id if spec is not None else name
        if hub_id is None:
            raise LancyError(f"{name} ships with lancy rather than from a hub repository and is small: drop --streaming")
        stream = load_dataset(hub_id, spec.config if spec is not None else config, split="train", streaming=True)
        label = spec.name if spec is not None else hub_id.split("/")[-1]
    first = next(iter(stream), None)
    if first is None:
        raise LancyError(f"{label} is empty: it has no documents to train on")
    if column not in first:
        raise LancyError(f"{label} has no `{column}` column to stream (its columns: {', '.join(first)}); --streaming "
                         "reads a text column, or .txt files")
    stream = stream.select_columns([column])
    return (stream.rename_column(column, "text") if column != "text" else stream), label


def streamed_text(args: Any) -> Any:
    """The run's data as a stream of documents with a held-out head; --max-steps is required."""
    from datasets import Dataset, interleave_datasets

    from lancy_trl.data.build import DataBundle, _configs, _route_files, check_rates, fingerprint

    if args.max_steps <= 0:
        raise LancyError("--streaming reads the corpus as it trains, so it has no epochs: pass --max-steps N")
    if getattr(args, "canaries", 0):
        raise LancyError("--canaries plants secrets among rows held in memory; drop --streaming or --canaries")
    if args.redact_pii:
        raise LancyError("--redact-pii counts what it replaces before training starts, which a stream cannot: redact "
                         "the files first (`lancy datasets scan` shows what they hold), or drop --streaming")
    configs = _configs(args)
    files = _route_files(list(args.data_files), list(zip(args.dataset, configs)))
    opened = [open_text(n, c, f) for n, c, f in zip(args.dataset, configs, files)]
    rates = check_rates(list(args.mixture_rates), len(opened)) if len(opened) > 1 else None
    stream = opened[0][0] if len(opened) == 1 else interleave_datasets(
        [s for s, _ in opened], probabilities=rates, seed=args.seed, stopping_strategy="all_exhausted")
    stream = stream.shuffle(seed=args.seed, buffer_size=BUFFER)
    n = args.eval_max_batches * args.batch_size
    held = Dataset.from_list(list(stream.take(n)))
    if next(iter(stream.skip(n)), None) is None:
        raise LancyError(f"the corpus has no more than the {n} documents held out for evaluation: stream a larger one, "
                         "or drop --streaming")
    name = "+".join(label for _, label in opened) + ("-mix" if len(opened) > 1 else "")
    stats = {"streamed": True, "held_out_documents": len(held), "train_fingerprint": fingerprint(held),
             "eval_from": f"the first {len(held)} documents of the stream (seed {args.seed}), skipped in training"}
    train = stream.skip(n) if not args.max_examples else stream.skip(n).take(args.max_examples)
    return DataBundle(train=train, eval=held, test=None, name=name, spec=None, stats=stats,
                      kind="pretraining")
