"""Runs side by side, from their own files (run.json, eval/metrics.json, audit.json): a summary per run for
`lancy runs list`, a flat table of figures for `compare` with the best of each marked, the config keys that differ,
and what `clean` may delete.

    rows = [summarize(r) for r in runs.all_runs(Path("runs"))]
    figures = {r: figures_of(r) for r in picked}; best_of(figures)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lancy_trl import runs

HIGHER = ("accuracy", "macro_f1", "mcc", "f1", "exact_match", "margin", "score_accuracy", "score_macro_f1")
LOWER = ("loss", "perplexity", "ece", "invalid_rate", "seconds", "memory_gb")
CHANCE = ("auc",)  # a membership attack's AUC: best nearest 0.5 (chance), whichever side
NOT_SETTINGS = {"run_dir", "run_name", "output_dir", "resume", "config"}  # where a run went, not how it trained
SKIPPED = ("runtime", "per_second", "num_tokens")  # timing noise in the Trainer's eval records


@dataclass
class Summary:
    path: Path
    command: str
    model: str
    dataset: str
    status: str
    steps: int | None
    seconds: float | None
    metric: tuple[str, float] | None
    epsilon: float | None


def last_eval(run: Path) -> dict[str, Any] | None:
    path = run / "eval" / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def headline(evaluation: dict[str, Any] | None) -> tuple[str, float] | None:
    """The figure a run's last `lancy eval` is read by: accuracy (by score, else generate, else pairs), F1 for free
    text, perplexity for text."""
    if not evaluation:
        return None
    model = evaluation.get("model", {})
    for method in ("score", "generate", "preference", "perplexity"):
        for key in ("accuracy", "f1", "perplexity"):
            if key in model.get(method, {}):
                return f"{key} ({method})", float(model[method][key])
    return None


def summarize(run: Path) -> Summary:
    info = runs.read(run)
    dp = info.get("dp") or {}
    return Summary(run, info.get("command", "sft"), info.get("model_name") or "?", info.get("dataset") or "?",
                   info.get("status", "?"), info.get("steps"), info.get("train_seconds"), headline(last_eval(run)),
                   dp.get("epsilon"))


def matches(s: Summary, command: str | None, status: str | None, dataset: str | None, model: str | None) -> bool:
    wanted = ((command, s.command), (status, s.status), (dataset, s.dataset), (model, s.model))
    return all(want is None or want.lower() in have.lower() for want, have in wanted)


def figures_of(run: Path) -> dict[str, float]:
    """Every figure a run recorded, flat: its losses, time and memory, its in-training eval, its last `lancy eval`
    per method (and per source of a mixture), its epsilon spent and its audit's best attack."""
    info = runs.read(run)
    out: dict[str, float] = {}
    for key in ("train_loss", "eval_loss", "train_seconds", "peak_memory_gb"):
        if isinstance(info.get(key), (int, float)):
            out[key] = float(info[key])
    for key, value in (info.get("final_eval") or {}).items():
        if isinstance(value, (int, float)) and not any(s in key for s in SKIPPED) and key != "eval_loss":
            out[f"final {key}"] = float(value)
    evaluation = last_eval(run) or {}
    parts = {"": evaluation, **{f"{name} ": part for name, part in evaluation.get("sources", {}).items()}}
    for prefix, part in parts.items():
        for method, report in (part.get("model") or {}).items():
            for key, value in report.items():
                if key in HIGHER + LOWER and isinstance(value, (int, float)):
                    out[f"eval {prefix}{method} {key}"] = float(value)
    if (info.get("dp") or {}).get("epsilon_spent") is not None:
        out["epsilon spent"] = float(info["dp"]["epsilon_spent"])
    audit = info.get("audit") or {}
    if "run" in audit:
        out[f"audit auc ({audit['run']['best']})"] = float(audit["run"]["auc"])
    return out


def direction(name: str) -> int:
    """+1 when higher is better, -1 when lower is, 2 when nearest 0.5 is, 0 when neither (shown, not ranked)."""
    last = name.split(" (")[0].split()[-1]
    if last in CHANCE:
        return 2
    if last in HIGHER or any(last.endswith(h) for h in HIGHER):
        return 1
    if any(last.endswith(low) for low in LOWER):
        return -1
    return 0


def best_of(figures: dict[Path, dict[str, float]]) -> dict[str, list[Path]]:
    """For each figure two or more runs have: the runs with the best value (ties all; none when all are equal)."""
    out: dict[str, list[Path]] = {}
    names = {n for f in figures.values() for n in f}
    for name in names:
        have = {run: f[name] for run, f in figures.items() if name in f}
        sign = direction(name)
        if len(have) < 2 or sign == 0 or len(set(have.values())) == 1:
            continue
        ranked = {r: -abs(v - 0.5) if sign == 2 else sign * v for r, v in have.items()}
        top = max(ranked.values())
        out[name] = [r for r, v in ranked.items() if v == top]
    return out


def config_diff(runs_: list[Path]) -> dict[str, list[Any]]:
    """The settings whose values differ between the runs (with the command, model and data), each run's value."""
    configs = []
    for run in runs_:
        info = runs.read(run)
        configs.append({"command": info.get("command", "sft"), **info.get("config", {})})
    keys = sorted({k for c in configs for k in c} - NOT_SETTINGS)
    return {k: [c.get(k) for c in configs] for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1}


def cleanable(parent: Path, everything: bool) -> list[tuple[Path, str, int]]:
    """(run, status, bytes) of the runs `lancy runs clean` deletes: failed and interrupted ones, complete ones too
    with `everything`; never one a live process trains in."""
    from lancy_trl.files import size_of

    wanted = ("failed", "interrupted", "complete") if everything else ("failed", "interrupted")
    out = []
    for run in runs.all_runs(parent):
        status = runs.read(run).get("status", "?")
        if status in wanted and not runs.busy(run):
            out.append((run, status, size_of(run)))
    return out
