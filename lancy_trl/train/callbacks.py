"""Trainer callbacks: rich progress, a plain-text log, run facts in TensorBoard, and Ctrl-C that saves."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class RichProgress(TrainerCallback):
    """One progress bar for the optimizer steps, with the latest loss."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.progress: Any = None
        self.task: Any = None
        self.last: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.description}"), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.log_history and "eval_score_accuracy" in state.log_history[-1]:
            self.last["score_acc"] = state.log_history[-1]["eval_score_accuracy"]
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "reward", "eval_loss", "eval_accuracy"):
            if logs and key in logs:
                self.last[key] = logs[key]
        if self.progress is not None:
            self.progress.update(self.task, description="  ".join(f"{k} {v:.4f}" for k, v in self.last.items()))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class LogFile(TrainerCallback):
    """Every log record as a JSON line in logs/training.log (the console shows only the progress bar)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": state.global_step, **(logs or {})}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


class RunFacts(TrainerCallback):
    """Parameters, device, dtype, attention and library versions into TensorBoard at the start."""

    def __init__(self, writer: Any, facts: dict[str, Any], scalars: dict[str, float]) -> None:
        self.writer, self.facts, self.scalars = writer, facts, scalars

    def on_train_begin(self, args, state, control, **kwargs):
        table = "\n".join(f"| {k} | {v} |" for k, v in self.facts.items())
        self.writer.add_text("run/facts", "| fact | value |\n|---|---|\n" + table, state.global_step)
        for key, value in self.scalars.items():
            self.writer.add_scalar(f"run/{key}", value, state.global_step)
        self.writer.flush()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:  # the token budget: real (non-padding) tokens seen so far
            self.writer.add_scalar("train/tokens_seen", logs["num_tokens"], state.global_step)


class SaveEvery(TrainerCallback):
    """A checkpoint at least every `minutes` of training (besides --save-steps), so a killed run loses minutes, not
    the run. Each checkpoint's step is also logged, so the losses it keeps cover every step up to it (a resumed run's
    train loss then covers the whole run)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.last = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        from lancy_trl.scale.distributed import agree

        if agree(self.seconds > 0 and time.monotonic() - self.last >= self.seconds):  # every rank saves, or none
            control.should_save = True
        if control.should_save:
            control.should_log = True
            self.last = time.monotonic()
        return control


def whole_run_loss(history: list[dict[str, Any]], start: int, recent_loss: float, end: int) -> float:
    """The mean training loss over every step of a run resumed at step `start`: the logged losses up to `start`
    (each the mean over the steps since the log before it) and the mean this process trained, over start..end."""
    total, steps, previous = 0.0, 0, 0
    for record in history:
        step = record.get("step", 0)
        if "loss" in record and previous < step <= start:
            total += record["loss"] * (step - previous)
            steps += step - previous
            previous = step
    return (total + recent_loss * (end - start)) / max(steps + end - start, 1)


class GracefulInterrupt(TrainerCallback):
    """First Ctrl-C: finish the step, save a resumable checkpoint, stop. Second Ctrl-C (this process's own second): abort.

    The handler writes its line straight to the console's file descriptor: a signal handler runs in the main thread
    wherever it was, possibly inside the console's own write holding its lock, while the progress display's refresh
    thread holds the display's lock and waits for the console's. Printing through the console there can deadlock
    (tests/unit/test_interrupt.py builds that lock order)."""

    MESSAGE = b"\nStopping after this step and saving a checkpoint (Ctrl-C again to abort)...\n"

    def __init__(self, console: Any) -> None:
        self.console = console
        self.requested = False
        self.received = 0  # Ctrl-Cs this process got; under the launcher another rank's can stop it first
        self._previous: Any = None
        self._fd: int | None = None

    def __enter__(self) -> GracefulInterrupt:
        self._fd = None if self.console.quiet else _descriptor(self.console.file)
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        # Stopped by another rank's Ctrl-C (the launcher passes it on to one worker after the other): this process's
        # copy may still be on its way, and must not land on the default handler as an abort.
        signal.signal(signal.SIGINT, self._late if self.requested and not self.received else self._previous)

    def _late(self, signum, frame):
        signal.signal(signal.SIGINT, self._previous)  # the copy on its way, taken; a next Ctrl-C aborts as usual

    def _handle(self, signum, frame):
        self.received += 1
        if self.received > 1:  # this process's second: abort (the first may come after the ranks agreed to stop)
            raise KeyboardInterrupt
        self.requested = True
        if self._fd is not None:
            import os

            try:
                os.write(self._fd, self.MESSAGE)  # no lock taken: see the class
            except OSError:  # a closed pipe: the stop still happens, unannounced
                pass

    def on_step_end(self, args, state, control, **kwargs):
        from lancy_trl.scale.distributed import agree

        # Ctrl-C seen by any process stops them all at this step. The handler only ever sets `requested`: a Ctrl-C
        # that lands inside the collective is kept for the next step (assigning agree's answer would lose it).
        if agree(self.requested):
            self.requested = True
            # said again outside the handler, through the console: a progress display redraws over the raw line
            self.console.print(f"[yellow]Stopping at step {state.global_step}: saving a checkpoint...[/]")
            control.should_save = True
            control.should_log = True  # the last steps' loss goes into the checkpoint's history
            control.should_training_stop = True
        return control


