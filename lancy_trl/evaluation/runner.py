"""`lancy eval`: load the model (or run), rebuild the prompts with its training template, score, report, save.

    reports = run_eval(resolve(EvalArgs, flags={"model": "runs/<run>", "compare_base": True}), console)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lancy_trl import runs
from lancy_trl.config import EvalArgs
from lancy_trl.errors import LancyError

DEFAULT_NEW_TOKENS = {"multiple_choice": 16, "math": 320, "qa": 160}


@dataclass
class EvalSet:
    """The rows an evaluation scores, and what they are: the task, its labels, the split and whether they were held
    out from the model's training (None: not known, the model is not a lancy run)."""

    name: str
    kind: str
    labels: list[str]
    rows: list[dict]
    split: str
    rows_from: str
    held_out: bool | None
    notes: list[str] = field(default_factory=list)
    parts: list[EvalSet] = field(default_factory=list)  # a mixture's sources, each scored with its own task

    def record(self) -> dict[str, Any]:
        return {"dataset": self.name, "task": self.kind, "split": self.split, "rows": len(self.rows),
                "rows_from": self.rows_from, "held_out": self.held_out}


def eval_rows(args: EvalArgs, run_info: dict[str, Any], run_dir: Path | None) -> EvalSet:
    """A run's own held-out rows (as it built them: template, system prompt, labels), or a dataset's split."""
    if run_dir is not None and not args.dataset and not args.data_files and run_info.get("held_out") is not None:
        return _run_rows(args, run_info, run_dir)
    return _dataset_rows(args, run_info, run_dir)


def _sample(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    """At most `limit` rows, a seeded random sample in file order (a label-sorted file gives one class otherwise)."""
    import random

    if not limit or len(rows) <= limit:
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), limit))]


def _run_rows(args: EvalArgs, run_info: dict[str, Any], run_dir: Path) -> EvalSet:
    held = run_info["held_out"]
    kind, labels, name = run_info.get("task", "classification"), list(run_info.get("labels", [])), run_info["dataset"]
    split = args.split or ("test" if "test" in held else "validation")
    if kind == "mixture" and split == "train":
        raise LancyError(f"{run_dir} trained on a mixture: score its training rows source by source with --dataset "
                         "NAME --data-files FILE --split train")
    if split == "train":
        rows = training_rows(run_info, run_dir)
        note = f"--split train: scoring rows {run_dir.name} trained on, not a held-out score"
        return EvalSet(name, kind, labels, _sample(rows, args.limit, args.seed), "train", "the run's training rows",
                       False, [note])
    if split not in held:
        have = ", ".join(held) or "none"
        raise LancyError(f"{run_dir} held out no {split!r} rows (it has: {have}); pass --split with one of those, "
                         "--split train to score its training rows, or --dataset/--data-files for other data")
    path = run_dir / held[split]["file"]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if args.system_prompt:  # asked for: the run's system message replaced, as the flag says
        rows = [{**r, "prompt": _with_system(r["prompt"], args.system_prompt)} if "prompt" in r else r for r in rows]
    es = EvalSet(name, kind, labels, _sample(rows, args.limit, args.seed), split, held[split]["from"], True)
    if kind == "mixture":  # each source with its own task and labels, sampled on its own
        for source, stats in run_info.get("data", {}).get("sources", {}).items():
            mine = [r for r in rows if r.get("source") == source]
            if mine:
                es.parts.append(EvalSet(source, stats["kind"], stats["labels"], _sample(mine, args.limit, args.seed),
                                        split, stats.get("eval_from", split), True))
        es.rows = [r for part in es.parts for r in part.rows]
    return es


def _with_system(messages: list[dict], system: str) -> list[dict]:
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": system}, *rest]


def training_rows(run_info: dict[str, Any], run_dir: Path) -> list[dict]:
    """The rows a run of any method trained on, rebuilt from its saved config by its task's reader (text for a
    pretraining run, chat rows otherwise); a changed source is said, not hidden."""
    from types import SimpleNamespace

    config = SimpleNamespace(**run_info.get("config", {}))  # every field the run resolved, whatever its method
    if run_info.get("data", {}).get("streamed"):
        raise LancyError(f"{run_dir} streamed its corpus, which is not kept: score a slice of it with --dataset NAME "
                         "--split train --limit N")
    if run_info.get("task") == "pretraining":
        from lancy_trl.data.text import text_data

        data = text_data(config)
    else:
        from lancy_trl.data.build import build_data

        data = build_data(config, pairs=run_info.get("task") == "preference")
        if run_info.get("task") == "preference" and "chosen" not in data.train.column_names:
            from lancy_trl.data.preferences import from_labels  # pairs a dpo run made from a classification task

            data.train = from_labels(data.train, tuple(run_info.get("labels", ())), config.seed)
    if data.stats.get("train_fingerprint") != run_info.get("data", {}).get("train_fingerprint"):
        raise LancyError(f"the training data of {run_dir} changed since it ran (fingerprint differs); its training rows "
                         "cannot be rebuilt")
    return list(data.train)


