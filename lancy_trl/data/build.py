"""From `--dataset` / `--dataset-config` / `--data-files` / `--mixture-rates` to train / eval / test chat datasets,
with a record of what was used.

    bundle = build_data(args)      # bundle.train, bundle.eval, bundle.test, bundle.name, bundle.stats, bundle.notes
    source = load_source("glue", "sst2", ["mirror/sst2/validation.parquet"])
    rows, skipped = convert(source.raw["validation"], source.spec, None, "glue-sst2 (validation)")
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from lancy_trl.data import adapters
from lancy_trl.data.registry import DatasetSpec, lookup, require
from lancy_trl.errors import LancyError

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
PACKAGE_DATA = Path(__file__).parent
CANONICAL = ("train", "validation", "test")


@dataclass
class Source:
    """One dataset of a run: its registry entry (None for a generic local file) and raw rows by source split."""

    given: str  # the name as the user wrote it
    spec: DatasetSpec | None
    raw: dict[str, Any]
    origin: str  # "hub", "files" or "package"
    files: dict[str, list[str]] = field(default_factory=dict)  # split -> the local files it was read from

    def where(self, split: str) -> Any:
        """row index -> where that row is, for messages: `FILE line N` for JSON lines, `FILE row N` otherwise."""
        return row_locator(self.files.get(split, []), f"{self.name} ({split})")

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else Path(self.given).stem

    def split(self, split: str) -> str | None:
        """The raw split holding a canonical split (train / validation / test) or a source split by its own name."""
        if self.spec is None:
            aliases = {"validation": ("validation", "valid", "dev")}.get(split, (split,))
            return next((s for s in aliases if s in self.raw), None)
        found = self.spec.source_split(split, list(self.raw))
        if found is None and self.origin == "files" and split in self.raw:
            return split  # `--data-files test=FILE` for an entry whose hub dataset has no such split
        return found


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
    canaries: list[dict[str, Any]] = field(default_factory=list)  # secrets planted in train (lancy_trl/canaries.py)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.label_words


# ---------------------------------------------------------------------------------------------
# Reading


def infer_split(path: str, known: list[str]) -> str:
    """The split a file holds, from its name: `test.parquet`, `validation_matched-00000-of-00001.parquet`; else train."""
    stem = Path(path).name.lower()
    matches = [k for k in known if stem.startswith(k.lower())]
    return max(matches, key=len) if matches else "train"


def parse_data_files(values: list[str], known: list[str] | None = None) -> dict[str, list[str]]:
    """`PATH` or `SPLIT=PATH` entries -> split -> paths; every path must exist. A bare path's split is read from its
    file name when it starts with a split name (test.parquet), else it is train."""
    import glob

    files: dict[str, list[str]] = {}
    for value in values:
        split, eq, path = value.partition("=")
        split, path = (split, path) if eq else (infer_split(value, known or list(CANONICAL)), value)
        matches = sorted(glob.glob(path)) if glob.has_magic(path) else [path]  # "reports/*.txt", quoted for lancy
        if not matches:
            raise LancyError(f"--data-files {path!r} matches no file; check the pattern")
        files.setdefault(split, []).extend(matches)
    missing = [p for ps in files.values() for p in ps if not Path(p).is_file()]
    if missing:
        raise LancyError(f"data file(s) not found: {', '.join(missing)}; check the paths given to --data-files")
    return files


def files_as_dataset(values: list[str]) -> tuple[str, list[str]]:
    """--data-files given without a dataset (a folder of text, a file to scan): the first training file stands for
    the dataset, the others follow as SPLIT=PATH; globs expanded, every path checked."""
    files = parse_data_files(values)
    if "train" not in files:
        raise LancyError("--data-files names no training file; pass PATH or train=PATH (globs work)")
    first, *rest = files.pop("train")
    return first, [f"train={p}" for p in rest] + [f"{s}={p}" for s, ps in files.items() for p in ps]


def read_at_label_txt(path: str) -> list[dict[str, str]]:
    """Financial PhraseBank's raw files: `sentence@label` lines in ISO-8859-1."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="iso-8859-1").splitlines(), 1):
        if not line.strip():
            continue
        sentence, at, label = line.rpartition("@")
        if not at:
            raise LancyError(f"{path} line {n}: expected `sentence@label`; is this Financial PhraseBank's raw .txt?")
        rows.append({"sentence": sentence.strip(), "label": label.strip()})
    return rows


