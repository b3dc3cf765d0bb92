"""Reward functions for `lancy grpo`, in the form TRL's GRPOTrainer calls them.

    funcs, weights = load(["label", "format:0.2"], task="classification", labels=("negative", "neutral", "positive"))
    funcs[0](completions=[[{"role": "assistant", "content": "Positive."}]], answer=["positive"])  # [1.0]

Each run's rows carry their reference answer in the `answer` column (the label word, the worked solution ending in
the final number, the option letter), which TRL passes to every reward function with the prompts and completions.
The shipped rewards score the way `lancy eval` does, so a rising reward is a rising eval score:

- `label`: 1 when the completion is exactly the answer's label word once case, surrounding spaces, quotes, markdown
  and end punctuation are stripped; a label word inside a sentence ("I can't tell if it is positive") scores 0.
- `numeric`: 1 when the completion's final number (after `####`, else after "answer is", else its last number)
  equals the answer's at the precision the answer is written to; commas, %, $, thousand/million/bn and negatives
  in parentheses are understood (eval's parser, lancy_trl/evaluation/tasks.py).
- `choice`: 1 when the option letter read from the completion (`B`, `(B)`, `answer is (B)`) is the answer's.
- `format`: 1 when the answer stands where the prompt asks for it, right or wrong: one label word alone; a final
  `#### <number>` line when the prompt asks for `####`, else a number; an option letter.
- `length`: 0 up to `--length-budget` completion tokens, then falling linearly to -1 at `--max-completion-length`.

A user's own function is `FILE.py:NAME` or `module:NAME`: called as `NAME(prompts=..., completions=...,
completion_ids=..., answer=..., **kwargs)` and returning one float (or None) per completion. `NAME[:WEIGHT]` weights
any of them (default 1).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError

SHIPPED = ("label", "numeric", "choice", "format", "length")
FOR_TASK = {"classification": "label", "math": "numeric", "multiple_choice": "choice"}  # the default reward
LETTERS = "ABCDEFGHIJ"


def text_of(completion: Any) -> str:
    """A completion's text: TRL passes conversational completions as assistant messages, plain ones as strings."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))


def bare(text: str) -> str:
    """Text as a label comparison sees it: NFKC (full-width letters), lower case, no surrounding quotes, markdown,
    brackets or end punctuation."""
    text = unicodedata.normalize("NFKC", text).strip().lower()
    return re.sub(r"^[\s\"'*`(\[_]+|[\s\"'*`.!,;:)\]_]+$", "", text)


def label_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    return [float(bare(text_of(c)) == bare(a)) for c, a in zip(completions, answer)]


def numeric_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    from lancy_trl.evaluation.tasks import numbers_match

    return [float(numbers_match(text_of(c), a)) for c, a in zip(completions, answer)]


def choice_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    from lancy_trl.evaluation.tasks import parse_choice

    return [float(parse_choice(text_of(c), LETTERS) == bare(a).upper()) for c, a in zip(completions, answer)]


FINAL_LINE = re.compile(r"^\s*####\s*\S.*$")


def asks_marker(prompt: Any) -> bool:
    return "####" in text_of(prompt)


