"""The dataset registry: entries are data (registry.yaml); this module types them and finds one by name.

    spec = require("glue", "sst2")          # hub id + config, exactly as the hub names them
    spec = require("glue-sst2")             # or the short name
    spec.config, spec.labels, spec.splits
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError, did_you_mean

KINDS = ("classification", "multiple_choice", "qa", "math", "code", "pretraining", "preference")
LOADERS = ("hub", "script", "stream")
CLEANERS = ("bytes_literal", "drop_empty_text", "qa_pairs_json", "drop_image")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str
    task: str  # the word used in run names, e.g. "sentiment"
    template: str | None = None  # templates/prompts/<template>.yaml; None for pretraining text
    fields: dict[str, str] = field(default_factory=dict)  # template placeholder -> source column
    label: dict[str, Any] = field(default_factory=dict)  # column, words, from (id|word|bins|options), bins, options
    choices: dict[str, str] = field(default_factory=dict)  # options, answer, answer_is (index|letter)
    answer: str | None = None  # format string over source columns (qa / math / code)
    text: str | None = None  # pretraining: the text column
    pair: dict[str, str] = field(default_factory=dict)  # preference: the chosen and rejected answers' columns
    hub_id: str | None = None
    hub_aliases: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    config: str | None = None  # the hub config this entry is (set on configurable entries once one is chosen)
    configs: tuple[str, ...] = ()
    default_config: str | None = None
    splits: dict[str, Any] = field(default_factory=dict)  # train / validation / test -> source split name(s)
    loader: str = "hub"
    clean: tuple[str, ...] = ()
    local_format: str | None = None
    package_files: dict[str, str] = field(default_factory=dict)  # split -> file shipped in lancy_trl/data/
    license: str = ""
    notes: str = ""

    @property
    def labels(self) -> tuple[str, ...]:
        """Label words in hub id order (empty when each row carries its own options)."""
        return tuple(self.label.get("words", ()))

    @property
    def label_column(self) -> str | None:
        return self.label.get("column")

    @property
    def columns(self) -> tuple[str, ...]:
        """Every source column the entry reads."""
        cols = list(self.fields.values())
        cols += [c for c in (self.label.get("column"), self.label.get("options"), self.text, *self.pair.values()) if c]
        cols += [self.choices[k] for k in ("options", "answer") if k in self.choices]
        if self.answer:
            import string

            cols += [f for _, f, _, _ in string.Formatter().parse(self.answer) if f]
        if "qa_pairs_json" in self.clean:
            cols = ["qa_pairs" if c in ("question", "answer") else c for c in cols]
        return tuple(dict.fromkeys(cols))

    @property
    def display_name(self) -> str:
        return f"{self.hub_id or self.name}" + (f" [{self.config}]" if self.config else "")

    def source_split(self, split: str, available: list[str]) -> str | None:
        """The source split a canonical split (train / validation / test / other) maps to, among those present."""
        wanted = self.splits.get(split)
        if wanted is None and split not in ("train", "validation", "test"):
            wanted = split  # a source split asked for by its own name (validation_mismatched, unsupervised, dev)
        candidates = [wanted] if isinstance(wanted, str) else list(wanted or [])
        return next((c for c in candidates if c in available), None)


def _spec(entry: dict[str, Any]) -> DatasetSpec:
    known = {f.name for f in dataclasses.fields(DatasetSpec)}
    unknown = set(entry) - known
    assert not unknown, f"registry.yaml entry {entry.get('name')}: unknown keys {unknown}"
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) and k in ("hub_aliases", "aliases", "configs", "clean") else v
              for k, v in entry.items()}
    spec = DatasetSpec(**values)
    assert spec.kind in KINDS and spec.loader in LOADERS and set(spec.clean) <= set(CLEANERS), spec.name
    return spec


@cache
def entries() -> dict[str, DatasetSpec]:
    import yaml

    path = Path(__file__).with_name("registry.yaml")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    specs = [_spec(e) for e in yaml.load(path.read_text(), Loader=loader)]
    return {s.name: s for s in specs}


def _names() -> dict[str, str]:
    """Every lowercase name or alias -> entry name."""
    names: dict[str, str] = {}
    for spec in entries().values():
        for n in (spec.name, *spec.aliases):
            names[n.lower()] = spec.name
    return names


def _by_hub_id(name: str) -> list[DatasetSpec]:
    key = name.lower()
    return [s for s in entries().values() if s.hub_id and key in (s.hub_id.lower(), *(a.lower() for a in s.hub_aliases))]


def _with_config(spec: DatasetSpec, config: str | None) -> DatasetSpec:
    if spec.configs:
        config = config or spec.default_config
        if config not in spec.configs:
            raise LancyError(
                f"{spec.hub_id} has no config {config!r}{did_you_mean(config or '', spec.configs)}; "
                f"choose one with --dataset-config ({', '.join(spec.configs[:6])}{', ...' if len(spec.configs) > 6 else ''})"
            )
        return dataclasses.replace(spec, config=config)
    if config and config != spec.config:
        have = f"its config is {spec.config}" if spec.config else "it has no configs"
        raise LancyError(f"{spec.name} does not take --dataset-config {config!r}: {have}")
    return spec


def lookup(name: str, config: str | None = None) -> DatasetSpec | None:
    """The entry for a short name / alias or a hub id (+ config); None when nothing matches."""
    config = None if config in (None, "", "None", "none") else config
    if (entry := _names().get(name.lower())) is not None:
        return _with_config(entries()[entry], config)
    candidates = _by_hub_id(name)
    if not candidates:
        return None
    if len(candidates) == 1:
        return _with_config(candidates[0], config)
    by_config = {s.config: s for s in candidates}
    if config in by_config:
        return by_config[config]
    what = f"has no config {config!r}{did_you_mean(config, by_config)}" if config else "needs a config"
    raise LancyError(f"{name} {what}; choose one with --dataset-config: {', '.join(str(c) for c in by_config)}")


def require(name: str, config: str | None = None) -> DatasetSpec:
    spec = lookup(name, config)
    if spec is None:
        names = list(_names()) + [s.hub_id for s in entries().values() if s.hub_id]
        raise LancyError(
            f"unknown dataset {name!r}{did_you_mean(name, names)}; `lancy datasets list` shows all "
            f"{len(entries())}, or pass a local .jsonl/.json/.csv/.parquet file"
        )
    return spec


def sample_rows(name: str) -> dict[str, list[dict[str, Any]]]:
    """A few rows in the entry's hub schema, written for lancy-trl (samples.json): for `lancy datasets show` and tests.
    Not hub data."""
    import json

    spec = entries()[name]
    if spec.package_files:
        return {split: [json.loads(line) for line in (Path(__file__).parent / f).read_text().splitlines()[:3]]
                for split, f in spec.package_files.items()}
    return _samples()[name]


@cache
def _samples() -> dict[str, Any]:
    import json

    return json.loads(Path(__file__).with_name("samples.json").read_text())
