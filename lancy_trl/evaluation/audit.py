"""`lancy audit RUN`: the membership-inference attacks of lancy_trl/evaluation/membership.py on a run's training rows
against rows it never saw, with verbatim extraction and canary exposure; `--base` is the control.

    report = run_audit(Path("runs/<run>"), AuditOptions(), console)     # also saved as RUN/audit.json
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lancy_trl import runs
from lancy_trl.errors import LancyError


@dataclass
class AuditOptions:
    base: bool = False  # the base model in the run's place: the control
    data_files: str | None = None  # non-members from this file instead of the run's held-out rows
    limit: int | None = None  # at most this many members (and as many non-members)
    k: float = 0.2  # the share of lowest-scored tokens Min-K% and Min-K%++ average
    bootstrap: int = 1000
    batch_size: int = 8  # rows per scoring pass (every position's whole-vocabulary distribution); greedy decoding
    # for verbatim extraction runs 4x as many rows at a time (it keeps no vocabulary-wide tensor: 2.4x faster at 32
    # than at 8 for SmolLM2-135M on CPU)
    seed: int = 0
    device: str = "auto"


def audit_rows(run: Path, info: dict[str, Any], opts: AuditOptions) -> tuple[list[dict], list[dict], str, list[str]]:
    """(members, non-members, where the non-members come from, notes): equal numbers, nothing on both sides."""
    from lancy_trl.evaluation.membership import balanced
    from lancy_trl.evaluation.runner import training_rows

    notes: list[str] = []
    if opts.data_files:
        others, origin = _file_rows(run, info, opts.data_files), opts.data_files
    else:
        held = info.get("held_out") or {}
        if not held:
            raise LancyError(f"{run} held out no rows to compare its training rows with: pass --data-files FILE with "
                             "rows it never saw (the same format as its training data)")
        others, origin, note = _held_out(run, held)
        notes += [note] if note else []
    members = training_rows(info, run)
    seen = {_key(r) for r in members}
    fresh = [r for r in others if _key(r) not in seen]
    if len(fresh) < len(others):
        notes.append(f"{len(others) - len(fresh)} non-member rows dropped: the same as a training row")
    if len(fresh) < 2 or len(members) < 2:
        raise LancyError(f"an audit needs at least 2 training rows and 2 unseen rows ({len(members)} and {len(fresh)} "
                         "here): pass --data-files with more unseen rows")
    members, fresh = balanced(members, fresh, opts.limit, opts.seed)
    return members, fresh, origin, notes


SAME_SOURCE = 20  # held-out rows drawn from the training split that are enough to audit on alone


def _held_out(run: Path, held: dict[str, Any]) -> tuple[list[dict], str, str | None]:
    """The run's held-out rows: those drawn from its training split alone when there are enough (rows of another
    split can differ from the training rows, and a shift reads as an AUC away from 0.5 without any leak), else all
    of them, said."""
    def rows(split: str) -> list[dict]:
        return [json.loads(line) for line in (run / held[split]["file"]).read_text().splitlines() if line.strip()]

    same = [s for s, v in held.items() if "held out" in str(v.get("from", ""))]
    if same and sum(held[s]["rows"] for s in same) >= SAME_SOURCE:
        other = [s for s in held if s not in same]
        note = (f"non-members from the rows held out of the training split only ({', '.join(same)}); the "
                f"{', '.join(other)} split is left out (another split can differ from the training rows)") if other else None
        return [r for s in same for r in rows(s)], f"the run's held-out rows ({', '.join(same)})", note
    note = None if same == list(held) else ("non-members include rows of another split than the training rows: a "
                                            "difference between splits reads as an AUC away from 0.5; pass "
                                            "--data-files with rows drawn like the training rows to rule it out")
    return [r for s in held for r in rows(s)], "the run's held-out rows (" + ", ".join(held) + ")", note


def _key(row: dict[str, Any]) -> str:
    from lancy_trl.evaluation.membership import answer

    return json.dumps(row["text"] if "text" in row else [row["prompt"], answer(row)], sort_keys=True)


def _file_rows(run: Path, info: dict[str, Any], path: str) -> list[dict]:
    """A file's rows built as the run built its own (its template's system prompt, its task's reader)."""
    from lancy_trl.config import EvalArgs, resolve
    from lancy_trl.evaluation.runner import eval_rows

    if not Path(path).is_file():
        raise LancyError(f"--data-files {path}: no such file")
    args = resolve(EvalArgs, flags={"model": str(run), "dataset": path, "split": "train"})
    return eval_rows(args, info, run).rows


