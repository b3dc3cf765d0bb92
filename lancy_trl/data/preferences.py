"""Preference pairs for `lancy dpo`: a prompt (messages), a chosen and a rejected answer (assistant messages), read
from a file's columns in the schemas preference datasets use, or made from a classification task's rows.

    pair({"prompt": "Revenue rose.", "chosen": "positive", "rejected": "negative"}, "preference", None, "f.jsonl line 1")
    rows = from_labels(classification_rows, ("negative", "neutral", "positive"), seed=42)

Columns read:
- `prompt`, `chosen`, `rejected`: the prompt (text: the user's turn; or messages) and the two answers (text or
  messages);
- `chosen`, `rejected`: two whole conversations sharing their start (messages, or hh-rlhf's `Human:` /
  `Assistant:` text), the shared turns being the prompt (TRL's `extract_prompt`);
- `input` (+ `system`), `chosen`, `rejected`: Orca DPO pairs, the system message and the user's input;
- `question`, `response_j`, `response_k`: stack-exchange-paired, j preferred to k.
"""

from __future__ import annotations

import random
import re
from typing import Any

from lancy_trl.errors import LancyError

FORMATS = {"preference": ("chosen", "rejected"), "paired": ("question", "response_j", "response_k")}
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


class Skip(Exception):
    """A pair with nothing to learn (an empty answer, the same answer twice): dropped and counted."""


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value).strip() or None


def _turns(value: Any, at: str) -> list[dict[str, str]]:
    """Messages from a list of {role, content}, or from hh-rlhf's "\\n\\nHuman: ... \\n\\nAssistant: ..." text."""
    if isinstance(value, list):
        if not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
            raise LancyError(f"{at}: a conversation must be a list of {{role, content}} objects; fix the row")
        return [{"role": str(m["role"]), "content": "" if m["content"] is None else str(m["content"])} for m in value]
    if _text(value) is None:
        return []
    parts = HH_TURN.split("\n\n" + str(value).lstrip("\n")) if isinstance(value, str) else []
    if len(parts) < 3:
        raise LancyError(f"{at}: `chosen` and `rejected` without a `prompt` must be whole conversations (messages, or "
                         "'Human: ... Assistant: ...' text); add a `prompt` column")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def _answer(value: Any, at: str) -> list[dict[str, str]]:
    if isinstance(value, list):
        turns = [m for m in _turns(value, at) if m["role"] == "assistant"]
        if not turns or not any(m["content"].strip() for m in turns):
            raise Skip("empty or missing answer")
        return turns
    text = _text(value)
    if text is None:
        raise Skip("empty or missing answer")
    return [{"role": "assistant", "content": text}]


def _prompt(row: dict[str, Any], system: str | None, at: str) -> list[dict[str, str]] | None:
    """The prompt a row states (None: implicit in its conversations)."""
    head = [{"role": "system", "content": system}] if system else []
    if "prompt" in row and row["prompt"] is not None:
        value = row["prompt"]
        turns = _turns(value, at) if isinstance(value, list) else [{"role": "user", "content": _text(value) or ""}]
    elif "input" in row:  # Orca DPO pairs
        own = _text(row.get("system"))
        turns = ([{"role": "system", "content": own}] if own and not system else []) + [
            {"role": "user", "content": _text(row["input"]) or ""}]
    else:
        return None
    if not any(m["role"] == "user" and m["content"] for m in turns):
        raise Skip("empty prompt")
    return head + [m for m in turns if not (system and m["role"] == "system")]


def pair(row: dict[str, Any], fmt: str, system: str | None, at: str) -> dict[str, Any]:
    """One file row -> {prompt, chosen, rejected, target}; Skip for a pair with nothing to learn."""
    if fmt == "paired":
        row = {"prompt": row["question"], "chosen": row["response_j"], "rejected": row["response_k"]}
    prompt = _prompt(row, system, at)
    chosen, rejected = row["chosen"], row["rejected"]
    if prompt is None:  # the prompt is the conversations' shared start
        from trl.data_utils import extract_prompt

        whole: dict[str, Any] = {"chosen": _turns(chosen, at), "rejected": _turns(rejected, at)}
        if not whole["chosen"] or not whole["rejected"]:
            raise Skip("empty or missing answer")
        if whole["chosen"] == whole["rejected"]:
            raise Skip("the same answer chosen and rejected")
        split = extract_prompt(whole)
        prompt = ([{"role": "system", "content": system}] if system else []) + list(split["prompt"])
        chosen, rejected = split["chosen"], split["rejected"]
        if not prompt:
            raise LancyError(f"{at}: `chosen` and `rejected` share no first turn to serve as the prompt; add a "
                             "`prompt` column")
    good, bad = _answer(chosen, at), _answer(rejected, at)
    if good == bad:
        raise Skip("the same answer chosen and rejected")
    return {"prompt": prompt, "chosen": good, "rejected": bad, "target": " ".join(m["content"] for m in good)}


def from_labels(rows: Any, labels: tuple[str, ...], seed: int) -> Any:
    """Pairs from a classification task's chat rows: the right label chosen, another drawn by a seeded RNG rejected
    (`lancy dpo --dataset finsent`)."""
    rng = random.Random(f"pairs-{seed}")

    def to_pair(row: dict[str, Any]) -> dict[str, Any]:
        wrong = rng.choice([w for w in labels if w != row["target"]])
        return {"chosen": row["completion"], "rejected": [{"role": "assistant", "content": wrong}]}

    return rows.map(to_pair, remove_columns=["completion"])
