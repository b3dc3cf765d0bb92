"""One driver for every training method: open or resume the run, load the data and the model, build the method's
trainer, train under the stop handler, finish and record. A method (lancy_trl/train/methods/) says only what differs.

    result = run(methods.get("sft"), prepare(methods.get("sft"), args, flags), console)

The run directory, run.json and its status, the saved config, held-out rows, the lock, the log file, resume,
interrupts, the whole-run loss and the final save are here and in lancy_trl/train/ending.py, once for all methods.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lancy_trl import runs
from lancy_trl.config import to_dict
from lancy_trl.errors import LancyError
from lancy_trl.privacy import network
from lancy_trl.scale import distributed
from lancy_trl.train import ending, trackers
from lancy_trl.train.ending import RunResult


@dataclass
class Run:
    """What a method's hooks see of the run being made."""

    method: Any
    args: Any
    console: Any
    run_dir: Path
    checkpoint: str | None
    data: Any = None
    source: Any = None
    loaded: Any = None
    report: dict[str, Any] = field(default_factory=dict)  # what the data became once tokenized (data/tokens.py)
    state: dict[str, Any] = field(default_factory=dict)  # the method's own (a DP plan, reward functions, ...)
    writer: Any = None
    interrupt: Any = None
    callbacks: list[Any] = field(default_factory=list)
    clock: Any = None

    @property
    def info(self) -> dict[str, Any]:
        return self.loaded.info


@dataclass
class Plan:
    """A run to make: its resolved config, and for a resume, its directory and the checkpoint it goes on from."""

    args: Any
    run_dir: Path
    checkpoint: str | None


def run(method: Any, plan: Plan, console: Any) -> RunResult:
    """A whole run of `method`: new, or resumed from its last whole checkpoint."""
    args, checkpoint = plan.args, plan.checkpoint
    if checkpoint is not None:
        console.print(f"Resuming {plan.run_dir} from {Path(checkpoint).name}", highlight=False, soft_wrap=True)
        drop_partial_checkpoints(plan.run_dir, console)
    method.check(args)
    r = Run(method, args, console, plan.run_dir, checkpoint, clock=Clock())
    r.data, r.source, r.loaded = setup(r)
    record = method.prepare(r)
    r.clock.mark("prepare")
    r.run_dir = open_run(r, record)
    with ending.recorded(r.run_dir, method.name), trackers.local_stores(args, r.run_dir):
        r.writer, r.interrupt, r.callbacks = observers(args, r.run_dir, console)
        report_data(r)
        trainer = method.build(r)
        facts(r, trainer)
        r.clock.mark("build")
        console.print(f"[bold]{r.run_dir}[/]\n  {method.describe(r, trainer)}" + notes(args, r.info, trainer))
        result = ending.train(trainer, r.run_dir, checkpoint, r.interrupt, console, method.name)
        method.after(r, trainer, result)
        r.clock.mark("train")
        if result.status == "complete":
            ending.finish(trainer, result, method.meta(r), method.model_as_checkpointed)
            r.clock.mark("save")
        r.writer.close()
        result.phases = r.clock.seconds
        if distributed.is_main():
            runs.update(r.run_dir, phase_seconds=r.clock.seconds)
        return result


class Clock:
    """Seconds each phase of the process took: `startup` (process start to the driver: interpreter and imports),
    `data`, `model` (resolve and load), `prepare` (token counts), `build` (the trainer, with TRL's tokenization),
    `train` (with in-training evaluations) and `save`; kept in run.json `phase_seconds`."""

    first = True  # only a process's first run has a startup of its own (tests run many in one process)

    def __init__(self) -> None:
        self.last = time.time()
        self.seconds: dict[str, float] = {}
        started = process_age() if Clock.first else None
        Clock.first = False
        if started is not None:
            self.seconds["startup"] = round(started, 2)

    def mark(self, phase: str) -> None:
        now = time.time()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self.last, 2)
        self.last = now