def _dataset_rows(args: EvalArgs, run_info: dict[str, Any], run_dir: Path | None) -> EvalSet:
    from lancy_trl.data.build import convert, label_words, task_kind
    from lancy_trl.data.sources import load_source

    config = run_info.get("config", {})
    if args.dataset:
        name, dataset_config, files = args.dataset, args.dataset_config, args.data_files
    else:  # the run's dataset (a run saved before held-out rows were recorded), else the demo
        name = (config.get("dataset") or ["finsent"])[0]
        dataset_config = args.dataset_config or (config.get("dataset_config") or [None])[0]
        files = args.data_files or config.get("data_files", [])
    source = load_source(name, dataset_config, files, args.limit)
    spec = source.spec
    if spec is not None and spec.kind == "code":
        raise LancyError(f"{spec.name}: code is judged by running its tests, which lancy eval does not do; "
                         "use the benchmark's own harness")
    wanted = [args.split] if args.split else ["test", "validation", "train"]
    splits = list(dict.fromkeys(s for w in wanted if (s := source.split(w))))
    if not splits:
        raise LancyError(f"{name} has no split {wanted[0]!r} (found {', '.join(source.raw)}); pass --split")
    system = args.system_prompt or config.get("system_prompt")
    rows: Any = None
    for split in splits:  # the first split with answers: FinanceMath's test split has none
        rows, _ = convert(source.raw[split], spec, system, f"{source.name} ({split})", split == splits[-1], source.where(split))
        if rows is not None:
            break
    kind = task_kind(spec, rows)
    if kind == "multiple_choice":
        labels = list(dict.fromkeys(sorted(c for cs in rows["choices"] for c in cs)))
    else:
        labels = list(label_words(spec, rows))
    canonical = next((w for w in ("test", "validation", "train") if source.split(w) == split), split)
    notes = []
    if canonical == "train" and not args.split:
        notes.append(f"{source.name} has no test or validation split: scoring its train split, which a model "
                     "fine-tuned on it has seen")
    held = None if run_dir is None else (False if canonical == "train" and name in config.get("dataset", []) else None)
    return EvalSet(spec.name if spec else source.name, kind, labels, _sample(list(rows), args.limit, args.seed), split,
                   f"{split} split of {name}", held, notes)


def methods_for(kind: str, method: str, labels: Any = ()) -> list[str]:
    """What a task is scored by: preference pairs by which answer is likelier (and, when their answers are label
    words, as classification too); labels by score and generation; text by perplexity; free text by generation."""
    if kind == "preference":
        return ["preference"] + (methods_for("classification", method) if labels else [])
    if kind in ("classification", "multiple_choice"):
        return ["score", "generate"] if method == "both" else [method]
    if kind == "pretraining":
        return ["perplexity"]
    if method == "score":
        raise LancyError(f"{kind} answers are free text: they are evaluated by generating (--method generate)")
    return ["generate"]


