"""Run directories: naming, the saved config, status (a dead owner reads as interrupted), held-out rows, and
finding where to resume.

    runs/2026-07-30_14h32m_smollm2-135m_finsent-sentiment_sft_bs8_len256_ep2_lora-r16/
        run.json            status (running / interrupted / failed / complete), owner (pid, host), the command,
                            versions, data and model facts, the task and label words, the held-out rows
        run.lock            locked by the process that trains in the run (the kernel unlocks it when that process
                            ends, killed or not): a run is `running` while its lock is held
        config.yaml/.json   the resolved config
        data/               validation.jsonl / test.jsonl: the rows the run held out, as it built them
        logs/training.log   everything logged
        tensorboard/        losses, tokens seen, parameters, device, dtype, versions
        checkpoints/        resumable checkpoints (optimizer, scheduler, data position)
        model/              the final adapter or model, loadable by peft / transformers
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from lancy_trl import files, record
from lancy_trl.errors import LancyError

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_claimed: dict[str, files.Lock] = {}  # the runs this process trains in, by resolved path


def run_name(args: Any, model_name: str, data_name: str, mode: str = "sft", now: datetime | None = None) -> str:
    now = now or datetime.now()
    from lancy_trl.ranks import world_size

    params = [f"bs{args.batch_size * world_size() * args.gradient_accumulation_steps}", f"len{args.max_length}"]
    params.append(f"steps{args.max_steps}" if args.max_steps > 0 else f"ep{args.num_train_epochs:g}")
    if args.use_lora:
        params.append(f"lora-r{args.lora_r}")
    return "_".join([now.strftime("%Y-%m-%d_%Hh%Mm"), model_name, data_name, mode, "_".join(params)])


def create(parent: str | Path, name: str) -> Path:
    """A fresh run directory; never reuses an existing one (a suffix is added instead)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = parent / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise LancyError(f"too many runs named {name} in {parent}; pass --run-name")


def require(run: Path, hint: str = "pass the folder a run made") -> Path:
    """`run` when it is a run directory (it has run.json); else one line naming it and `hint`."""
    if not (run / RUN_FILE).is_file():
        raise LancyError(f"{run} is not a lancy run directory (no {RUN_FILE}); {hint}")
    return run


def read(run_dir: Path) -> dict[str, Any]:
    """run.json, with the status a dead owner leaves (`running` from a killed process) shown as `interrupted`."""
    info = json.loads((run_dir / RUN_FILE).read_text())
    if info.get("status") == "running" and not alive(run_dir, info.get("owner")):
        info["status"] = "interrupted"
    return info


def load(run_dir: Path) -> record.RunRecord:
    """run.json typed (lancy_trl/record.py), the status a dead owner leaves read as `interrupted`."""
    return record.from_dict(read(run_dir))


def claim(run_dir: Path) -> None:
    """Mark `run_dir` as trained by this process: its lock, held until release() or until the process ends, however
    it ends. Refused, naming the process, while another one holds it."""
    key = str(run_dir.resolve())
    if key in _claimed:
        return
    lock = files.hold(run_dir / LOCK_FILE, f"pid {os.getpid()} on {owner()['host']}\n")
    if lock is None:
        raise LancyError(f"{run_dir} is being trained by another process ({holder(run_dir)}); wait for it to finish, "
                         "or stop it (Ctrl-C saves a checkpoint) and resume then")
    _claimed[key] = lock


def release(run_dir: Path) -> None:
    lock = _claimed.pop(str(run_dir.resolve()), None)
    if lock is not None:
        lock.release()


def busy(run_dir: Path) -> bool:
    """Whether a live process (this one included) trains in `run_dir`."""
    return str(run_dir.resolve()) in _claimed or files.held_elsewhere(run_dir / LOCK_FILE)


def holder(run_dir: Path) -> str:
    try:
        return (run_dir / LOCK_FILE).read_text().strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def alive(run_dir: Path, who: dict[str, Any] | None) -> bool:
    """Whether the process that runs `run_dir` still runs: its lock tells (runs made before locks: its pid)."""
    if (run_dir / LOCK_FILE).is_file():
        return busy(run_dir)
    return owner_alive(who)


def owner() -> dict[str, Any]:
    """The process that runs a run, recorded in run.json so a `kill -9` can be told from a live run."""
    import os
    import socket

    return {"pid": os.getpid(), "host": socket.gethostname()}