def process_age() -> float | None:
    """Seconds since this process started (Linux: its start in clock ticks since boot), else None."""
    import os

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def prepare(method: Any, args: Any, flags: dict[str, Any]) -> Plan:
    """The run to make, resolved once: a new run (its folder checked writable), or the run `--resume` names with its
    saved config and the new flags on top (its processes and engine too, so a resumed run launches as it was
    launched). --offline (or HF_HUB_OFFLINE=1) takes effect here, before anything loads."""
    network.apply(args)
    if args.resume:
        from lancy_trl.config import resolve

        run_dir, checkpoint = runs.find_resume(args.resume, args.run_dir, args.output_dir, method.name)
        saved = runs.read(run_dir).get("config", {})
        args = resolve(method.args, saved, {**flags, "resume": args.resume}, source=str(run_dir / "config.yaml"))
        plan, parent = Plan(args, run_dir, str(checkpoint)), run_dir.parent
    else:
        parent = Path(args.run_dir).parent if args.run_dir else Path(args.output_dir)
        check_writable(parent)
        plan = Plan(args, Path(args.run_dir) if args.run_dir else Path(), None)
    trackers.check(plan.args)  # a resumed run's as it was started, with the new flags on top
    trackers.trackio_folder(plan.args, parent)
    return plan


def drop_partial_checkpoints(run_dir: Path, console: Any) -> None:
    """Checkpoints whose save was cut off are named and removed before a resume: never read, and never left for
    the Trainer's rotation to keep in place of a whole one."""
    import shutil

    if not distributed.is_main():
        return
    for path in runs.partial_checkpoints(run_dir):
        console.print(f"[yellow]note:[/] skipping {path.name}: its save was cut off (removed)", highlight=False)
        shutil.rmtree(path, ignore_errors=True)


