"""One run lifecycle for every training command (`lancy sft` and `lancy pretrain`; grpo will use the same pieces).

    args, run_dir, checkpoint = prepare(args, flags, console, SFTArgs, "sft")   # new run, or a resume
    data, source, loaded = setup(args, console, run_dir, checkpoint, build_data)  # data, then the model, checked
    run_dir = open_run(args, "sft", run_dir, checkpoint, source, loaded, data, extra)
    with recorded(run_dir, "sft"):                                             # log file, Ctrl-C, failures
        result = train(trainer, run_dir, checkpoint, interrupt, console, "sft")
        if result.status == "complete":
            finish(trainer, result, meta)                # model.part -> model, metrics.json, manifest.json

A command keeps what only it knows (its TRL config, its trainer, its data checks); the run directory, run.json and
its status, the saved config, held-out rows, the log file, resume, interrupts, the whole-run loss and the final save
are here, once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lancy_trl import faults, files, runs
from lancy_trl.config import to_dict
from lancy_trl.errors import LancyError, SaveFailed
from lancy_trl.privacy import network
from lancy_trl.scale import distributed


@dataclass
class RunResult:
    run_dir: Path
    status: str
    steps: int
    train_loss: float | None
    eval_loss: float | None
    seconds: float
    final_eval: dict[str, float] = field(default_factory=dict)


def prepare(args: Any, flags: dict[str, Any], console: Any, cls: Any, command: str) -> tuple[Any, Path, str | None]:
    """(args, run dir, checkpoint): a new run (its folder checked writable), or the saved config of the run being
    resumed with the new flags on top. --offline (or HF_HUB_OFFLINE=1) takes effect here, before anything loads."""
    network.apply(args)
    if args.resume:
        from lancy_trl.config import resolve

        run_dir, checkpoint = runs.find_resume(args.resume, args.run_dir, args.output_dir, command)
        console.print(f"Resuming {run_dir} from {checkpoint.name}", highlight=False, soft_wrap=True)
        drop_partial_checkpoints(run_dir, console)
        saved = runs.read(run_dir).get("config", {})
        args = resolve(cls, saved, {**flags, "resume": args.resume}, source=str(run_dir / "config.yaml"))
        return args, run_dir, str(checkpoint)
    check_writable(Path(args.run_dir).parent if args.run_dir else Path(args.output_dir))
    return args, Path(args.run_dir) if args.run_dir else Path(), None


def drop_partial_checkpoints(run_dir: Path, console: Any) -> None:
    """Checkpoints whose save was cut off are named and removed before a resume: never read, and never left for
    the Trainer's rotation to keep in place of a whole one."""
    import shutil

    if not distributed.is_main():
        return
    for path in runs.partial_checkpoints(run_dir):
        console.print(f"[yellow]note:[/] skipping {path.name}: its save was cut off (removed)", highlight=False)
        shutil.rmtree(path, ignore_errors=True)


def setup(args: Any, console: Any, run_dir: Path, checkpoint: str | None, load_data: Any,
          command: str = "sft") -> tuple[Any, Any, Any]:
    """(data, model source, loaded model): the data first (a resumed run's checked against what it started on), then
    the model's memory estimated and the model loaded; impossible speed options and unknown LoRA targets are refused
    before a run directory exists."""
    from lancy_trl.models import load_model, pick_device, preflight, resolve_model, warn_remote_code
    from lancy_trl.scale import memory, moe
    from lancy_trl.scale.engines import check_device
    from lancy_trl.train.sft import trainer_options

    device = pick_device(args.device)
    check_device(args, device)
    distributed.start(device)
    with console.status("Loading data..."), main_first():  # rank 0 fills the caches, the others read them
        data = load_data(args)
    if checkpoint is not None:
        check_same_data(run_dir, data, args)
        check_processes(run_dir, console)
    if getattr(args, "canaries", 0):  # seeded: a resumed run plants the same secrets in the same places
        plant_canaries(args, data)
    with main_first():  # a download or GGUF conversion happens once
        source = resolve_model(args.model, log=console.print)
    warn_remote_code(args, source, console)
    config = preflight(source, args)
    moe.check_args(args, config, source.path)
    estimate = memory.report(args, config, device, data, command, console)
    with console.status(f"Loading {source.path}..."):
        loaded = load_model(source, args, device=device)
    loaded.info.update(estimate)
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


def print_notes(data: Any, console: Any) -> None:
    """What the data became that the user should know (rows dropped with counts, redactions, canaries)."""
    for note in data.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


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