def owner_alive(who: dict[str, Any] | None) -> bool:
    """Whether the recorded owner still runs; a run recorded on another host is taken as alive (it cannot be checked)."""
    import os
    import socket

    if not who or who.get("host") != socket.gethostname():
        return bool(who)
    try:
        os.kill(int(who["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def save_rows(run_dir: Path, splits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows a run holds out, as the chat rows it built (template, system prompt and answers as trained), in
    data/<split>.jsonl: what `lancy eval` on the run scores by default. Returns what was written."""
    folder = run_dir / "data"
    folder.mkdir(exist_ok=True)
    written = {}
    for split, (ds, origin) in splits.items():
        if ds is None or len(ds) == 0:
            continue
        with (folder / f"{split}.jsonl").open("w") as fh:
            for row in ds:
                fh.write(json.dumps(row) + "\n")
        written[split] = {"file": f"data/{split}.jsonl", "rows": len(ds), "from": origin}
    return written


def update(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into run.json, written by global rank 0 alone (the other processes of a run leave it be)."""
    from lancy_trl.ranks import is_main

    record.check(fields)
    path = run_dir / RUN_FILE
    if not is_main():
        return {}
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(fields)
    files.write_json(path, data, fault="runjson")  # atomic: a crash never leaves a half-written run.json
    return data


def save_config(run_dir: Path, config: dict[str, Any]) -> None:
    import yaml

    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def checkpoint_complete(path: Path) -> bool:
    """Whether a checkpoint finished saving: the Trainer writes trainer_state.json after every other file of it (and
    lancy's trainers delete a stale one before saving over a folder), so a whole, readable one at its step says so."""
    m = CHECKPOINT_RE.match(path.name)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(m) and isinstance(state, dict) and state.get("global_step") == int(m.group(1))  # type: ignore[union-attr]


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = run_dir / "checkpoints"
    found = [(int(m.group(1)), p) for p in (folder.glob("checkpoint-*") if folder.is_dir() else [])
             if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints that finished saving, oldest first."""
    return [p for _, p in _checkpoints(run_dir) if checkpoint_complete(p)]


def partial_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints whose save was cut off (a kill, a full disk): never resumed from."""
    return [p for _, p in _checkpoints(run_dir) if not checkpoint_complete(p)]


def all_runs(parent: Path) -> list[Path]:
    """Run directories under parent, newest first."""
    found = [p for p in parent.glob("*") if (p / RUN_FILE).is_file()] if parent.is_dir() else []
    return sorted(found, key=lambda p: (p / RUN_FILE).stat().st_mtime, reverse=True)


def why_not_resumable(run: Path, command: str = "sft") -> str | None:
    """None when `lancy COMMAND` can resume the run, else the reason (another command's run, complete, still
    running, no checkpoint)."""
    info = read(run)
    made_by = info.get("command", "sft")
    if made_by != command:
        return f"{run} is a `lancy {made_by}` run; resume it with `lancy {made_by} --resume`"
    if info.get("status") == "complete":
        return (f"{run} is complete ({info.get('steps', '?')} steps): resuming would train past its end. To train "
                f"further, start a new run from it with a larger budget: `lancy {command} --model {run} --max-steps N` "
                "(or --num-train-epochs)")
    if info.get("status") == "running":
        who = info.get("owner") or {}
        return f"{run} is still running (pid {who.get('pid')} on {who.get('host')}); stop it first (Ctrl-C saves a checkpoint)"
    if not complete_checkpoints(run):
        return f"{run} stopped before its first checkpoint ({info.get('status')}); nothing to resume: start a new run"
    return None


def find_resume(resume: str, run_dir: str | None, output_dir: str, command: str = "sft") -> tuple[Path, Path]:
    """(run dir, checkpoint) for `lancy COMMAND --resume latest|PATH`: `latest` is the newest run COMMAND can
    resume; another command's run, or one that is complete, still running or without a checkpoint, is refused with
    the reason."""
    checkpoint = None
    if resume != "latest":
        path = Path(resume)
        if CHECKPOINT_RE.match(path.name) and path.is_dir():
            checkpoint, run_dir = path, str(path.parent.parent)
            if not checkpoint_complete(path):
                done = complete_checkpoints(path.parent.parent)
                raise LancyError(f"{path} is incomplete (its save was cut off); resume from "
                                 + (f"{done[-1]}, the newest complete one" if done else "the run's start: run it again"))
        else:
            run_dir = str(path)
    if run_dir is None:
        candidates = all_runs(Path(output_dir))
        run = next((r for r in candidates if why_not_resumable(r, command) is None), None)
        if run is None:
            newest = f" (newest: {why_not_resumable(candidates[0], command)})" if candidates else ""
            raise LancyError(f"no resumable run in {output_dir}/{newest}; start one with `lancy {command}` or pass "
                             "--run-dir")
    else:
        run = require(Path(run_dir), f"pass the folder `lancy {command}` made")
        if (why := why_not_resumable(run, command)) is not None:
            raise LancyError(why)
    return run, checkpoint or complete_checkpoints(run)[-1]