def run_audit(run: Path, opts: AuditOptions, console: Any) -> dict[str, Any]:
    from lancy_trl import logs

    info = runs.read(runs.require(run))
    if info.get("status") == "running":
        who = info.get("owner") or {}
        raise LancyError(f"{run} is still training (pid {who.get('pid', '?')} on {who.get('host', '?')}): audit it "
                         "once it has finished")
    if info.get("status") != "complete":
        raise LancyError(f"{run} is {info.get('status', 'unfinished')}: audit a complete run (resume it with "
                         f"`lancy {info.get('command', 'sft')} --resume {run}`)")
    if not 0 < opts.k <= 1 or opts.bootstrap < 1:
        raise LancyError(f"--k must be in (0, 1] and --bootstrap at least 1 (got {opts.k}, {opts.bootstrap})")
    members, others, origin, notes = audit_rows(run, info, opts)
    with logs.to_file(run / "audit.log"), console.status(f"Scoring {len(members)} training and {len(others)} unseen "
                                                          "rows..."):
        scores, extraction, canaries = _score(run, info, opts, members, others)
    from lancy_trl.evaluation.membership import roc

    attacks = {name: roc(s[:len(members)], s[len(members):], opts.bootstrap, opts.seed) for name, s in scores.items()}
    strongest = max(attacks, key=lambda a: attacks[a]["auc"])  # each scores members higher: the best reads highest
    nll = [-x for x in scores["loss"]]  # each row's mean loss per answer token: the gap is what the attacks read
    answer_loss = {"members": sum(nll[:len(members)]) / len(members), "non_members": sum(nll[len(members):]) / len(others)}
    report = {"run": str(run), "model": "base" if opts.base else "run", "members": len(members),
              "non_members": len(others), "non_members_from": origin,
              "tokens": "text" if "text" in members[0] else "answer", "k": opts.k, "attacks": attacks,
              "answer_loss": answer_loss,
              "best": strongest, "verbatim": extraction,
              "canaries": canaries, "notes": notes, "options": asdict(opts)}
    path = run / ("audit-base.json" if opts.base else "audit.json")
    from lancy_trl.files import write_json

    write_json(path, report)
    best = attacks[strongest]
    summary = {"best": strongest, "auc": best["auc"], "auc_low": best["auc_low"], "auc_high": best["auc_high"],
               "members": len(members), "file": path.name}
    runs.update(run, audit={**(info.get("audit") or {}), report["model"]: summary})  # "run", and "base" for the control
    return {**report, "saved": str(path)}


def _score(run: Path, info: dict[str, Any], opts: AuditOptions, members: list[dict],
           others: list[dict]) -> tuple[dict[str, list[float]], dict[str, float], dict[str, Any] | None]:
    """Every attack's scores (members first), verbatim extraction, and the canaries' exposure when planted."""
    from lancy_trl.evaluation import membership
    from lancy_trl.models import ModelSource, resolve_model, short_name

    rows = members + others
    base_path = info.get("base_model_path") or info["config"]["model"]
    base = ModelSource(short_name(base_path), base_path, "base")
    loaded, chat_kwargs = _load(base if opts.base else resolve_model(str(run)), info, opts)
    target = membership.token_stats(loaded.model, loaded.tokenizer, rows, chat_kwargs, opts.batch_size)
    decode = 4 * opts.batch_size
    extraction = {"members": membership.verbatim(loaded.model, loaded.tokenizer, members, chat_kwargs, decode),
                  "non_members": membership.verbatim(loaded.model, loaded.tokenizer, others, chat_kwargs, decode)}
    canaries = _canaries(run, info, loaded, chat_kwargs, opts.seed)
    if not opts.base:
        del loaded
        loaded, chat_kwargs = _load(base, info, opts)
        reference = membership.token_stats(loaded.model, loaded.tokenizer, rows, chat_kwargs, opts.batch_size)
    else:
        reference = target  # the control's reference is itself: that attack reads exactly 0.5
    return membership.attack_scores(rows, target, reference, opts.k), extraction, canaries


def _load(source: Any, info: dict[str, Any], opts: AuditOptions) -> tuple[Any, dict[str, Any]]:
    from lancy_trl.config import EvalArgs, resolve
    from lancy_trl.data.template import chat_kwargs
    from lancy_trl.models import load_model, pick_device

    args = resolve(EvalArgs, flags={"model": source.path, "device": opts.device})
    loaded = load_model(source, args, device=pick_device(opts.device), for_training=False)
    loaded.model.eval()
    return loaded, chat_kwargs(loaded.tokenizer, bool(info.get("config", {}).get("enable_thinking", False)))


def _canaries(run: Path, info: dict[str, Any], loaded: Any, chat_kwargs: dict[str, Any],
              seed: int) -> dict[str, Any] | None:
    from lancy_trl.evaluation.canaries import exposure
    from lancy_trl.privacy.canaries import FILE

    if not (run / FILE).is_file():
        return None
    results = exposure(loaded.model, loaded.tokenizer, json.loads((run / FILE).read_text()),
                       info.get("chat_template_kwargs") or chat_kwargs, 1000, seed)
    return {"mean_exposure": sum(r["exposure"] for r in results) / len(results),
            "max_exposure": results[0]["max_exposure"], "recited": sum(r["recited"] for r in results),
            "planted": len(results)}