def check_file(path: str) -> None:
    """A local file lancy can read: not empty, and for JSON lines every line an object (errors name file and line)."""
    import json

    p = Path(path)
    if p.suffix.lower() == ".jsonl":
        if not jsonl_lines(path):
            raise LancyError(f"{path} is empty: it has no rows; check the file")
    elif p.stat().st_size == 0 or not p.read_bytes().strip():
        raise LancyError(f"{path} is empty: it has no rows; check the file")
    elif p.suffix.lower() == ".csv":
        with p.open(encoding="utf-8", errors="replace") as fh:
            if sum(1 for line in fh if line.strip()) < 2:
                raise LancyError(f"{path} has a header but no rows; check the file")
    elif p.suffix.lower() == ".json":
        try:
            json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            at = f" line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
            raise LancyError(f"{path}{at}: not valid JSON; fix the file, or write one "
                             "object per line as .jsonl") from None


def jsonl_lines(path: str) -> list[int]:
    """The 1-based numbers of a JSON-lines file's rows (blank lines skipped), each checked to be a JSON object; an
    error names the first bad line. Read once per version of the file (the check and the row locator share it)."""
    p = Path(path)
    return _jsonl_lines(path, p.stat().st_mtime_ns, p.stat().st_size)


@cache
def _jsonl_lines(path: str, mtime: int, size: int) -> list[int]:
    import json

    numbers = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                why = e.args[0].split(":")[0]
                raise LancyError(f"{path} line {n}: not valid JSON ({why}); fix or remove the line") from None
            if not isinstance(row, dict):
                raise LancyError(f"{path} line {n}: expected a JSON object with named columns, got {type(row).__name__}")
            numbers.append(n)
    return numbers


def row_locator(paths: list[str], fallback: str) -> Any:
    """row index -> `FILE line N` (JSON lines: the file's own line numbers) or `FILE row N` (1-based)."""
    if len(paths) == 1 and not paths[0].lower().endswith(".jsonl"):
        return lambda i: f"{paths[0]} row {i + 1}"
    if not paths or not all(p.lower().endswith(".jsonl") for p in paths):
        return lambda i: f"{fallback} row {i + 1}"
    lines = [(p, n) for p in paths for n in jsonl_lines(p)]
    return lambda i: f"{lines[i][0]} line {lines[i][1]}" if i < len(lines) else f"{fallback} row {i + 1}"


def read_files(files: dict[str, list[str]], spec: DatasetSpec | None = None) -> dict[str, Any]:
    """Local files -> {split: Dataset}; the builder follows the suffix."""
    from datasets import Dataset, load_dataset

    for path in (p for ps in files.values() for p in ps):
        check_file(path)

    suffixes = {Path(p).suffix.lower() for ps in files.values() for p in ps}
    if suffixes == {".txt"} and spec is not None and spec.local_format == "at_label_txt":
        return {split: Dataset.from_list([r for p in paths for r in read_at_label_txt(p)]) for split, paths in files.items()}
    unknown = suffixes - set(LOCAL_BUILDERS)
    if unknown or len({LOCAL_BUILDERS[s] for s in suffixes - unknown}) > 1:
        raise LancyError(
            f"cannot read {', '.join(sorted(suffixes))} files together; use one of .jsonl, .json, .csv, .parquet"
        )
    builder = LOCAL_BUILDERS[suffixes.pop()]
    if builder == "text" and spec is not None:
        raise LancyError(f"{spec.name} does not read .txt files; use .jsonl, .json, .csv or .parquet")
    with quiet():  # local files load in moments; a bar per split is noise
        try:  # a .txt file is one document (a filing, a report), read as the `text` column
            loaded = load_dataset(builder, data_files=files, **({"sample_by": "document"} if builder == "text" else {}))
        except Exception as e:  # malformed JSON/CSV surfaces as several library exception types
            raise LancyError(f"cannot read {', '.join(p for ps in files.values() for p in ps)}: {str(e)[:200]}") from None
    return dict(loaded)


