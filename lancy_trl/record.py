"""run.json, typed: every field a run records, who writes it, and when. `runs.update` accepts these names only, so
the file has one shape that `lancy runs`, reports and comparisons can rely on; `runs.load` reads it back typed.

    record = runs.load(run_dir)          # RunRecord: record.status, record.final_eval, record.config["learning_rate"]
    runs.update(run_dir, steps=40)       # a name outside RunRecord is a bug, refused at once
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("running", "interrupted", "failed", "complete")


@dataclass
class RunRecord:
    # when the run directory is made (driver.open_run)
    command: str = "sft"  # the training method that made the run: `lancy <command> --resume` continues it
    dataset: str | None = None  # run-name piece of the data: "finsent-sentiment", "imdb+glue-sst2-mix"
    task: str | None = None  # classification, multiple_choice, math, qa, pretraining, preference, mixture
    labels: list[str] = field(default_factory=list)  # label words in id order (classification runs)
    held_out: dict[str, Any] = field(default_factory=dict)  # split -> {file, rows, from}: what `lancy eval` scores
    # each time a process takes the run (new or resumed)
    status: str = "running"  # running / interrupted / failed / complete (a dead owner's `running` reads interrupted)
    owner: dict[str, Any] | None = None  # pid and host of the process training in it
    offline: bool = False
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, every field of the method's
    model_name: str | None = None
    base_model_path: str | None = None
    model_info: dict[str, Any] = field(default_factory=dict)  # device, dtype, parameters, speed paths, memory estimate
    versions: dict[str, str] = field(default_factory=dict)
    processes: int = 1
    global_batch_size: int | None = None
    started: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # fingerprint, sources, mixture, tokens, rows dropped
    chat_template_kwargs: dict[str, Any] | None = None
    template: str | None = None  # the prompt template of a registry dataset
    # a method's own
    dp: dict[str, Any] | None = None  # sft --dp-epsilon: the plan, steps taken, epsilon spent
    rewards: list[str] | None = None  # grpo: reward functions and their weights
    reward_weights: list[float] | None = None
    router_aux_loss_coef: float | None = None  # mixture-of-experts models
    # when the run ends
    steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    train_seconds: float | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)  # startup, data, model, prepare, build, train, save
    peak_memory_gb: float | None = None  # CPU: resident memory
    peak_gpu_memory_gb: float | None = None
    final_eval: dict[str, float] = field(default_factory=dict)  # the latest of each in-training eval figure
    finished: str | None = None
    error: str | None = None  # a failed run's exception, in one line
    audit: dict[str, Any] | None = None  # `lancy audit`: the membership-inference summary
    extra: dict[str, Any] = field(default_factory=dict)  # fields a newer lancy wrote, kept as they are


FIELDS = frozenset(f.name for f in dataclasses.fields(RunRecord)) - {"extra"}


def check(names: Any) -> None:
    unknown = sorted(set(names) - FIELDS)
    if unknown:
        raise ValueError(f"run.json has no field {', '.join(unknown)}: add it to lancy_trl/record.py (RunRecord)")


def from_dict(data: dict[str, Any]) -> RunRecord:
    known = {k: v for k, v in data.items() if k in FIELDS}
    return RunRecord(**known, extra={k: v for k, v in data.items() if k not in FIELDS})