def open_run(args: Any, command: str, run_dir: Path, checkpoint: str | None, source: Any, loaded: Any, data: Any,
             extra: dict[str, Any]) -> Path:
    """The run directory (created for a new run, with the rows it holds out) and run.json saying `running`, owned by
    this process; with several processes, rank 0 creates and writes it and the others are given its path."""
    if not distributed.is_main():
        return distributed.share(None) if checkpoint is None else run_dir
    if checkpoint is None:
        name = args.run_name or runs.run_name(args, source.name, data.name, mode=command)
        run_dir = runs.create(args.output_dir, name) if not args.run_dir else runs.create(run_dir.parent, run_dir.name)
    runs.claim(run_dir)  # held while this process trains here; a second process is refused, naming this one
    if checkpoint is None:
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
                model_name=source.name, base_model_path=source.path, model_info=loaded.info, versions=versions(),
                processes=distributed.world_size(), global_batch_size=global_batch(args),
                started=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)
    return distributed.share(run_dir) if checkpoint is None else run_dir


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


def check_processes(run_dir: Path, console: Any) -> None:
    """A run resumed with another number of processes goes on, with what changes said."""
    before = runs.read(run_dir).get("processes", 1)
    if before != distributed.world_size():
        console.print(f"[yellow]note:[/] {run_dir} trained with {before} process(es) and resumes with "
                      f"{distributed.world_size()}: the global batch changes with the count, the data order from here "
                      "on differs from an uninterrupted run, and the learning-rate schedule keeps its step count",
                      highlight=False)


