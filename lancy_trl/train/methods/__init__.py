"""The training methods. Each is one module saying what differs (its config, its data, its TRL config and trainer,
its summary and what it records); the driver (lancy_trl/train/driver.py) runs every one of them the same way, and the
CLI, `--resume` and the memory estimate read them here.

    method = get("sft")
    result = driver.run(method, driver.prepare(method, resolve(method.args, flags={"max_steps": 20}), {}), console)

A new method is a module of this package that defines METHOD, and its line in REGISTRY.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from lancy_trl.errors import LancyError, did_you_mean

REGISTRY = {  # command -> the module that defines its METHOD, in the order `lancy --help` lists them
    "sft": "lancy_trl.train.methods.sft",
    "pretrain": "lancy_trl.train.methods.pretrain",
    "grpo": "lancy_trl.train.methods.grpo",
    "dpo": "lancy_trl.train.methods.dpo",
}


def _nothing(*_: Any) -> None:
    return None


def _no_record(*_: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    """What a training method supplies; every hook takes the driver's Run (r.args, r.data, r.loaded, r.run_dir, ...)."""

    name: str  # the command
    args: type  # its config: flags, YAML keys and --help come from its fields
    help: str  # the command's one-line description
    load_data: Callable[[Any], Any]  # args -> DataBundle, before the model loads
    build: Callable[[Any], Any]  # Run -> the TRL trainer, callbacks from r.callbacks
    describe: Callable[[Any, Any], str]  # (Run, trainer) -> the run summary under the run directory's name
    meta: Callable[[Any], dict[str, Any]]  # Run -> lancy.json beside the model
    done: Callable[[Any], str]  # RunResult -> what the command prints when the run completes
    prepare: Callable[[Any], dict[str, Any]] = _no_record  # Run -> run.json fields, after the model loads
    after: Callable[[Any, Any, Any], None] = _nothing  # (Run, trainer, RunResult) -> None, after training
    check: Callable[[Any], None] = _nothing  # args -> None: refusals before anything loads
    memory_rows: str = "answers"  # what the memory estimate sizes: "answers", "blocks" or "completions"
    # the model a run hands over is the one its last checkpoint holds (`after` changes nothing): the final save may
    # link that checkpoint's files instead of writing them again (ending.linked_from_checkpoint)
    model_as_checkpointed: bool = False


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise LancyError(f"no training method {name!r}{did_you_mean(name, REGISTRY)}; lancy trains with "
                         f"{', '.join(REGISTRY)}")
    return import_module(REGISTRY[name]).METHOD