def evaluate_model(source: Any, args: EvalArgs, sets: list[EvalSet], console: Any,
                   thinking: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """{set name: {method: report}}: the model is loaded once and scores each set (a mixture's sources) in turn."""
    from rich.progress import Progress

    from lancy_trl.data.template import chat_kwargs as template_kwargs
    from lancy_trl.data.template import fold_system, refuses_system
    from lancy_trl.models import load_model, pick_device

    loaded = load_model(source, args, device=pick_device(args.device), for_training=False)
    chat_kwargs = template_kwargs(loaded.tokenizer, thinking)
    fold = refuses_system(loaded.tokenizer, chat_kwargs)  # Gemma: the system prompt goes into the first user turn
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for es in sets:
        rows = [{**r, "prompt": fold_system(r["prompt"])} if fold and "prompt" in r else r for r in es.rows]
        out[es.name] = {}
        for group in _method_groups(methods_for(es.kind, args.method, es.labels)):
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(f"{' + '.join(group)} {es.name} {source.name}", total=len(rows))
                advance = lambda n, t=task: progress.advance(t, n)  # noqa: E731
                start = time.perf_counter()
                if len(group) == 2:  # score and generate from one prompt pass: the pair is timed together
                    reports = _evaluate_both(loaded, args, es.kind, rows, es.labels, advance, chat_kwargs)
                else:
                    reports = {group[0]: _evaluate(loaded, args, es.kind, rows, es.labels, group[0], advance, chat_kwargs)}
                seconds = time.perf_counter() - start
            for method, report in reports.items():
                report.update(task=es.kind, method=method, examples_per_second=len(rows) / seconds,
                              model=source.path, adapter=source.adapter, **({"timed_with": group} if len(group) > 1 else {}))
                out[es.name][method] = report
    return out


def _method_groups(methods: list[str]) -> list[list[str]]:
    """The methods in the order they run, score and generate as one pair where both are asked for."""
    pair = ["score", "generate"]
    if not set(pair) <= set(methods):
        return [[m] for m in methods]
    return [[m] for m in methods if m not in pair] + [pair]


def _evaluate_both(loaded: Any, args: EvalArgs, kind: str, rows: list[dict], labels: list[str], progress: Any,
                   chat_kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from lancy_trl.evaluation.classify import classify_both

    new_tokens = args.max_new_tokens or DEFAULT_NEW_TOKENS.get(kind)
    both = classify_both(loaded.model, loaded.tokenizer, [r["prompt"] for r in rows], labels, args.batch_size,
                         progress=progress, chat_kwargs=chat_kwargs, max_new=new_tokens)
    return {method: _label_report(kind, rows, labels, method, results) for method, results in both.items()}


def _evaluate(loaded: Any, args: EvalArgs, kind: str, rows: list[dict], labels: list[str], method: str,
              progress: Any, chat_kwargs: dict[str, Any]) -> dict[str, Any]:
    from lancy_trl.evaluation import tasks
    from lancy_trl.evaluation.classify import classify, generate_texts

    model, tok = loaded.model, loaded.tokenizer
    if method == "preference":
        from lancy_trl.evaluation.preference import preference_report

        return preference_report(model, tok, rows, args.batch_size, chat_kwargs, progress)
    if kind == "preference":  # the pairs' prompts and right answers, scored as the classification they came from
        kind = "classification"
    if kind == "pretraining":
        report = tasks.perplexity(model, tok, [r["text"] for r in rows], batch_size=args.batch_size)
        progress(len(rows))
        return {**report, "predictions": []}
    prompts, targets = [r["prompt"] for r in rows], [r["target"] for r in rows]
    if kind in ("math", "qa"):
        max_new = args.max_new_tokens or DEFAULT_NEW_TOKENS[kind]
        outputs = generate_texts(model, tok, prompts, max_new, args.batch_size, progress, chat_kwargs)
        if kind == "math":
            correct = [tasks.numbers_match(o, t) for o, t in zip(outputs, targets)]
            report = {"n": len(rows), "accuracy": sum(correct) / len(rows),
                      "invalid_rate": sum(tasks.final_number(o) is None for o in outputs) / len(rows)}
            preds = [{"output": o, "correct": c} for o, c in zip(outputs, correct)]
        else:
            em = [tasks.exact_match(o, t) for o, t in zip(outputs, targets)]
            f1 = [tasks.token_f1(o, t) for o, t in zip(outputs, targets)]
            report = {"n": len(rows), "exact_match": sum(em) / len(rows), "f1": sum(f1) / len(rows)}
            preds = [{"output": o, "exact_match": e, "f1": f} for o, e, f in zip(outputs, em, f1)]
        return {**report, "predictions": [{"prompt": _user(r), "target": t, **p} for r, t, p in zip(rows, targets, preds)]}
    new_tokens = args.max_new_tokens or DEFAULT_NEW_TOKENS.get(kind)
    results = classify(model, tok, prompts, labels, method, args.batch_size, progress=progress,
                       chat_kwargs=chat_kwargs, max_new=new_tokens)
    return _label_report(kind, rows, labels, method, results)


def _label_report(kind: str, rows: list[dict], labels: list[str], method: str, results: list[dict]) -> dict[str, Any]:
    """A classification report from one method's answers (rows with their own options choose among those only)."""
    from lancy_trl.evaluation import tasks
    from lancy_trl.evaluation.metrics import classification_report

    if kind == "preference":
        kind = "classification"
    targets = [r["target"] for r in rows]
    for row, r in zip(rows, results):  # rows with their own options (letters, AdaptLLM) choose among those only
        allowed = row.get("choices") or labels
        if method == "score" and len(allowed) < len(labels):
            z = sum(r["probs"][c] for c in allowed)
            r["probs"] = {c: r["probs"][c] / z for c in allowed}
            r["prediction"] = max(r["probs"], key=r["probs"].get)
        elif method == "generate" and kind == "multiple_choice":
            r["prediction"] = tasks.parse_choice(r["output"], "".join(allowed))
        elif method == "generate" and r["prediction"] not in allowed:
            r["prediction"] = None
    predictions: list[str | None] = [r["prediction"] for r in results]
    confidences = [max(r["probs"].values()) for r in results] if method == "score" else None
    report = classification_report(targets, predictions, labels, confidences)
    if method != "generate":
        report.pop("invalid_rate")
    report["predictions"] = [{"prompt": _user(row), "target": t, **r} for row, t, r in zip(rows, targets, results)]
    return report


def _user(row: dict[str, Any]) -> str:
    """The prompt as the user wrote it (the system message is the template's, the same for every row)."""
    return next((m["content"] for m in reversed(row["prompt"]) if m["role"] == "user"), "")


def run_eval(args: EvalArgs, console: Any) -> dict[str, Any]:
    from lancy_trl import logs
    from lancy_trl.models import ModelSource, resolve_model, short_name
    from lancy_trl.privacy import network

    network.apply(args)
    source = resolve_model(args.model, log=console.print)
    from lancy_trl.models import check_safetensors

    check_safetensors(source)  # before the output folder is made: a refused model leaves nothing behind
    from lancy_trl.models import warn_remote_code

    warn_remote_code(args, source, console)
    run_dir = Path(args.model) if source.origin == "run" else None
    run_info = runs.read(run_dir) if run_dir else {}
    if args.canaries:
        from lancy_trl.evaluation import canaries

        return canaries.evaluate(args, source, run_dir, run_info, console)
    es = eval_rows(args, run_info, run_dir)
    sets = es.parts or [es]
    for part in sets:
        methods_for(part.kind, args.method, part.labels)  # a method the task cannot take stops here, before any model loads
    if args.compare_base and run_info.get("base_model_path", source.path) == source.path and source.adapter is None:
        raise LancyError("--compare-base needs a fine-tuned model: pass a run directory or an adapter to --model")
    for note in es.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    thinking = args.enable_thinking
    if thinking is None:
        thinking = run_info.get("config", {}).get("enable_thinking", False)
    out = Path(args.output_dir) if args.output_dir else (run_dir / "eval" if run_dir else Path("eval_runs") / source.name)
    out.mkdir(parents=True, exist_ok=True)
    with logs.to_file(out / "eval.log"):  # library warnings off the terminal
        results = {"model": evaluate_model(source, args, sets, console, bool(thinking))}
        if args.compare_base:
            base_path = run_info.get("base_model_path", source.path)
            results["base"] = evaluate_model(ModelSource(short_name(base_path), base_path, "base"), args, sets, console,
                                             bool(thinking))
    metrics = {name: {tag: {m: {k: v for k, v in r.items() if k != "predictions"} for m, r in results[tag][name].items()}
                      for tag in results} for name in results["model"]}
    record = {**es.record(), "notes": es.notes}
    if es.parts:
        record.update(sources={p.name: {**p.record(), **metrics[p.name]} for p in es.parts}, **overall(metrics))
    else:
        record.update(metrics[es.name])
    save(out, results, record)
    return {**record, "output_dir": str(out)}


def overall(metrics: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """A mixture's overall score per model and method: each source's accuracy (F1 for free-text answers) weighted by
    its rows, over the sources that have the method."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for per_tag in metrics.values():
        for tag, per_method in per_tag.items():
            for method, report in per_method.items():
                key = next((k for k in ("accuracy", "f1") if k in report), None)
                if key is None:
                    continue
                acc = out.setdefault(tag, {}).setdefault(method, {"n": 0, "accuracy": 0.0})
                acc["accuracy"] = (acc["accuracy"] * acc["n"] + report[key] * report["n"]) / (acc["n"] + report["n"])
                acc["n"] += report["n"]
    return out


def save(out: Path, results: dict[str, Any], record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    several = len(results["model"]) > 1
    with (out / "predictions.jsonl").open("w") as fh:
        for tag, per_set in results.items():
            for name, rs in per_set.items():
                for method, report in rs.items():
                    for p in report["predictions"]:
                        fh.write(json.dumps({"model": tag, **({"source": name} if several else {}), "method": method, **p}) + "\n")
    panels = {f"{tag}{f' {name}' if several else ''}": rs for tag, per_set in results.items() for name, rs in per_set.items()}
    if any("confusion" in r for rs in panels.values() for r in rs.values()):
        _confusion_png(out / "confusion.png", panels)


def _confusion_png(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(tag, m, r["confusion"]) for tag, rs in results.items() for m, r in rs.items() if "confusion" in r]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (tag, method, conf) in zip(axes[0], panels):
        ax.imshow(conf["matrix"], cmap="Blues")
        ticks = range(len(conf["labels"]))
        ax.set_xticks(ticks, conf["labels"], rotation=45, ha="right")
        ax.set_yticks(ticks, conf["labels"])
        for i, row in enumerate(conf["matrix"]):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center")
        ax.set_title(f"{tag}: {method}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