def setup(r: Run) -> tuple[Any, Any, Any]:
    """(data, model source, loaded model): the data first (a resumed run's checked against what it started on), then
    the model's memory estimated and the model loaded; impossible speed options and unknown LoRA targets are refused
    before a run directory exists."""
    from lancy_trl.models import load_model, pick_device, preflight, resolve_model, warn_remote_code
    from lancy_trl.scale import memory, moe
    from lancy_trl.scale.engines import check_device
    from lancy_trl.train.arguments import check_targets, trainer_options

    args, console = r.args, r.console
    device = pick_device(args.device)
    check_device(args, device)
    distributed.start(device)
    with console.status("Loading data..."), main_first():  # rank 0 fills the caches, the others read them
        data = r.method.load_data(args)
    r.clock.mark("data")
    if r.checkpoint is not None:
        check_same_data(r.run_dir, data, args)
        check_processes(r.run_dir, console)
    if getattr(args, "canaries", 0):  # seeded: a resumed run plants the same secrets in the same places
        plant_canaries(args, data)
    with main_first():  # a download or GGUF conversion happens once
        source = resolve_model(args.model, log=console.print)
    warn_remote_code(args, source, console)
    config = preflight(source, args)
    moe.check_args(args, config, source.path)
    estimate = memory.report(args, config, device, data, r.method.memory_rows, console)
    with console.status(f"Loading {source.path}..."):
        loaded = load_model(source, args, device=device)
    loaded.info.update(estimate)
    r.clock.mark("model")
    trainer_options(args, loaded.info)
    if args.use_lora and args.lora_target_modules:
        check_targets(args.lora_target_modules, loaded.model)
    return data, source, loaded


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 first, then the other processes of a launched run (accelerate's barrier); nothing for one process."""
    if distributed.world_size() == 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def plant_canaries(args: Any, data: Any) -> None:
    from lancy_trl.privacy import canaries

    if args.canaries < 0 or args.canary_repeats < 1:
        raise LancyError(f"--canaries must be 0 or more and --canary-repeats at least 1 (got {args.canaries} and "
                         f"{args.canary_repeats})")
    data.train, data.canaries = canaries.plant(data.train, args.canaries, args.canary_repeats, args.seed)
    data.notes.append(f"planted {args.canaries} canaries x{args.canary_repeats} among the training rows "
                      f"(canaries.json; measure with `lancy eval --model RUN --canaries`)")


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any model is loaded, without creating it:
    a run that stops on bad input leaves no folder behind (the run directory is made when training starts)."""
    import os
    import tempfile

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = "permission denied"
    else:
        try:
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as e:
            problem = e.strerror or type(e).__name__
    if problem:
        raise LancyError(f"cannot write runs to {folder} ({problem}); pass a writable --output-dir")


def check_same_data(run_dir: Path, data: Any, args: Any) -> None:
    """A resumed run must see the rows it started on: the data order and the held-out rows depend on them."""
    before = runs.read(run_dir).get("data", {}).get("train_fingerprint")
    now = data.stats.get("train_fingerprint")
    if before and now != before and not args.allow_data_change:
        raise LancyError(f"the training data changed since {run_dir} started (fingerprint {now}, was {before}); "
                         "resume with the same data, or pass --allow-data-change to continue on the new rows")


def check_processes(run_dir: Path, console: Any) -> None:
    """A run resumed with another number of processes goes on, with what changes said."""
    before = runs.read(run_dir).get("processes", 1)
    if before != distributed.world_size():
        console.print(f"[yellow]note:[/] {run_dir} trained with {before} process(es) and resumes with "
                      f"{distributed.world_size()}: the global batch changes with the count, the data order from here "
                      "on differs from an uninterrupted run, and the learning-rate schedule keeps its step count",
                      highlight=False)


def open_run(r: Run, record: dict[str, Any]) -> Path:
    """The run directory (created for a new run, with the rows it holds out) and run.json saying `running`, owned by
    this process; with several processes, rank 0 creates and writes it and the others are given its path."""
    args, data, command, run_dir = r.args, r.data, r.method.name, r.run_dir
    if not distributed.is_main():
        return distributed.share(None) if r.checkpoint is None else run_dir
    if r.checkpoint is None:
        name = args.run_name or runs.run_name(args, r.source.name, data.name, mode=command)
        run_dir = runs.create(args.output_dir, name) if not args.run_dir else runs.create(run_dir.parent, run_dir.name)
    runs.claim(run_dir)  # held while this process trains here; a second process is refused, naming this one
    if r.checkpoint is None:
        held_out = runs.save_rows(run_dir, {"validation": (data.eval, data.stats.get("eval_from", "validation split")),
                                            "test": (data.test, "test split")})
        runs.update(run_dir, command=command, held_out=held_out, task=data.kind, dataset=data.name,
                    labels=list(data.labels))
        if data.canaries:
            from lancy_trl.privacy import canaries

            canaries.save(run_dir, data.canaries, data.train)
    config = to_dict(args)
    runs.save_config(run_dir, config)
    runs.update(run_dir, status="running", owner=runs.owner(), offline=network.offline(), config=config,
                model_name=r.source.name, base_model_path=r.source.path, model_info=r.info, versions=versions(),
                processes=distributed.world_size(), global_batch_size=global_batch(args),
                started=time.strftime("%Y-%m-%dT%H:%M:%S"), **record)
    return distributed.share(run_dir) if r.checkpoint is None else run_dir


def observers(args: Any, run_dir: Path, console: Any) -> tuple[Any, Any, list[Any]]:
    """(TensorBoard writer, Ctrl-C handler, the callbacks every method trains with). Rank 0 alone writes the logs
    and shows progress; every rank takes Ctrl-C and the time-based saves at the same step."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    from lancy_trl.train.callbacks import GracefulInterrupt, LogFile, RichProgress, SaveEvery

    interrupt = GracefulInterrupt(console)
    shared = [SaveEvery(args.save_minutes), interrupt]
    if not distributed.is_main():
        return distributed.NullWriter(), interrupt, shared
    own = [LogFile(run_dir / "logs" / "training.log"), RichProgress(console), *shared]
    if "tensorboard" not in trackers.chosen(args):
        return distributed.NullWriter(), interrupt, own
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    return writer, interrupt, [TensorBoardCallback(writer), *own]


def report_data(r: Run) -> None:
    """What the data became that the user should know (rows dropped with counts, redactions, canaries), the mixture
    as realised, and the tokens trained on, on screen, in TensorBoard and in run.json."""
    for note in r.data.notes:
        r.console.print(f"[yellow]note:[/] {note}", highlight=False)
    tokens = r.report.get("train_tokens")
    if not isinstance(tokens, dict):  # streamed: counted as it goes
        runs.update(r.run_dir, data={**r.data.stats, **r.report, "notes": r.data.notes})
        return
    mixture = r.data.stats.get("mixture")
    if mixture:
        from rich.table import Table

        table = Table(title="Mixture as realised")
        for col in ("source", "rate", "examples", "tokens", "source rows", "epochs of source"):
            table.add_column(col)
        lines = ["| source | rate | examples | tokens |", "|---|---|---|---|"]
        for name, m in mixture.items():
            n, t = tokens["examples"].get(name, 0), tokens["tokens"].get(name, 0)
            m.update(examples_after_checks=n, tokens=t)
            table.add_row(name, f"{m['rate']:.3f}", f"{n:,}", f"{t:,}", f"{m['source_examples']:,}", f"{m['epochs_of_source']:.2f}")
            lines.append(f"| {name} | {m['rate']:.3f} | {n} | {t} |")
            r.writer.add_scalar(f"data/examples/{name}", n, 0)
            r.writer.add_scalar(f"data/tokens/{name}", t, 0)
        r.console.print(table)
        r.writer.add_text("data/mixture", "\n".join(lines), 0)
    r.writer.add_scalar("data/train_tokens", sum(tokens["tokens"].values()), 0)
    r.writer.add_scalar("data/train_examples", sum(tokens["examples"].values()), 0)
    runs.update(r.run_dir, data={**r.data.stats, **r.report, "notes": r.data.notes})


def facts(r: Run, trainer: Any) -> None:
    """The trainer's facts (parameters trained, speed paths taken) into run.json and TensorBoard; TRL's printer off
    (the progress bar shows the loss; every record goes to the log file)."""
    from transformers import PrinterCallback

    from lancy_trl.train.callbacks import RunFacts

    trainer.remove_callback(PrinterCallback)
    model: Any = trainer.model
    r.info["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shown = {**{k: v for k, v in r.info.items() if v is not None}, **{f"version_{k}": v for k, v in versions().items()}}
    trainer.add_callback(RunFacts(r.writer, shown, {"trainable_params": r.info["trainable_params"],
                                                     "total_params": r.info["total_params"]}))
    runs.update(r.run_dir, model_info=r.info)


def global_batch(args: Any) -> int:
    """Examples (or completions, or blocks) per optimizer step over every process."""
    return args.batch_size * distributed.world_size() * args.gradient_accumulation_steps


def processes_note(args: Any) -> str:
    """The run summary's words on a launched run: the global batch, and which speed paths are off."""
    from lancy_trl.scale import engines

    n, engine = distributed.world_size(), engines.describe(args)
    if n == 1 and not engine:
        return ""
    where = f"{n} process{'es' if n > 1 else ''}" + (f" under {engine}" if engine else "")
    return (f"\n  {where}: global batch {global_batch(args)} ({args.batch_size} per process x {n} x "
            f"{args.gradient_accumulation_steps} accumulated); lancy's single-process speed paths (compact loss, "
            "shared prefixes, lean log-probs, in-place vocabulary gradients) off: TRL's own loss path")


def notes(args: Any, info: dict[str, Any], trainer: Any) -> str:
    """The run summary's shared lines: a mixture-of-experts model, the memory estimate, several processes."""
    memory = (f"\n  memory estimate for the longest batch (rows of about {info['memory_estimate_row_tokens']} tokens): "
              f"{info['memory_estimate']} of the {info['device']}'s {info['device_memory_gb']} GB"
              if "memory_estimate" in info else "")
    from lancy_trl.scale import moe

    return moe.note(info, trainer) + memory + processes_note(args)


def done(result: RunResult, figures: str = "", more: str = "") -> str:
    """The line a command prints when its run completes: time, steps, the method's figures, where things are."""
    phases = ", ".join(f"{k} {v:.1f}" for k, v in result.phases.items())
    where = f"  seconds: {phases} (total {sum(result.phases.values()):.1f})\n" if phases else ""
    return (f"[green]Done[/] in {result.seconds:.0f} s: {result.steps} steps{figures}.\n"
            f"  model: {result.run_dir / 'model'}\n{more}{where}"
            f"  logs: tensorboard --logdir {result.run_dir / 'tensorboard'}")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "lancy-trl")}
