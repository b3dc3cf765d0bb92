"""From `--dataset` / `--data-files` to train / eval / test chat datasets, with a record of what was used.

    bundle = build_data(args)      # bundle.train, bundle.eval, bundle.name, bundle.stats
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lancy_trl.data import adapters
from lancy_trl.data.registry import DatasetSpec, lookup, require
from lancy_trl.errors import LancyError

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
PACKAGE_DATA = Path(__file__).parent


@dataclass
class DataBundle:
    train: Any
    eval: Any
    test: Any | None
    name: str  # run-name piece: "finsent-sentiment", "my_data"
    spec: DatasetSpec | None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels if self.spec and self.spec.kind == "classification" else ()


def parse_data_files(values: list[str]) -> dict[str, list[str]]:
    """`PATH` (train) or `SPLIT=PATH` entries -> split -> paths; every path must exist."""
    files: dict[str, list[str]] = {}
    for value in values:
        split, eq, path = value.partition("=")
        split, path = (split, path) if eq else ("train", value)
        files.setdefault(split, []).append(path)
    missing = [p for ps in files.values() for p in ps if not Path(p).is_file()]
    if missing:
        raise LancyError(f"data file(s) not found: {', '.join(missing)}; check the paths given to --data-files")
    return files


def read_files(files: dict[str, list[str]]) -> dict[str, Any]:
    """Local files -> {split: Dataset}; the builder follows the suffix."""
    from datasets import load_dataset

    suffixes = {Path(p).suffix.lower() for ps in files.values() for p in ps}
    unknown = suffixes - set(LOCAL_BUILDERS)
    if unknown or len({LOCAL_BUILDERS[s] for s in suffixes - unknown}) > 1:
        raise LancyError(
            f"cannot read {', '.join(sorted(suffixes))} files together; use one of .jsonl, .json, .csv, .parquet"
        )
    builder = LOCAL_BUILDERS[suffixes.pop()]
    try:
        loaded = load_dataset(builder, data_files=files)
    except Exception as e:  # malformed JSON/CSV surfaces as several library exception types
        raise LancyError(f"cannot read {', '.join(p for ps in files.values() for p in ps)}: {str(e)[:200]}") from None
    return dict(loaded)


def load_source(name: str, data_files: list[str]) -> tuple[DatasetSpec | None, dict[str, Any]]:
    """Raw splits of one dataset: a local file, a registry entry's shipped or --data-files copy."""
    path = Path(name)
    if path.suffix.lower() in LOCAL_BUILDERS and lookup(name) is None:
        if not path.is_file():
            raise LancyError(f"dataset file {name!r} not found; check the path given to --dataset")
        return None, read_files({"train": [name]})
    spec = require(name)
    if data_files:
        return spec, read_files(parse_data_files(data_files))
    if spec.package_files:
        return spec, read_files({split: [str(PACKAGE_DATA / f)] for split, f in spec.package_files.items()})
    raise LancyError(f"{spec.name} loads from the hub, which lancy reaches in a later release; pass --data-files")


def to_chat(rows: Any, spec: DatasetSpec | None, system_prompt: str | None, where: str) -> Any:
    if len(rows) == 0:
        raise LancyError(f"{where} is empty: it has no rows to train on")
    if spec is None:
        fmt = adapters.detect_format(rows.column_names, where)
        return rows.map(lambda r: adapters.from_local(r, fmt, system_prompt), remove_columns=rows.column_names)
    return rows.map(
        lambda r, i: adapters.from_spec(r, spec, i, system_prompt), with_indices=True, remove_columns=rows.column_names
    )


def build_data(args: Any) -> DataBundle:
    """Train / eval / test chat datasets for a run; a missing validation split is a seeded slice of train."""
    if len(args.dataset) != 1 or args.mixture_rates:
        raise LancyError("dataset mixtures arrive with the dataset registry; pass one --dataset and no --mixture-rates")
    if args.dataset_config:
        raise LancyError("--dataset-config selects a hub config, which arrives with the dataset registry; "
                         "pass the files with --data-files instead")
    name = args.dataset[0]
    spec, raw = load_source(name, args.data_files)
    if "train" not in raw:
        raise LancyError(f"{name} has no train split (found {', '.join(raw)}); pass --data-files train=PATH")
    train = to_chat(raw["train"], spec, args.system_prompt, f"{name} (train)")
    stats: dict[str, Any] = {"source_rows": {split: len(ds) for split, ds in raw.items()}}
    validation = next((raw[s] for s in ("validation", "valid", "dev") if s in raw), None)
    if validation is not None:
        eval_ = to_chat(validation, spec, args.system_prompt, f"{name} (validation)")
        stats["eval_from"] = "validation split"
    else:
        if len(train) < 2 or args.eval_fraction == 0:
            eval_ = None
        else:
            parts = train.train_test_split(test_size=args.eval_fraction, seed=args.seed, shuffle=True)
            train, eval_ = parts["train"], parts["test"]
            stats["eval_from"] = f"{args.eval_fraction:.0%} of train held out (seed {args.seed})"
    test = to_chat(raw["test"], spec, args.system_prompt, f"{name} (test)") if "test" in raw else None
    if args.max_examples:
        train = train.select(range(min(args.max_examples, len(train))))
    stats.update(
        train_examples=len(train),
        eval_examples=len(eval_) if eval_ is not None else 0,
        test_examples=len(test) if test is not None else 0,
        train_fingerprint=fingerprint(train),
    )
    label = f"{spec.name}-{spec.task}" if spec else Path(name).stem
    return DataBundle(train, eval_, test, label, spec, stats)


def fingerprint(ds: Any) -> str:
    """A short content hash of the rows a run trained on, for the run directory's record."""
    h = hashlib.sha256()
    for row in ds:
        h.update(repr(sorted(row.items())).encode())
    return h.hexdigest()[:16]