@contextmanager
def quiet() -> Iterator[None]:
    """No datasets progress bars inside (hub downloads, outside it, keep theirs)."""
    import datasets

    bars = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not bars:
            datasets.enable_progress_bars()


def load_hub(spec: DatasetSpec, max_examples: int | None = None) -> dict[str, Any]:
    """All splits of a registry dataset from the hub (streamed and cut to --max-examples for the huge corpora)."""
    fix = f"pass its files in the hub's schema with --data-files [SPLIT=]PATH (`lancy datasets show {spec.name}`)"
    if spec.local_format == "at_label_txt":
        fix += "; the raw zip's Sentences_*.txt files (`sentence@label` lines) work as they are"
    if spec.loader == "script":
        raise LancyError(
            f"{spec.display_name} loads through a dataset script, which the datasets library no longer runs; {fix}"
        )
    if spec.loader == "stream" and not max_examples:
        raise LancyError(f"{spec.display_name} is streamed (too large to download); pass --max-examples N")
    from lancy_trl.privacy import network

    offline = network.offline() or not network.hub_reachable(spec.hub_id or "", repo_type="dataset")
    try:
        with offline_mode(offline):  # unreachable hub: only the local datasets cache, at once, not after retries
            return _load_hub(spec, max_examples)
    except LancyError:
        raise
    except Exception as e:  # no network, offline mode, gated or renamed repo: all say the same thing to the user
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        if offline:
            reason = "the hub is not reachable and the dataset is not in the local datasets cache"
        raise LancyError(f"cannot load {spec.display_name} from the hub ({reason}); {fix}") from None


@contextmanager
def offline_mode(on: bool) -> Iterator[None]:
    """The datasets and hub libraries in offline mode while inside, when `on`."""
    import datasets
    import huggingface_hub.constants as hub

    before = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    if on:
        datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = before


def _load_hub(spec: DatasetSpec, max_examples: int | None) -> dict[str, Any]:
    import itertools

    from datasets import Dataset, load_dataset

    if spec.loader == "stream":
        split = spec.source_split("train", [spec.splits.get("train", "train")]) or "train"
        stream = load_dataset(spec.hub_id, spec.config, split=split, streaming=True)
        return {split: Dataset.from_list(list(itertools.islice(stream, max_examples)))}
    return dict(load_dataset(spec.hub_id, spec.config))


def load_hub_generic(hub_id: str, config: str | None) -> dict[str, Any]:
    """A hub dataset outside the registry, read by the local-file column rules (messages, prompt + completion,
    instruction + input + output, text)."""
    from datasets import load_dataset

    from lancy_trl.privacy import network

    fix = ("download its files and pass one as --dataset FILE.jsonl/.csv/.parquet with columns messages, "
           "prompt + completion, instruction + input + output, or text")
    if network.offline() or not network.hub_reachable(hub_id, repo_type="dataset"):
        raise LancyError(f"{hub_id} is not in lancy's registry (`lancy datasets list`) and the hub is not reachable "
                         f"to load it; {fix}")
    try:
        with quiet():
            return dict(load_dataset(hub_id, None if config in (None, "None", "none", "") else config))
    except Exception as e:
        raise LancyError(f"cannot load {hub_id} from the hub ({str(e).strip().splitlines()[0][:160]}); {fix}") from None


