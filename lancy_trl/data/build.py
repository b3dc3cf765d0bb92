"""From `--dataset` / `--dataset-config` / `--data-files` / `--mixture-rates` to train / eval / test chat datasets,
with a record of what was used.

    bundle = build_data(args)      # bundle.train, bundle.eval, bundle.test, bundle.name, bundle.stats, bundle.notes
    rows, skipped = convert(source.raw["validation"], source.spec, None, "glue-sst2 (validation)")
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lancy_trl.data import adapters, preferences
from lancy_trl.data.registry import DatasetSpec, lookup
from lancy_trl.data.sources import CANONICAL, LOCAL_BUILDERS, Source, load_source, quiet
from lancy_trl.errors import LancyError


@dataclass
class DataBundle:
    train: Any
    eval: Any
    test: Any | None
    name: str  # run-name piece: "finsent-sentiment", "imdb+glue-sst2-mix", "my_data"
    spec: DatasetSpec | None  # the entry when the run trains on one registry dataset
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should know, printed when the run starts
    label_words: tuple[str, ...] = ()
    kind: str = "mixture"  # the task: a registry kind, one inferred from a local file, or "mixture"
    canaries: list[dict[str, Any]] = field(default_factory=list)  # secrets planted in train (lancy_trl/privacy/canaries.py)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.label_words


# ---------------------------------------------------------------------------------------------
# Converting


def convert(rows: Any, spec: DatasetSpec | None, system_prompt: str | None, where: str,
            required: bool = True, locate: Any = None) -> tuple[Any, Counter]:
    """Raw rows -> chat rows, and the count of rows skipped by reason (empty answers, unlabelled rows); never a row
    changed to fit. All rows skipped: an error when required, else (None, counts). `locate(i)` names row i in errors
    (`FILE line N`); by default `WHERE row N`, 1-based."""
    from datasets import Dataset

    if len(rows) == 0:
        if required:
            raise LancyError(f"{where} is empty: it has no rows to train on")
        return None, Counter()
    locate = locate or (lambda i: f"{where} row {i + 1}")
    fmt = adapters.detect_format(rows.column_names, where) if spec is None else None
    out: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    for i, row in enumerate(rows):
        try:
            if spec is not None:
                out.extend(adapters.from_spec(row, spec, locate(i), system_prompt))
            elif fmt in preferences.FORMATS:
                out.append(preferences.pair(row, fmt, system_prompt, locate(i)))
            else:
                out.append(adapters.from_local(row, fmt or "", system_prompt, locate(i)))
        except (adapters.Skip, preferences.Skip) as why:
            skipped[str(why)] += 1
    if not out:
        if required:
            counts = ", ".join(f"{n} {why}" for why, n in skipped.items())
            raise LancyError(f"{where}: every one of its {len(rows)} rows was skipped ({counts}); nothing to train on")
        return None, skipped
    return Dataset.from_list(out), skipped


def _route_files(values: list[str], sources: list[tuple[str, str | None]]) -> list[list[str]]:
    """--data-files per dataset: all of them for one dataset; with several, each prefixed `DATASET:` (a name as
    given to --dataset, a registry name, or its 1-based position)."""
    if len(sources) == 1:
        return [list(values)]
    routed: list[list[str]] = [[] for _ in sources]
    for value in values:
        prefix, colon, rest = value.partition(":")
        index = None
        if colon:
            for i, (name, config) in enumerate(sources):
                spec = lookup(name, config) if Path(name).suffix.lower() not in LOCAL_BUILDERS else None
                if prefix in (name, str(i + 1)) or (spec is not None and prefix in (spec.name, *spec.aliases)):
                    index = i
                    break
        if index is None:
            raise LancyError(
                f"--data-files {value}: with several --dataset, prefix each file with its dataset, e.g. "
                f"{sources[0][0]}:train=PATH or 1:train=PATH"
            )
        routed[index].append(rest)
    return routed


def _held_out(train: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    if len(train) < 2 or fraction == 0:
        return train, None
    parts = train.train_test_split(test_size=fraction, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def source_splits(source: Source, args: Any) -> tuple[Any, Any, Any, dict[str, Any], list[str]]:
    """(train, eval, test, stats, notes) for one dataset: the entry's split map, label hygiene, and a seeded
    held-out slice of train when there is no validation split."""
    spec, name, notes = source.spec, source.name, []
    stats: dict[str, Any] = {"origin": source.origin, "source_rows": {s: len(d) for s, d in source.raw.items()}}
    if spec is not None and spec.config:
        stats["config"] = spec.config
    train_split, val_split, test_split = (source.split(s) for s in CANONICAL)
    if train_split is None:
        fallback = val_split or test_split or next(iter(source.raw), None)  # never test while validation exists
        if fallback is None:
            raise LancyError(f"{name} has no rows; pass --data-files train=PATH")
        notes.append(f"{name} has no train split: training on its {fallback} split, so its scores there are not held out")
        train_split, test_split = fallback, (None if fallback == test_split else test_split)
        val_split = None if fallback == val_split else val_split
    skipped: dict[str, dict[str, int]] = {}

    def chat(split: str | None, required: bool) -> Any:
        if split is None:
            return None
        rows, why = convert(source.raw[split], spec, args.system_prompt, f"{name} ({split})", required, source.where(split))
        if why:
            skipped[split] = dict(why)
        return rows

    train = chat(train_split, True)
    eval_ = chat(val_split, False)
    if eval_ is not None:
        stats["eval_from"] = f"{val_split} split"
    elif len(train) >= 2 and args.eval_fraction > 0:
        train, eval_ = _held_out(train, args.eval_fraction, args.seed)
        stats["eval_from"] = f"{args.eval_fraction:.0%} of {train_split} held out (seed {args.seed})"
    test = chat(test_split, False)
    stats["splits"] = {"train": train_split, "validation": val_split, "test": test_split}
    if skipped:
        stats["skipped"] = skipped
        for split, why in skipped.items():
            origin = ", ".join(source.files.get(split, [])) or f"{name} ({split})"
            notes.append(f"{origin}: dropped " + ", ".join(f"{n} row(s): {w}" for w, n in why.items()))
    if spec is not None and "drop_image" in spec.clean:
        notes.append(f"{name}: text-only training, the image column is dropped")
    return train, eval_, test, stats, notes


# ---------------------------------------------------------------------------------------------
# Mixtures


def check_rates(rates: list[float], n: int) -> list[float] | None:
    if not rates:
        return None
    if len(rates) != n:
        raise LancyError(f"--mixture-rates has {len(rates)} value(s) for {n} dataset(s); give one rate per --dataset")
    if any(not math.isfinite(r) or r <= 0 for r in rates):
        raise LancyError(f"--mixture-rates must all be positive (got {rates})")
    if abs(sum(rates) - 1) > 1e-6:
        raise LancyError(f"--mixture-rates must sum to 1 (they sum to {sum(rates):g}); e.g. --mixture-rates 0.7 0.3")
    return rates


def mixture_counts(sizes: list[int], rates: list[float]) -> list[int]:
    """Examples to draw per source: the mixture keeps the sources' total size, split by rate (largest remainder)."""
    total = sum(sizes)
    exact = [r * total for r in rates]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(rates)), key=lambda i: exact[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return counts


def sample(n_rows: int, n: int, rng: random.Random) -> list[int]:
    """n row indices out of n_rows: without replacement when n <= n_rows, else whole copies plus a random rest."""
    copies, rest = divmod(n, n_rows)
    indices = [i for _ in range(copies) for i in range(n_rows)] + rng.sample(range(n_rows), rest)
    rng.shuffle(indices)
    return indices


def mix(trains: list[Any], names: list[str], rates: list[float] | None, seed: int) -> tuple[Any, dict[str, Any]]:
    """One shuffled training set from several, sampled by rate (oversampling a small source when asked)."""
    from datasets import concatenate_datasets

    if any(("text" in t.column_names) != ("text" in trains[0].column_names) for t in trains):
        raise LancyError("cannot mix pretraining text with chat examples in one run; train on them in separate runs")
    sizes = [len(t) for t in trains]
    counts = mixture_counts(sizes, rates) if rates else sizes
    rng = random.Random(seed)
    parts, realised = [], {}
    for t, name, size, n, rate in zip(trains, names, sizes, counts, rates or [s / sum(sizes) for s in sizes]):
        t = _drop_choices(t)
        part = t.select(sample(size, n, rng)) if rates else t
        parts.append(part.add_column("source", [name] * len(part)))
        realised[name] = {"rate": round(rate, 4), "source_examples": size, "examples": n, "epochs_of_source": round(n / size, 3)}
    mixed = concatenate_datasets(parts).shuffle(seed=seed)
    return mixed, realised


# ---------------------------------------------------------------------------------------------


def _configs(args: Any) -> list[str | None]:
    n, configs = len(args.dataset), list(args.dataset_config)
    if not configs:
        return [None] * n
    if len(configs) != n:
        raise LancyError(
            f"--dataset-config has {len(configs)} value(s) for {n} dataset(s); give one per --dataset, None where a "
            "dataset has no config (--dataset imdb --dataset glue --dataset-config None --dataset-config sst2)"
        )
    return [None if c in ("None", "none", "") else c for c in configs]


def build_data(args: Any, transform: Any = None, pairs: bool = False) -> DataBundle:
    """Train / eval / test chat datasets for a run: one dataset, or a mixture sampled by --mixture-rates.
    `transform` rewrites each source's splits before they are mixed (pretraining: every row as plain text);
    preference pairs are refused unless `pairs` (`lancy dpo`)."""
    if not args.dataset:
        raise LancyError("no --dataset given; name a registry dataset (`lancy datasets list`) or a local file")
    configs = _configs(args)
    rates = check_rates(list(args.mixture_rates), len(args.dataset))
    if rates and len(args.dataset) == 1:
        rates = None  # one dataset at rate 1
    files = _route_files(list(args.data_files), list(zip(args.dataset, configs)))
    sources = [load_source(n, c, f, args.max_examples) for n, c, f in zip(args.dataset, configs, files)]
    redacted: Counter = Counter()
    if getattr(args, "redact_pii", False):  # before any other rewrite, so no value reaches the run directory
        transform = _redacting(transform, redacted)
    with quiet():
        bundle = _assemble(sources, args, rates, transform, pairs)
    if getattr(args, "redact_pii", False):
        bundle.stats["redacted"] = dict(redacted)
        what = ", ".join(f"{n} {kind}" for kind, n in redacted.most_common())
        bundle.notes.append(f"--redact-pii: replaced {what} with typed placeholders" if what else
                            "--redact-pii: no personal or secret data found")
    return bundle


def _redacting(then: Any, counts: Counter) -> Any:
    """A split rewrite that replaces personal and secret data first (lancy_trl/privacy/pii.py), then applies `then`."""
    from lancy_trl.privacy.pii import redact_rows

    def transform(ds: Any) -> Any:
        ds = redact_rows(ds, counts)
        return then(ds) if then is not None else ds

    return transform


def _assemble(sources: list[Source], args: Any, rates: list[float] | None, transform: Any = None,
              pairs: bool = False) -> DataBundle:
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise LancyError(f"a dataset is named twice in the mixture ({', '.join(names)}); give each one once")
    trains, evals, tests, per_source, notes = [], [], [], {}, []
    for source in sources:
        train, eval_, test, stats, source_notes = source_splits(source, args)
        stats = {**stats, "kind": task_kind(source.spec, train), "labels": list(label_words(source.spec, train))}
        if stats["kind"] == "preference" and not pairs:
            raise LancyError(f"{source.name} holds preference pairs: train on them with `lancy dpo --dataset "
                             f"{source.given}` (this command learns from one answer a row)")
        if transform is not None:
            train, eval_, test = transform(train), transform(eval_), transform(test)
        trains.append(train)
        evals.append(eval_)
        tests.append(test)
        per_source[source.name] = stats
        notes += source_notes
    if len(sources) == 1:
        train, eval_, test, spec = trains[0], evals[0], tests[0], sources[0].spec
        stats = dict(per_source[names[0]])
        name = f"{spec.name}-{spec.task}" if spec else Path(sources[0].given).stem
    else:
        train, realised = mix(trains, names, rates, args.seed)
        present = [(_drop_choices(e), n) for e, n in zip(evals, names) if e is not None]
        eval_ = _concat([e.add_column("source", [n] * len(e)) for e, n in present]) if present else None
        test, spec = None, None
        stats = {"sources": per_source, "mixture": realised}
        name = "+".join(names) + "-mix"
    if args.max_examples and len(train) > args.max_examples:  # a seeded sample: a sorted file gives one class otherwise
        stats["max_examples"] = f"{args.max_examples} of {len(train)} training rows, sampled with seed {args.seed}"
        train = train.select(sorted(random.Random(args.seed).sample(range(len(train)), args.max_examples)))
    stats.update(
        train_examples=len(train),
        eval_examples=len(eval_) if eval_ is not None else 0,
        test_examples=len(test) if test is not None else 0,
        train_fingerprint=fingerprint(train),
    )
    kind = stats.pop("kind") if len(sources) == 1 else "mixture"
    labels = tuple(stats.pop("labels")) if len(sources) == 1 else ()
    return DataBundle(train, eval_, test, name, spec, stats, notes, labels, kind)


def _drop_choices(ds: Any) -> Any:
    """Per-row answer options matter to eval, not training; sources without them could not be concatenated."""
    return ds.remove_columns(["choices"]) if "choices" in ds.column_names else ds


def _concat(parts: list[Any]) -> Any:
    from datasets import concatenate_datasets

    return concatenate_datasets(parts)


MAX_LABELS = 20  # a local file whose answers take at most this many short values is a classification task


def few_words(targets: Any) -> tuple[str, ...]:
    """The label words when a file's answers form a small set of short words (each used twice on average at least),
    sorted; else ()."""
    targets = [str(t).strip() for t in targets]
    distinct = set(targets)
    short = all(len(t.split()) <= 4 and len(t) <= 40 for t in distinct)
    return tuple(sorted(distinct)) if 2 <= len(distinct) <= MAX_LABELS and len(distinct) * 2 <= len(targets) and short else ()


def infer_kind(rows: Any) -> str:
    """The task of a generic local file: `pretraining` for text, `preference` for chosen/rejected pairs;
    `classification` when its answers are a few short words; else `qa`, scored by exact match and token F1."""
    if "text" in rows.column_names:
        return "pretraining"
    if "chosen" in rows.column_names:
        return "preference"
    return "classification" if few_words(rows["target"]) else "qa"


def task_kind(spec: DatasetSpec | None, rows: Any) -> str:
    return spec.kind if spec is not None else infer_kind(rows)


def label_words(spec: DatasetSpec | None, train: Any) -> tuple[str, ...]:
    """The label set of a classification run (or of preference pairs whose answers are label words): the entry's
    words, the options its rows carry (AdaptLLM), or the answers a local file's rows take (sorted)."""
    kind = task_kind(spec, train)
    if kind not in ("classification", "preference"):
        return ()
    if spec is None:
        return few_words(train["target"]) if kind == "preference" else tuple(sorted({str(t).strip() for t in train["target"]}))
    if spec.labels or kind == "preference":
        return spec.labels
    return tuple(dict.fromkeys(w for ws in train["choices"] for w in ws))


def fingerprint(ds: Any) -> str:
    """A short content hash of the rows a run trained on, for the run directory's record."""
    h = hashlib.sha256()
    for row in ds:
        h.update(repr(sorted(row.items())).encode())
    return h.hexdigest()[:16]
