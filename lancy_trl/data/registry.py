"""The dataset registry: plain data, one spec per dataset, behind a lookup that fails helpfully.

    spec = lookup("finsent")
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lancy_trl.errors import LancyError, did_you_mean


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str  # the word used in run names, e.g. "sentiment"
    kind: str  # classification | multiple_choice | qa | math | code | pretraining
    template: str  # templates/prompts/<template>.yaml
    columns: tuple[str, ...]  # the row fields the template reads
    hub_id: str | None = None
    label_column: str | None = None
    labels: tuple[str, ...] = ()  # label words in hub id order
    splits: dict[str, str] = field(default_factory=dict)  # train/validation/test -> the source's split name
    package_files: dict[str, str] = field(default_factory=dict)  # split -> file shipped in lancy_trl/data/
    license: str = ""
    notes: str = ""


REGISTRY: dict[str, DatasetSpec] = {}
ALIASES: dict[str, str] = {}


def register(spec: DatasetSpec, *aliases: str) -> None:
    REGISTRY[spec.name] = spec
    for alias in aliases:
        ALIASES[alias] = spec.name


register(
    DatasetSpec(
        name="finsent",
        task="sentiment",
        kind="classification",
        template="sentiment",
        columns=("sentence",),
        label_column="label",
        labels=("negative", "neutral", "positive"),
        splits={"train": "train", "test": "test"},
        package_files={"train": "demo/finsent_train.jsonl", "test": "demo/finsent_test.jsonl"},
        license="CC0 (written for lancy-trl)",
        notes="300 original finance sentences, 100 per class; 225 train / 75 test. The embedded default.",
    ),
    "finance-sentiment-demo",
)


def lookup(name: str) -> DatasetSpec | None:
    return REGISTRY.get(ALIASES.get(name, name))


def require(name: str) -> DatasetSpec:
    spec = lookup(name)
    if spec is None:
        names = list(REGISTRY) + list(ALIASES)
        raise LancyError(
            f"unknown dataset {name!r}{did_you_mean(name, names)}; `lancy datasets list` shows all "
            f"{len(REGISTRY)}, or pass a local .jsonl/.json/.csv/.parquet file"
        )
    return spec
