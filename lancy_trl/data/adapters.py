"""Adapters: one source row -> the chat rows TRL trains on (`prompt`/`completion` messages, or `text`).

Local files are recognised by their columns: `messages`, `prompt`/`completion`,
`instruction`/`input`/`output` or `text`. Registry datasets go through their prompt template.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from lancy_trl.data.registry import LETTERS, DatasetSpec
from lancy_trl.errors import LancyError

FORMATS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
    "text": ("text",),
}


def detect_format(columns: list[str], where: str) -> str:
    from lancy_trl.data.preferences import FORMATS as PAIRS

    for fmt, needed in {**PAIRS, **FORMATS}.items():  # pairs first: a preference file may have a `prompt` column too
        if all(c in columns for c in needed):
            return fmt
    raise LancyError(
        f"{where} has columns {', '.join(columns) or '(none)'}; lancy reads `messages`, `prompt`+`completion`, "
        "`instruction`+`input`+`output` or `text` (and for `lancy dpo`, `prompt`+`chosen`+`rejected`). Rename the "
        "columns, or name a registry dataset with --dataset NAME --data-files FILE (`lancy datasets list`)"
    )


def _message(role: str, content: Any) -> dict[str, str]:
    return {"role": role, "content": str(content)}


def _blank(value: Any) -> bool:
    """An empty, null or missing cell (CSV reads an empty cell as None; pandas as NaN)."""
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def _answer(value: Any) -> str:
    """The answer text of a cell, never the string 'None': a blank answer is a row with nothing to learn."""
    if _blank(value):
        raise Skip("empty or missing answer")
    return str(value)


def _messages(value: Any, at: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise LancyError(f"{at}: `messages` must be a list of {{role, content}} objects; fix the row")
    return [{"role": str(m["role"]), "content": "" if m["content"] is None else str(m["content"])} for m in value]


def from_local(row: dict[str, Any], fmt: str, system_prompt: str | None, at: str = "a row") -> dict[str, Any]:
    """A row of a local file in one of the generic formats -> a chat row with its answer as `target`. Raises Skip
    for a row with an empty, null or missing answer (or text), and an error naming `at` for a malformed one."""
    system = [_message("system", system_prompt)] if system_prompt else []
    if fmt == "text":
        if _blank(row["text"]):
            raise Skip("empty text")
        return {"text": str(row["text"])}
    if fmt == "messages":
        messages = _messages(row["messages"], at)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise LancyError(f"{at}: the conversation has no assistant turn to learn; every `messages` row needs one")
        answer = _answer(messages[last]["content"])
        prompt = [m for m in messages[:last] if not (system and m["role"] == "system")]
        # loss on the final assistant turn; earlier turns are context
        return {"prompt": system + prompt, "completion": [messages[last]], "target": answer}
    if fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(completion, list):  # already conversational
            completion = _messages(completion, at)
            answer = _answer(" ".join(m["content"] for m in completion if m["role"] == "assistant"))
            prompt = _messages(prompt, at) if isinstance(prompt, list) else [_message("user", prompt)]
            return {"prompt": system + prompt, "completion": completion, "target": answer}
        if _blank(prompt):
            raise Skip("empty prompt")
        answer = _answer(completion)
        return {"prompt": system + [_message("user", prompt)], "completion": [_message("assistant", answer)], "target": answer}
    if _blank(row["instruction"]):
        raise Skip("empty instruction")
    instruction = str(row["instruction"]).strip()
    extra = "" if _blank(row.get("input")) else str(row["input"]).strip()
    user = f"{instruction}\n\n{extra}" if extra else instruction
    answer = _answer(row["output"])
    return {"prompt": system + [_message("user", user)], "completion": [_message("assistant", answer)], "target": answer}


@cache
def load_template(name: str) -> dict[str, str]:
    import yaml

    from lancy_trl.templates import TEMPLATES_DIR

    path = TEMPLATES_DIR / "prompts" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())


def render(text: str, values: dict[str, str]) -> str:
    """Fill a template; a line whose placeholders are all empty is left out (an optional `input`, say)."""
    import string

    lines = []
    for line in text.split("\n"):
        names = [f for _, f, _, _ in string.Formatter().parse(line) if f]
        if names and not any(values.get(n) for n in names):
            continue
        lines.append(line.format(**values))
    return "\n".join(lines).strip()


def _text(value: Any) -> str:
    if isinstance(value, list):  # FinanceMath tables: a list of markdown tables
        return "\n\n".join(str(v).strip() for v in value)
    return "" if value is None else str(value).strip()


def _bytes_literal(value: Any) -> Any:
    """deepmind/math_dataset stores text as the literal `b'...\\n'`."""
    if isinstance(value, str) and len(value) >= 3 and value[:2] in ("b'", 'b"') and value[-1] == value[1]:
        value = value[2:-1]
        return value[:-2] if value.endswith("\\n") else value
    return value


class Skip(Exception):
    """This row is not trained on; the message is the reason it is counted under."""


def _at(spec: DatasetSpec, index: int | str) -> str:
    """Where a row is, for messages: a file and line (given by the reader), else the entry and the 1-based row."""
    return index if isinstance(index, str) else f"{spec.name} row {index + 1}"


def label_word(spec: DatasetSpec, row: dict[str, Any], index: int | str) -> tuple[str, list[str]]:
    """(the row's label word, the label words it chooses from); Skip for unlabelled rows, an error for bad ones."""
    how, column = spec.label.get("from", "id"), spec.label["column"]
    value, words = row[column], list(spec.labels)
    if how == "options":
        words = [str(o) for o in row[spec.label["options"]]]
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == -1):
        raise Skip("label -1 or missing (unlabelled rows)")
    if how == "bins":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LancyError(f"{_at(spec, index)}: {column} {value!r} is not a number to bin; fix the row or the file")
        low, high = spec.label["bins"]
        return words[0 if value < low else 1 if value < high else 2], words
    if isinstance(value, str) and value.strip() in words:  # a word already (fingpt, phrasebank's raw .txt)
        return value.strip(), words
    if how != "word" and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(words):
        return words[value], words
    raise LancyError(
        f"{_at(spec, index)}: {column} {value!r} is not one of {words}"
        + (f" nor an id 0..{len(words) - 1}" if how != "word" else "") + "; fix the row or the file"
    )