def load_source(name: str, config: str | None = None, data_files: list[str] | None = None,
                max_examples: int | None = None) -> Source:
    """Raw splits of one dataset: a local file, or a registry entry from --data-files, its shipped copy or the hub."""
    path = Path(name)
    if path.suffix.lower() in LOCAL_BUILDERS and lookup(name) is None:
        if not path.is_file():
            raise LancyError(f"dataset file {name!r} not found; check the path given to --dataset")
        if config not in (None, "None", "none", ""):
            raise LancyError(f"--dataset-config {config!r} applies to hub datasets, not the local file {name}")
        files = {"train": [name]}
        for split, paths in parse_data_files(data_files or []).items():  # validation=PATH, test=PATH beside it
            files.setdefault(split, []).extend(p for p in paths if p != name)
        return Source(name, None, read_files(files), "files", files)
    if lookup(name, config) is None and name.count("/") == 1 and not Path(name).exists():
        return Source(name, None, load_hub_generic(name, config), "hub")
    spec = require(name, config)
    if data_files:
        known = sorted({s for v in spec.splits.values() for s in ([v] if isinstance(v, str) else v)} | set(CANONICAL))
        files = parse_data_files(data_files, known)
        return Source(name, spec, read_files(files, spec), "files", files)
    if spec.package_files:
        files = {split: [str(PACKAGE_DATA / f)] for split, f in spec.package_files.items()}
        return Source(name, spec, read_files(files, spec), "package", files)
    return Source(name, spec, load_hub(spec, max_examples), "hub")


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
            else:
                out.append(adapters.from_local(row, fmt or "", system_prompt, locate(i)))
        except adapters.Skip as why:
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


def build_data(args: Any, transform: Any = None) -> DataBundle:
    """Train / eval / test chat datasets for a run: one dataset, or a mixture sampled by --mixture-rates.
    `transform` rewrites each source's splits before they are mixed (pretraining: every row as plain text)."""
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
        bundle = _assemble(sources, args, rates, transform)
    if getattr(args, "redact_pii", False):
        bundle.stats["redacted"] = dict(redacted)
        what = ", ".join(f"{n} {kind}" for kind, n in redacted.most_common())
        bundle.notes.append(f"--redact-pii: replaced {what} with typed placeholders" if what else
                            "--redact-pii: no personal or secret data found")
    return bundle


def _redacting(then: Any, counts: Counter) -> Any:
    """A split rewrite that replaces personal and secret data first (lancy_trl/pii.py), then applies `then`."""
    from lancy_trl.privacy.pii import redact_rows

    def transform(ds: Any) -> Any:
        ds = redact_rows(ds, counts)
        return then(ds) if then is not None else ds

    return transform


def _assemble(sources: list[Source], args: Any, rates: list[float] | None, transform: Any = None) -> DataBundle:
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise LancyError(f"a dataset is named twice in the mixture ({', '.join(names)}); give each one once")
    trains, evals, tests, per_source, notes = [], [], [], {}, []
    for source in sources:
        train, eval_, test, stats, source_notes = source_splits(source, args)
        stats = {**stats, "kind": task_kind(source.spec, train), "labels": list(label_words(source.spec, train))}
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


def infer_kind(rows: Any) -> str:
    """The task of a generic local file: `pretraining` for text; `classification` when its answers form a small set
    of short words (each used twice on average at least); else `qa`, scored by exact match and token F1."""
    if "text" in rows.column_names:
        return "pretraining"
    targets = [str(t).strip() for t in rows["target"]]
    distinct = set(targets)
    short = all(len(t.split()) <= 4 and len(t) <= 40 for t in distinct)
    return "classification" if 2 <= len(distinct) <= MAX_LABELS and len(distinct) * 2 <= len(targets) and short else "qa"


def task_kind(spec: DatasetSpec | None, rows: Any) -> str:
    return spec.kind if spec is not None else infer_kind(rows)


def label_words(spec: DatasetSpec | None, train: Any) -> tuple[str, ...]:
    """The label set of a classification run: the entry's words, the options its rows carry (AdaptLLM), or the
    answers a local file's rows take (sorted)."""
    if task_kind(spec, train) != "classification":
        return ()
    if spec is None:
        return tuple(sorted({str(t).strip() for t in train["target"]}))
    if spec.labels:
        return spec.labels
    return tuple(dict.fromkeys(w for ws in train["choices"] for w in ws))


def fingerprint(ds: Any) -> str:
    """A short content hash of the rows a run trained on, for the run directory's record."""
    h = hashlib.sha256()
    for row in ds:
        h.update(repr(sorted(row.items())).encode())
    return h.hexdigest()[:16]
