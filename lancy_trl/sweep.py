"""`lancy sweep`: a grid over any training flags, one run per point, one after another, resumable as a whole.

    spec = Spec.make("sft", parse_grid(["learning_rate=1e-4,2e-4", "lora_r=8,16"]), ["--max-steps", "50"], "lr-r")
    for point in spec.points(): ...    # {"learning_rate": "1e-4", "lora_r": "8"}, ...

A sweep is a folder (`runs/<name>/`) holding `sweep.json` (the command, the grid, the flags every run shares) and
one run per point, named by its values (`learning_rate=1e-4+lora_r=8`). Run again (or `--resume` the folder), a
sweep skips its complete runs, resumes an interrupted one from its last checkpoint and starts the rest.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError

SPEC_FILE = "sweep.json"
GRID_ITEM = re.compile(r"^[A-Za-z_][\w-]*=")  # `learning_rate=1e-4,2e-4`, not a flag


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """{key: values} from `key=v1,v2` items (several per item, space-separated, also allowed); dashes read as
    underscores."""
    grid: dict[str, list[str]] = {}
    for item in (part for text in items for part in text.split()):
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise LancyError(f"--grid {item!r}: write KEY=VALUE1,VALUE2 (e.g. learning_rate=1e-4,2e-4)")
        grid[key.strip().lstrip("-").replace("-", "_")] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def grid_file(path: Path) -> dict[str, list[str]]:
    """A YAML grid: `key: [value, ...]` per line (a single value is a one-point axis)."""
    from lancy_trl.config import load_yaml

    data = load_yaml(path)
    return {str(k).replace("-", "_"): [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in data.items()}


@dataclass
class Spec:
    command: str
    grid: dict[str, list[str]]
    flags: list[str]  # every run's own flags, as typed

    def points(self) -> list[dict[str, str]]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def check(self) -> None:
        """Every key a setting of the command, with at least one value (their types: cli/sweep.check_flags)."""
        from lancy_trl.config import field_types
        from lancy_trl.errors import did_you_mean
        from lancy_trl.train import methods

        if not self.grid:
            raise LancyError("a sweep needs a grid: --grid KEY=V1,V2 (or --grid-file FILE.yaml)")
        method = methods.get(self.command)
        types_ = field_types(method.args)
        for key in self.grid:
            if key not in types_:
                raise LancyError(f"--grid {key}: `lancy {self.command}` has no such setting{did_you_mean(key, types_)}")
            if not self.grid[key]:
                raise LancyError(f"--grid {key}: give at least one value")

    def save(self, folder: Path) -> None:
        from lancy_trl.files import write_json

        write_json(folder / SPEC_FILE, asdict(self))

    @staticmethod
    def load(folder: Path) -> Spec:
        try:
            return Spec(**json.loads((folder / SPEC_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            raise LancyError(f"{folder} is not a sweep (no readable {SPEC_FILE}); pass the folder `lancy sweep` made") from None


def name(point: dict[str, str]) -> str:
    """A point's run name: its values by key, `learning_rate=1e-4+lora_r=8`."""
    return "+".join(f"{k}={v}" for k, v in point.items()).replace("/", "_")


def point_flags(point: dict[str, str]) -> list[str]:
    """A point's values as command-line flags; a list setting takes its values after one flag."""
    out: list[str] = []
    for key, value in point.items():
        flag = "--" + key.replace("_", "-")
        if value.lower() in ("true", "false"):
            out.append(flag if value.lower() == "true" else "--no-" + key.replace("_", "-"))
        else:
            out += [flag, *value.split()]
    return out


def next_step(run: Path) -> str:
    """What a point's run needs: `start` (no run yet), `done`, `resume` (a whole checkpoint) or `restart` (a run
    that stopped before its first checkpoint); refused while another process trains it."""
    from lancy_trl import runs

    if not (run / runs.RUN_FILE).is_file():
        return "start"
    status = runs.read(run).get("status")
    if status == "complete":
        return "done"
    if status == "running":
        raise LancyError(f"{run} is being trained by another process ({runs.holder(run)}); wait for it, or stop it")
    return "resume" if runs.complete_checkpoints(run) else "restart"


def argv(spec: Spec, point: dict[str, str], folder: Path, step: str) -> list[str]:
    """The lancy command line for one point: a new run in the sweep's folder, or the resume of its run."""
    run = folder / name(point)
    if step == "resume":
        return [spec.command, "--resume", str(run)]
    return [spec.command, *spec.flags, *point_flags(point), "--output-dir", str(folder), "--run-name", name(point)]


# what each point's process finds imported: forked from a server that imported these once
PRELOAD = ["torch", "transformers", "trl", "peft", "datasets", "lancy_trl.cli", "lancy_trl.train.trainer",
           "lancy_trl.data.build"]


def die_with_parent() -> None:
    """In a point's process (Linux): killed when its parent dies (the fork server, which exits when the sweep's
    process does), so a killed sweep leaves no run going on alone (the sweep resumes it)."""
    import ctypes
    import os
    import signal
    from multiprocessing import forkserver

    # the server lives while any process holds the sweep's end of its "alive" pipe, which it hands to each child
    server: Any = forkserver._forkserver  # type: ignore[attr-defined]
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:  # the server was gone before the signal was asked for
        os._exit(1)


def run_point(args: list[str]) -> int:
    """`lancy ARGS` in a process of its own; its exit code (negative: the signal that ended it).

    Each point's process is forked from a server that imported torch, transformers, TRL, peft and lancy once
    (multiprocessing's forkserver, started at the first point): a whole process with its own memory, files, locks and
    signals that skips about 10 s of imports on 2 cores. The server only imports, so each process starts its thread
    pools fresh. Ctrl-C reaches the run itself, which saves at a step and exits: the sweep waits for it."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    process = context.Process(target=point_process, args=(args,), name="lancy-sweep-point")
    process.start()
    while process.exitcode is None:
        try:
            process.join()
        except KeyboardInterrupt:  # the run got the same Ctrl-C; it saves and stops on its own
            continue
    return process.exitcode


def point_process(args: list[str]) -> None:
    """A point's process: `lancy ARGS`, then a normal exit with the command's code (the exit handlers, then
    multiprocessing's finalizers)."""
    import atexit
    import sys

    from lancy_trl.cli import run_as_script

    die_with_parent()
    code = run_as_script(args)
    atexit._run_exitfuncs()  # a forked process ends with os._exit, which skips them
    sys.exit(code)


def describe(spec: Spec) -> str:
    axes = " x ".join(f"{k} ({len(v)})" for k, v in spec.grid.items())
    return f"{len(spec.points())} runs of `lancy {spec.command}`: {axes}"