def _letter_answer(spec: DatasetSpec, row: dict[str, Any], index: int | str, n_options: int) -> str:
    value = row[spec.choices["answer"]]
    if value is None or value == -1 or value == "":
        raise Skip("no answer")
    if spec.choices.get("answer_is") == "letter" and isinstance(value, str) and value.strip().upper() in LETTERS[:n_options]:
        return value.strip().upper()
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_options:
        return LETTERS[value]
    raise LancyError(
        f"{_at(spec, index)}: answer {value!r} does not name one of the {n_options} options "
        f"({LETTERS[:n_options]}); fix the row or the file"
    )


def _expand(spec: DatasetSpec, row: dict[str, Any], index: int | str) -> list[dict[str, Any]]:
    """The cleaned source rows one raw row stands for (one per question for Sujet's qa_pairs)."""
    if "bytes_literal" in spec.clean:
        row = {k: _bytes_literal(v) for k, v in row.items()}
    if "qa_pairs_json" in spec.clean:
        import json

        pairs = row["qa_pairs"]
        try:
            pairs = json.loads(pairs) if isinstance(pairs, str) else pairs
        except ValueError:
            raise LancyError(f"{_at(spec, index)}: qa_pairs is not valid JSON; fix the row or the file") from None
        if isinstance(pairs, dict):
            pairs = [pairs]
        return [{**row, "question": p.get("question"), "answer": p.get("answer")} for p in pairs or []]
    return [row]


def from_spec(row: dict[str, Any], spec: DatasetSpec, index: int | str, system_prompt: str | None) -> list[dict[str, Any]]:
    """One registry row -> chat rows: `text` for pretraining, else prompt/completion messages plus `target`
    (and `choices` where each row has its own options). Raises Skip for rows that carry nothing to learn."""
    missing = [c for c in spec.columns if c not in row and not (c == "qa_pairs" and "question" in row)]
    if missing:
        raise LancyError(
            f"{spec.display_name} rows need column(s) {', '.join(missing)} (found {', '.join(row)}); "
            "pass files in the hub's schema to --data-files (`lancy datasets show " + spec.name + "`)"
        )
    out = []
    for r in _expand(spec, row, index):
        if spec.kind == "pretraining":
            text = _text(r[spec.text or "text"])
            if "drop_empty_text" in spec.clean and not text:
                raise Skip("empty text")
            out.append({"text": text})
            continue
        values = {name: _text(r.get(column)) for name, column in spec.fields.items()}
        extra: dict[str, Any] = {}
        target: str
        if spec.kind == "preference":  # a prompt and two answers (the label words, when the pairs come from them)
            values["label_choices"] = ", ".join(spec.labels)
            template = load_template(spec.template or "")
            prompt = [_message("system", system_prompt or template["system"]),
                      _message("user", render(template["user"], values))]
            chosen, rejected = (_answer(r.get(spec.pair[k])) for k in ("chosen", "rejected"))
            pair: dict[str, Any] = {"prompt": prompt, "chosen": [_message("assistant", chosen)],
                                    "rejected": [_message("assistant", rejected)], "target": chosen}
            out.append(pair)
            continue
        if spec.kind == "classification":
            target, words = label_word(spec, r, index)
            values["label_choices"] = ", ".join(words)
            if spec.label.get("from") == "options":
                extra["choices"] = words
        elif spec.kind == "multiple_choice":
            options = [str(o) for o in r[spec.choices["options"]]]
            target = _letter_answer(spec, r, index, len(options))
            values["options"] = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
            values["letters"] = ", ".join(LETTERS[: len(options)])
            extra["choices"] = list(LETTERS[: len(options)])
        else:
            import string

            needed = [f for _, f, _, _ in string.Formatter().parse(spec.answer or "") if f]
            if any(r.get(f) in (None, "") for f in needed):
                raise Skip("no answer")
            keep = spec.kind == "code"  # indentation and newlines are the code
            target = (spec.answer or "").format(**{f: str(r[f]) if keep else _text(r[f]) for f in needed})
        template = load_template(spec.template or "")
        prompt = [_message("system", system_prompt or template["system"]), _message("user", render(template["user"], values))]
        example: dict[str, Any] = {"prompt": prompt, "completion": [_message("assistant", target)], "target": target}
        out.append({**example, **extra})
    return out
