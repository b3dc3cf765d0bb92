"""Typer options generated from a config dataclass, so each flag is documented once (in config.py).

Flags use dashes; the underscore spellings older tools use (`--max_steps`) and a few legacy names
(`--resume_from_checkpoint`, `--datasets`) are rewritten before click parses them, and a bare `--fsdp` means the
shipped FSDP config. A list option takes several values after one flag (`--mixture-rates 0.7 0.3`) as well as the
flag repeated.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from lancy_trl.config import _base_type, field_types, flag

ALIASES = {
    "--resume-from-checkpoint": "--resume",
    "--datasets": "--dataset",
    "--dataset-configs": "--dataset-config",
    "--dataset-name": "--dataset",
    "--model-name-or-path": "--model",
    "--use-peft": "--use-lora",
    "--per-device-train-batch-size": "--batch-size",
    "--lr": "--learning-rate",
    "--moe-load-in-4bit": "--load-in-4bit",  # the finance thesis pipeline's spellings
    "--moe-load-in-8bit": "--load-in-8bit",
}
BARE = {"--fsdp": "fsdp"}  # options that may stand alone, meaning this value (`--fsdp`: the shipped FSDP config)


def normalize_argv(args: list[str], multi_options: set[str]) -> list[str]:
    """Dash spellings, legacy aliases, and `--opt a b` expanded to `--opt a --opt b` for list options."""
    args = [a for i, arg in enumerate(args) for a in _bare(arg, args[i + 1:i + 2])]
    out: list[str] = []
    pending: str | None = None  # a list option whose following bare values each repeat the flag
    took_value = False
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg.partition("=")
            name = name.replace("_", "-")
            name = ALIASES.get(name, name)
            out.append(name + eq + value)
            pending = name if name in multi_options and not eq else None
            took_value = False
        elif pending and not arg.startswith("-"):
            if took_value:
                out.append(pending)
            out.append(arg)
            took_value = True
        else:
            pending = None
            out.append(arg)
    return out


def _bare(arg: str, following: list[str]) -> list[str]:
    """An option of BARE given without its value (last, or followed by another option) gets its default value."""
    name = arg.replace("_", "-")
    if name in BARE and (not following or following[0].startswith("-")):
        return [arg, BARE[name]]
    return [arg]


class LancyCommand(TyperCommand):
    """A Typer command that accepts underscore and legacy spellings of its flags."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # typer vendors its own click: read options by duck typing rather than isinstance
        multi = {o for p in self.params if getattr(p, "multiple", False) for o in getattr(p, "opts", ())}
        return super().parse_args(ctx, normalize_argv(args, multi))


def _shown_default(f: dataclasses.Field) -> str | None:
    """The default as `--help` shows it (the field's own help already explains a None default)."""
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is None or value == []:
        return None
    if isinstance(value, bool):
        return flag(f.name) if value else f"no-{flag(f.name)}"
    return " ".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


def _option(name: str, tp: Any, meta: dict, default: str | None = None) -> tuple[Any, Any]:
    """(annotation, default) for one config field; defaults are None so we know what the user set."""
    inner, _ = _base_type(tp)
    help_ = meta["help"]
    if meta.get("choices"):
        help_ += f" \\[{'|'.join(meta['choices'])}]"  # escaped: rich reads [...] as markup
    if default is not None:
        help_ += f" \\[default: {default}]"
    decls = [f"--{flag(name)}/--no-{flag(name)}"] if inner is bool else [f"--{flag(name)}"]
    option = typer.Option(*decls, help=help_, rich_help_panel=meta.get("group"), show_default=False)
    return Annotated[inner | None, option], None


def config_command(cls, extra: list[inspect.Parameter]) -> Callable[[Callable], Callable]:
    """Decorate `fn(flags: dict, **extra)` into a Typer command whose signature is `cls`'s fields + extras."""
    types_ = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def wrap(fn: Callable) -> Callable:
        params = list(extra)
        for name, tp in types_.items():
            annotation, default = _option(name, tp, dict(fields[name].metadata), _shown_default(fields[name]))
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))

        def command(**kwargs: Any) -> None:
            flags = {k: v for k, v in kwargs.items() if k in types_ and v not in (None, [], ())}
            flags = {k: list(v) if isinstance(v, tuple) else v for k, v in flags.items()}
            fn(flags, **{k: v for k, v in kwargs.items() if k not in types_})

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__doc__ = fn.__doc__
        command.__name__ = fn.__name__
        return command

    return wrap
