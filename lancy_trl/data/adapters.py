"""Adapters: one source row -> the chat rows TRL trains on (`prompt`/`completion` messages, or `text`).

Local files are recognised by their columns: `messages`, `prompt`/`completion`,
`instruction`/`input`/`output` or `text`. Registry datasets go through their prompt template.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from lancy_trl.data.registry import DatasetSpec
from lancy_trl.errors import LancyError

FORMATS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
    "text": ("text",),
}


def detect_format(columns: list[str], where: str) -> str:
    for fmt, needed in FORMATS.items():
        if all(c in columns for c in needed):
            return fmt
    raise LancyError(
        f"{where} has columns {', '.join(columns) or '(none)'}; lancy reads `messages`, `prompt`+`completion`, "
        "`instruction`+`input`+`output` or `text`. Rename the columns, or name a registry dataset with "
        "--dataset NAME --data-files FILE (`lancy datasets list`)"
    )


def _message(role: str, content: Any) -> dict[str, str]:
    return {"role": role, "content": str(content)}


def from_local(row: dict[str, Any], fmt: str, system_prompt: str | None) -> dict[str, Any]:
    """A row of a local file in one of the generic formats -> a chat row."""
    system = [_message("system", system_prompt)] if system_prompt else []
    if fmt == "text":
        return {"text": str(row["text"])}
    if fmt == "messages":
        messages = list(row["messages"])
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise LancyError("a `messages` row has no assistant turn to learn; every conversation needs one")
        prompt = [m for m in messages[:last] if not (system and m["role"] == "system")]
        # loss on the final assistant turn; earlier turns are context
        return {"prompt": system + prompt, "completion": [messages[last]]}
    if fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):  # already conversational
            return {"prompt": system + list(prompt), "completion": list(completion)}
        return {"prompt": system + [_message("user", prompt)], "completion": [_message("assistant", completion)]}
    instruction = str(row["instruction"]).strip()
    extra = str(row.get("input") or "").strip()
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return {"prompt": system + [_message("user", user)], "completion": [_message("assistant", row["output"])]}


@cache
def load_template(name: str) -> dict[str, str]:
    import yaml

    from lancy_trl.templates import TEMPLATES_DIR

    path = TEMPLATES_DIR / "prompts" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())


def label_word(spec: DatasetSpec, value: Any, index: int) -> str:
    """The label word for a raw label (a class id in hub order, or already a word)."""
    if isinstance(value, str) and value in spec.labels:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(spec.labels):
        raise LancyError(
            f"{spec.name} row {index}: label {value!r} is not one of {list(spec.labels)} "
            f"nor an id 0..{len(spec.labels) - 1}; fix the row or the file"
        )
    return spec.labels[value]


def from_spec(row: dict[str, Any], spec: DatasetSpec, index: int, system_prompt: str | None) -> dict[str, Any]:
    """A registry row -> prompt/completion messages through the dataset's template."""
    template = load_template(spec.template)
    missing = [c for c in spec.columns if c not in row]
    if missing:
        raise LancyError(
            f"{spec.name} rows need column(s) {', '.join(missing)} (found {', '.join(row)}); "
            "pass files in the hub's schema to --data-files"
        )
    fields = {c: str(row[c]).strip() for c in spec.columns}
    fields["label_choices"] = ", ".join(spec.labels)
    prompt = [_message("system", system_prompt or template["system"]), _message("user", template["user"].format(**fields))]
    target = label_word(spec, row[spec.label_column], index) if spec.label_column else str(row.get("target", ""))
    return {"prompt": prompt, "completion": [_message("assistant", target)], "target": target}
