"""Reading a dataset's raw rows: a registry entry from the hub, its shipped copy or local files in the hub's schema
(`--data-files`), or a local file of the user's; every path checked, every row locatable by file and line.

    source = load_source("glue", "sst2", ["mirror/sst2/validation.parquet"])   # source.raw[split], source.spec
    files = parse_data_files(["train.jsonl", "test=held.jsonl"])              # split -> paths, globs expanded
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

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


