"""How a run ends: trained under the stop handler, then finished (the model saved whole, then metrics, manifest and
`complete`), stopped (Ctrl-C, a full disk: `interrupted`, resumable) or failed; run.json says which.

    with recorded(run_dir, "sft"):                                      # log file, Ctrl-C, full disk, failures
        result = train(trainer, run_dir, checkpoint, interrupt, console, "sft")
        if result.status == "complete":
            finish(trainer, result, meta)                               # model.part -> model, metrics, manifest
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lancy_trl import faults, files, runs
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
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the process (driver.Clock)


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


def finish(trainer: Any, result: RunResult, meta: dict[str, Any], as_checkpointed: bool = False) -> None:
    """The adapter (or full model) and tokenizer with lancy.json (`meta`), written to model.part and renamed once
    whole; then metrics.json and manifest.json, each replaced whole; then run.json `complete`, last, so `complete`
    means every one of them is there. A kill anywhere before leaves the run `interrupted` and resumable.
    `as_checkpointed`: the method leaves the model as training did (see `linked_from_checkpoint`)."""
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
        if not (as_checkpointed and linked_from_checkpoint(trainer, result, tmp)):
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


TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "trainer_state.json")


def linked_from_checkpoint(trainer: Any, result: RunResult, folder: Path) -> bool:
    """The model files of the run's last checkpoint, hard-linked into `folder` instead of writing the model a second
    time (for full fine-tuning, the weights' whole size again: seconds, and the disk space). A checkpoint is the
    Trainer's save_model output plus its training state, so the files are the same bytes; this is used only where
    that holds: one plain process, a whole checkpoint at the run's last step, no best model loaded back, no
    mixture-of-experts router switch turned off for saving. False (nothing made) otherwise, or when the file system
    refuses links."""
    import os

    from lancy_trl.scale.engines import one_plain_process

    done = runs.complete_checkpoints(result.run_dir)
    router = getattr(trainer.model.config.get_text_config(), "output_router_logits", None) is not None
    if (not done or done[-1].name != f"checkpoint-{result.steps}" or not one_plain_process(trainer)
            or trainer.args.load_best_model_at_end or router):
        return False
    model_files = [p for p in sorted(done[-1].iterdir())
                   if p.name not in TRAINING_STATE and not p.name.startswith("rng_state")]
    if not all(p.is_file() for p in model_files):  # a folder (several adapters): not a layout this was checked on
        return False
    try:
        folder.mkdir()
        for path in model_files:
            os.link(path, folder / path.name)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return False
    return True


def peak_memory() -> dict[str, float]:
    """This process's peak: GPU memory allocated on CUDA, resident memory otherwise (GB), beside the estimate."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        return {"peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2)}
    return {"peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)}