def _descriptor(file: Any) -> int | None:
    """The OS file descriptor under a Python file, or None (a test's in-memory stream)."""
    try:
        return file.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class HeldOutLabels(TrainerCallback):
    """What the callbacks that classify held-out rows while a run trains share: the rows, the model's predictions
    by one of `lancy eval`'s methods, and the figures recorded in TensorBoard and the trainer state."""

    def __init__(self, writer: Any, tokenizer: Any, rows: Any, labels: list[str], batch_size: int,
                 chat_kwargs: dict) -> None:
        self.writer, self.tokenizer, self.labels = writer, tokenizer, labels
        self.batch_size, self.chat_kwargs = batch_size, chat_kwargs
        self.prompts = [r["prompt"] for r in rows]
        self.targets = [r["target"] for r in rows]

    def predict(self, model: Any, method: str) -> list[str | None]:
        from lancy_trl.evaluation.classify import classify

        was_training = model.training
        results = classify(model, self.tokenizer, self.prompts, self.labels, method, self.batch_size,
                           chat_kwargs=self.chat_kwargs)
        if was_training:
            model.train()
        return [r["prediction"] for r in results]

    def record(self, state: Any, figures: dict[str, float], count_key: str) -> None:
        for key, value in figures.items():
            self.writer.add_scalar(key.replace("eval_", "eval/", 1), value, state.global_step)
        self.writer.flush()
        state.log_history.append({**figures, count_key: len(self.targets), "step": state.global_step})


class ScoreEval(HeldOutLabels):
    """At each evaluation, classification runs also score the label words on the eval examples: accuracy and
    macro-F1 of the `score` method, next to the eval loss in TensorBoard, the log file and the trainer state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last: dict[str, float] = {}

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        import logging

        from lancy_trl.evaluation.metrics import classification_report

        report = classification_report(self.targets, self.predict(model, "score"), self.labels)
        self.last = {"eval_score_accuracy": report["accuracy"], "eval_score_macro_f1": report["macro_f1"]}
        self.record(state, self.last, "eval_score_n")
        logging.getLogger("lancy").warning(
            "step %d: score accuracy %.4f, macro-F1 %.4f on %d eval examples", state.global_step,
            report["accuracy"], report["macro_f1"], len(self.targets),
        )


class Perplexity(TrainerCallback):
    """exp(eval loss) beside the eval loss: TensorBoard (eval/perplexity), the log file and the trainer state."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        import math

        if metrics and "eval_loss" in metrics:
            perplexity = math.exp(min(metrics["eval_loss"], 50.0))
            self.writer.add_scalar("eval/perplexity", perplexity, state.global_step)
            state.log_history.append({"eval_perplexity": perplexity, "step": state.global_step})


class GreedyEval(HeldOutLabels):
    """GRPO on a classification task: every `every` steps (and before the first step), greedy answers to the
    held-out prompts, as `lancy eval --method generate` reads them: accuracy, the share of answers that name no
    label, and the share of each label among the answers, so a policy collapsing onto one label shows while it
    trains; a warning when one label takes more than COLLAPSE of the answers."""

    COLLAPSE = 0.6

    def __init__(self, *args: Any, every: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every = every

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.evaluate(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.evaluate(state, model)

    def evaluate(self, state: Any, model: Any) -> None:
        import logging

        figures = greedy_figures(self.targets, self.predict(model, "generate"), self.labels)
        self.record(state, figures, "eval_greedy_n")
        log = logging.getLogger("lancy")
        shares = ", ".join(f"{label} {figures[f'eval_greedy_share_{label}']:.0%}" for label in self.labels)
        log.warning("step %d: greedy accuracy %.4f on %d held-out prompts; answers %s, no label %.0f%%",
                    state.global_step, figures["eval_greedy_accuracy"], len(self.targets), shares,
                    100 * figures["eval_greedy_no_label"])
        top = max(self.labels, key=lambda label: figures[f"eval_greedy_share_{label}"])
        if state.global_step and figures[f"eval_greedy_share_{top}"] > self.COLLAPSE:
            log.warning("step %d: %.0f%% of greedy answers are %r: the policy is collapsing onto one label",
                        state.global_step, 100 * figures[f"eval_greedy_share_{top}"], top)


class LittleSignal(TrainerCallback):
    """GRPO, any task: every `every` steps, a warning when in more than SHARE of the groups every completion scored
    alike (TRL's frac_reward_zero_std, averaged over those steps): such groups teach the policy nothing."""

    SHARE = 0.8

    def __init__(self, every: int) -> None:
        self.every = every
        self.recent: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "frac_reward_zero_std" not in logs:
            return
        self.recent = [*self.recent, logs["frac_reward_zero_std"]][-self.every:]
        if state.global_step % self.every == 0 and sum(self.recent) / len(self.recent) > self.SHARE:
            import logging

            logging.getLogger("lancy").warning(
                "step %d: in %.0f%% of groups every completion scored alike over the last %d steps: little learning "
                "signal left (more --num-generations or a higher --temperature keeps it)",
                state.global_step, 100 * sum(self.recent) / len(self.recent), len(self.recent))


def greedy_figures(targets: list[str], predictions: list[str | None], labels: list[str]) -> dict[str, float]:
    """Accuracy, the share of answers naming no label, and each label's share of the answers."""
    n = max(len(targets), 1)
    figures = {"eval_greedy_accuracy": sum(p == t for p, t in zip(predictions, targets)) / n,
               "eval_greedy_no_label": sum(p is None for p in predictions) / n}
    figures.update({f"eval_greedy_share_{label}": sum(p == label for p in predictions) / n for label in labels})
    return figures