def observers(args: Any, run_dir: Path, console: Any) -> tuple[Any, Any, list[Any]]:
    """(TensorBoard writer, Ctrl-C handler, the callbacks every command trains with). Rank 0 alone writes the logs
    and shows progress; every rank takes Ctrl-C and the time-based saves at the same step."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    from lancy_trl.train.callbacks import GracefulInterrupt, LogFile, RichProgress, SaveEvery

    interrupt = GracefulInterrupt(console)
    shared = [SaveEvery(args.save_minutes), interrupt]
    if not distributed.is_main():
        return distributed.NullWriter(), interrupt, shared
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    return writer, interrupt, [TensorBoardCallback(writer), LogFile(run_dir / "logs" / "training.log"),
                               RichProgress(console), *shared]


@contextmanager
def recorded(run_dir: Path, command: str) -> Iterator[None]:
    """Everything logged goes to logs/training.log; a failure marks the run `failed`; an abort, or a save the disk
    refused, `interrupted`, with the resume command when a checkpoint exists. The run's lock is let go on the way
    out, however the run ends."""
    import datasets

    from lancy_trl import logs

    datasets.disable_progress_bars()
    try:
        # rank 0 keeps the log; the other ranks' library messages go nowhere, a failure still ends in its one line
        with logs.to_file(run_dir / "logs" / "training.log" if distributed.is_main() else None), quiet_full_disk():
            yield
    except KeyboardInterrupt:
        raise LancyError(stopped(run_dir, command, "aborted")) from None
    except SaveFailed as e:
        raise LancyError(stopped(run_dir, command, str(e))) from None
    except OSError as e:
        if e.errno not in files.NO_ROOM:
            mark(run_dir, status="failed", error=f"{type(e).__name__}: {e}")
            raise
        raise LancyError(stopped(run_dir, command, files.refused(e, Path(e.filename or run_dir)))) from None
    except (Exception, network.OfflineViolation) as e:
        mark(run_dir, status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        runs.release(run_dir)


@contextmanager
def quiet_full_disk() -> Iterator[None]:
    """A background writer (TensorBoard's) that meets a full or read-only disk stops without a traceback: the run's
    own next write meets the same disk and says it in one line."""
    import threading

    previous = threading.excepthook

    def hook(args: Any) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in files.NO_ROOM):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def mark(run_dir: Path, **fields: Any) -> None:
    """run.json updated on the way out of a run, as far as the disk allows (it may be the full one)."""
    try:
        runs.update(run_dir, **fields)
    except OSError:
        pass


def stopped(run_dir: Path, command: str, why: str) -> str:
    """The run marked `interrupted`, and the line that says why and how it goes on."""
    mark(run_dir, status="interrupted")
    if runs.complete_checkpoints(run_dir):
        return (f"{why}; the run is interrupted, resume it from its last checkpoint with `lancy {command} --resume "
                f"latest --run-dir {run_dir}`")
    return f"{why}; stopped before the first checkpoint: nothing to resume; start again (the logs stay in {run_dir})"


def train(trainer: Any, run_dir: Path, checkpoint: str | None, interrupt: Any, console: Any, command: str) -> RunResult:
    """trainer.train() under the Ctrl-C handler; the train loss covers the whole run, resumed or not."""
    from lancy_trl.scale.engines import fsdp_wanted
    from lancy_trl.train.callbacks import whole_run_loss

    if fsdp_wanted(trainer.args) and not getattr(trainer, "is_fsdp_enabled", False):  # check_device's safety net
        raise LancyError("FSDP was asked for but accelerate did not enable it on this device: the run would train "
                         "whole copies; drop --fsdp or run on GPUs")
    from lancy_trl.scale.moe import router_loss

    if router_loss(trainer):
        runs.update(run_dir, router_aux_loss_coef=router_loss(trainer))
    # read before training: --save-total-limit may delete the checkpoint this run resumed from on the way
    first = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"] if checkpoint else 0
    start = time.time()
    with interrupt:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.time() - start
    state = trainer.state
    train_loss = whole_run_loss(state.log_history, first, output.training_loss, state.global_step)
    eval_loss = next((h["eval_loss"] for h in reversed(state.log_history) if "eval_loss" in h), None)
    final = {k: v for h in state.log_history for k, v in h.items() if k.startswith("eval_")}  # the latest of each
    if not interrupt.requested:
        return RunResult(run_dir, "complete", state.global_step, train_loss, eval_loss, seconds, final)
    runs.update(run_dir, status="interrupted", steps=state.global_step)
    console.print(f"[yellow]Interrupted at step {state.global_step}; checkpoint saved.[/] Resume with:\n"
                  f"  lancy {command} --resume latest --run-dir {run_dir}")
    return RunResult(run_dir, "interrupted", state.global_step, train_loss, eval_loss, seconds, final)


def finish(trainer: Any, result: RunResult, meta: dict[str, Any]) -> None:
    """The adapter (or full model) and tokenizer with lancy.json (`meta`), written to model.part and renamed once
    whole; then metrics.json and manifest.json, each replaced whole; then run.json `complete`, last, so `complete`
    means every one of them is there. A kill anywhere before leaves the run `interrupted` and resumable."""
    import shutil

    from transformers.utils import logging as hf_logging

    run_dir = result.run_dir
    tmp, final = run_dir / "model.part", run_dir / "model"
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar after the run's own summary
    text_config = trainer.model.config.get_text_config()
    if getattr(text_config, "output_router_logits", False):  # on for training only (TRL's router loss)
        text_config.output_router_logits = False
    try:
        trainer.save_model(str(tmp))  # every rank: a sharded engine gathers the weights; rank 0 writes them
        if not distributed.is_main():
            return
        files.write_json(tmp / "lancy.json", meta)
        faults.point("finish.model", tmp)
    except OSError as e:
        if e.errno not in files.NO_ROOM:
            raise
        from lancy_trl.train.resumable import saved_bytes

        needed = saved_bytes(trainer.model, whole=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveFailed(files.refused(e, run_dir, needed)) from None
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    faults.point("finish.rename", final)
    metrics = {"step": result.steps, "train_loss": result.train_loss, **result.final_eval}
    files.write_json(run_dir / "metrics.json", metrics, fault="finish.metrics")
    from lancy_trl.privacy import manifest

    manifest.write(run_dir)  # sha256 of the data files, base model and output: `lancy manifest RUN --verify`
    runs.update(run_dir, status="complete", steps=result.steps, train_loss=result.train_loss,
                eval_loss=result.eval_loss, train_seconds=round(result.seconds, 1), **peak_memory(),
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"), final_eval=result.final_eval)


def peak_memory() -> dict[str, float]:
    """This process's peak: GPU memory allocated on CUDA, resident memory otherwise (GB), beside the estimate."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        return {"peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2)}
    return {"peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)}


def lora_config(args: Any, model: Any, info: dict[str, Any]) -> Any:
    """peft's LoraConfig from the shared LoRA options (every linear layer but the LM head by default), or None."""
    if not args.use_lora:
        return None
    if hasattr(model, "peft_config"):  # --model runs/<LoRA run>: its adapter goes on training, with its own settings
        config = model.peft_config["default"]
        info["lora_target_modules"] = ",".join(sorted(config.target_modules))
        info["lora_continued_from"] = info.get("adapter")
        return None
    from peft import LoraConfig

    from lancy_trl.models import lora_targets

    targets = args.lora_target_modules or lora_targets(model)
    info["lora_target_modules"] = ",".join(targets)
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def check_targets(targets: list[str], model: Any) -> None:
    """Every --lora-target-modules name must match a module of the model; else list the linear layers it has."""
    from lancy_trl.models import lora_targets

    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    names = [t for t in targets if t != "all-linear" and not set(t) & set("*+?[]()|^$\\")]  # peft's keyword and regexes pass
    missing = [t for t in names if t not in leaves and not any(n.endswith("." + t) for n, _ in model.named_modules())]
    if missing:
        raise LancyError(f"--lora-target-modules {', '.join(missing)}: no such module in this model; its linear layers "
                         f"are {', '.join(lora_targets(model))}")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "lancy-trl")}
