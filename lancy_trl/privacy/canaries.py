"""Canaries: planted secrets that measure what a model memorised (the secret-sharer test, Carlini et al., 2019).

    data.train, planted = plant(data.train, k=10, repeats=4, seed=42)   # `lancy sft --canaries 10 --canary-repeats 4`
    # the exposure of each, once trained: lancy_trl/evaluation/canaries.py (`lancy eval --model RUN --canaries`)

A canary is a sentence of a fixed format with a random secret, "my account PIN is 4821-93". `--canaries K` adds K
of them to the training rows, each `--canary-repeats` times, in the run's own row shape (a chat answer to a fixed
request, or a text document), and writes them to `canaries.json` in the run directory (fake secrets: nothing of the
user's). Exposure ranks each planted secret among `candidates` random secrets of the same format by the model's
log-likelihood after the same prefix: exposure = log2(candidates + 1) - log2(rank). A model that learned nothing of
the secret puts it mid-list (exposure about 1 bit); one that memorised it ranks it first (the maximum,
log2(candidates + 1)). Greedy decoding from the prefix also shows whether the model recites the secret whole.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

PREFIX = "my account PIN is"
REQUEST = "Write down my note."
FILE = "canaries.json"


def secret(rng: random.Random) -> str:
    return f" {rng.randrange(10_000):04d}-{rng.randrange(100):02d}"


def plant(train: Any, k: int, repeats: int, seed: int) -> tuple[Any, list[dict[str, Any]]]:
    """The training rows with k canaries (each `repeats` times) inserted at seeded random places, and the canaries."""
    from datasets import Dataset

    rng = random.Random(f"canaries-{seed}")
    planted: list[dict[str, Any]] = [{"secret": secret(rng), "repeats": repeats} for _ in range(k)]
    rows = train.to_list()
    template = rows[0]
    for canary in planted:
        for _ in range(repeats):
            rows.insert(rng.randrange(len(rows) + 1), _row(template, PREFIX + canary["secret"]))
    return Dataset.from_list(rows), planted


def _row(template: dict[str, Any], text: str) -> dict[str, Any]:
    """A canary in the shape of the run's rows: a document, or the answer to REQUEST after the run's system prompt."""
    row = {**template, "source": "canary"} if "source" in template else dict(template)
    if "text" in template:
        return {**row, "text": text}
    system = [m for m in template["prompt"] if m["role"] == "system"]
    return {**row, "prompt": system + [{"role": "user", "content": REQUEST}],
            "completion": [{"role": "assistant", "content": text}]}


def save(run_dir: Path, planted: list[dict[str, Any]], train: Any) -> None:
    """canaries.json: the format, the prompt a chat canary answers (as planted), and the secrets with their repeats."""
    first = next(r for r in train if r.get("source", "canary") == "canary" and PREFIX in str(r))
    prompt = first.get("prompt")
    (run_dir / FILE).write_text(json.dumps({"prefix": PREFIX, "prompt": prompt, "format": "' DDDD-DD' (10^6 secrets)",
                                            "canaries": planted}, indent=2))