def format_reward_for(task: str, labels: tuple[str, ...]) -> Callable[..., list[float]]:
    """`format` for a task: where its template asks for the answer (see the module docstring)."""
    from lancy_trl.evaluation.tasks import ANSWER_IS, LEADING_LETTER, final_number, parse_numbers

    words = {bare(w) for w in labels}

    def math_format(prompt: Any, text: str) -> bool:
        if asks_marker(prompt):
            lines = [line for line in text.strip().splitlines() if line.strip()]
            return bool(lines) and bool(FINAL_LINE.match(lines[-1])) and bool(parse_numbers(lines[-1]))
        return final_number(text) is not None

    def one(prompt: Any, text: str) -> bool:
        if task == "classification":
            return bare(text) in words
        if task == "math":
            return math_format(prompt, text)
        letter = LEADING_LETTER.match(text.strip())  # "B", "(B)", "B." as eval reads them
        return bool(ANSWER_IS.search(text) or (letter and next(g for g in letter.groups() if g) in LETTERS))

    def format(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [float(one(p, text_of(c))) for p, c in zip(prompts, completions)]

    return format


def length_reward_for(budget: int, limit: int) -> Callable[..., list[float]]:
    """`length`: 0 up to `budget` tokens, then linearly down to -1 at `limit` (the completion length cap)."""
    span = max(limit - budget, 1)

    def length(completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [-min(max(len(ids) - budget, 0) / span, 1.0) for ids in completion_ids]

    return length


def parse(spec: str) -> tuple[str, float]:
    """`NAME[:WEIGHT]` -> (name, weight); a name may itself hold colons (`rewards.py:score:0.5`)."""
    name, _, last = spec.rpartition(":")
    try:
        return (name, float(last)) if name else (spec, 1.0)
    except ValueError:
        return spec, 1.0


def load(specs: list[str], task: str, labels: tuple[str, ...] = (), budget: int = 0,
         limit: int = 0) -> tuple[list[Callable[..., Any]], list[float]]:
    """The reward functions and weights of `--reward` values (default: the task's own reward), each checked against
    the run's task before any model loads."""
    if not specs:
        if task not in FOR_TASK:
            raise LancyError(f"this run's task is {task}, which has no default reward: pass --reward "
                             f"{'|'.join(SHIPPED)} or --reward FILE.py:NAME")
        specs = [FOR_TASK[task]]
    funcs, weights = [], []
    for spec in specs:
        name, weight = parse(spec)
        funcs.append(_one(name, task, labels, budget, limit))
        weights.append(weight)
    return funcs, weights


def _one(name: str, task: str, labels: tuple[str, ...], budget: int, limit: int) -> Callable[..., Any]:
    needs = {reward: task for task, reward in FOR_TASK.items()}  # the task each answer-checking reward scores
    if name in needs and task != needs[name]:
        fit = f"use --reward {FOR_TASK[task]}" if task in FOR_TASK else "pass your own --reward FILE.py:NAME"
        raise LancyError(f"--reward {name} scores {needs[name]} answers, but this run's task is {task}: {fit}")
    if name == "format" and task not in FOR_TASK:
        raise LancyError(f"--reward format knows where classification, math and multiple-choice answers go, not "
                         f"{task} answers: pass your own --reward FILE.py:NAME")
    shipped: dict[str, Callable[[], Callable[..., Any]]] = {
        "label": lambda: label_reward, "numeric": lambda: numeric_reward, "choice": lambda: choice_reward,
        "format": lambda: format_reward_for(task, labels), "length": lambda: length_reward_for(budget, limit),
    }
    if name in shipped:
        func = shipped[name]()
        func.__name__ = name  # TRL logs rewards/<name>/mean
        return func
    if ":" not in name:
        from lancy_trl.errors import did_you_mean

        raise LancyError(f"unknown reward {name!r}{did_you_mean(name, SHIPPED)}; shipped rewards are "
                         f"{', '.join(SHIPPED)}, or pass your own as FILE.py:NAME or module:NAME")
    return user_function(name)


def user_function(spec: str) -> Callable[..., Any]:
    """A reward function from `FILE.py:NAME` or `module:NAME`, checked callable with **kwargs (TRL passes every
    dataset column by name)."""
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise LancyError(f"--reward {spec}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(f"lancy_reward_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # pickling for checkpoints and workers finds it again
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise LancyError(f"--reward {spec}: {path} fails to import ({type(e).__name__}: {e})") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise LancyError(f"--reward {spec}: cannot import module {where!r} ({e})") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise LancyError(f"--reward {spec}: {where} has no function {attr!r}")
    params = inspect.signature(func).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise LancyError(f"--reward {spec}: {attr} must accept **kwargs (it is called with prompts, completions, "
                         "completion_ids, answer and the other dataset columns by name)")
    return func
