"""`lancy eval`: load the model (or run), rebuild the prompts with its training template, score, report, save.

    reports = run_eval(resolve(EvalArgs, flags={"model": "runs/<run>", "compare_base": True}), console)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lancy_trl import runs
from lancy_trl.config import EvalArgs
from lancy_trl.errors import LancyError

DEFAULT_NEW_TOKENS = {"multiple_choice": 16, "math": 320, "qa": 160}


def eval_rows(args: EvalArgs, run_info: dict[str, Any]) -> tuple[Any, list[dict], list[str]]:
    """(spec, chat rows with `target` (or `text`), label words) for the chosen split, built with the run's
    template and system prompt."""
    from lancy_trl.data.build import convert, label_words, load_source

    config = run_info.get("config", {})
    if args.dataset:
        name, dataset_config = args.dataset, args.dataset_config
    else:
        name = (config.get("dataset") or ["finsent"])[0]
        dataset_config = args.dataset_config or (config.get("dataset_config") or [None])[0]
    source = load_source(name, dataset_config, args.data_files, args.limit)
    spec = source.spec
    if spec is None:
        raise LancyError(f"{name}: `lancy eval` needs a registry dataset to know the task and its answers; pass "
                         "--dataset NAME --data-files FILE (`lancy datasets list`)")
    if spec.kind == "code":
        raise LancyError(f"{spec.name}: code is judged by running its tests, which lancy eval does not do; "
                         "use the benchmark's own harness")
    wanted = [args.split] if args.split else ["test", "validation", "train"]
    splits = list(dict.fromkeys(s for w in wanted if (s := source.split(w))))
    if not splits:
        raise LancyError(f"{name} has no split {wanted[0]!r} (found {', '.join(source.raw)}); pass --split")
    system = args.system_prompt or config.get("system_prompt")
    rows: Any = None
    for split in splits:  # the first split with answers: FinanceMath's test split has none
        rows, _ = convert(source.raw[split], spec, system, f"{source.name} ({split})", required=split == splits[-1])
        if rows is not None:
            break
    if args.limit:
        rows = rows.select(range(min(args.limit, len(rows))))
    if spec.kind == "multiple_choice":
        labels = list(dict.fromkeys(sorted(c for cs in rows["choices"] for c in cs)))
    else:
        labels = list(label_words(spec, rows))
    return spec, list(rows), labels


def methods_for(kind: str, method: str) -> list[str]:
    if kind in ("classification", "multiple_choice"):
        return ["score", "generate"] if method == "both" else [method]
    if kind == "pretraining":
        return ["perplexity"]
    if method == "score":
        raise LancyError(f"{kind} answers are free text: they are evaluated by generating (--method generate)")
    return ["generate"]


def evaluate_model(source: Any, args: EvalArgs, spec: Any, rows: list[dict], labels: list[str], methods: list[str],
                   console: Any, thinking: bool = False) -> dict[str, dict[str, Any]]:
    from rich.progress import Progress

    from lancy_trl.data.tokens import chat_kwargs as template_kwargs
    from lancy_trl.models import load_model, pick_device

    loaded = load_model(source, args, device=pick_device(args.device), for_training=False)
    chat_kwargs = template_kwargs(loaded.tokenizer, thinking)
    reports = {}
    for method in methods:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{method} {source.name}", total=len(rows))
            advance = lambda n, t=task: progress.advance(t, n)  # noqa: E731
            start = time.perf_counter()
            report = _evaluate(loaded, args, spec.kind, rows, labels, method, advance, chat_kwargs)
            seconds = time.perf_counter() - start
        report.update(task=spec.kind, method=method, examples_per_second=len(rows) / seconds,
                      model=source.path, adapter=source.adapter)
        reports[method] = report
    return reports


def _evaluate(loaded: Any, args: EvalArgs, kind: str, rows: list[dict], labels: list[str], method: str,
              progress: Any, chat_kwargs: dict[str, Any]) -> dict[str, Any]:
    from lancy_trl.evaluation import tasks
    from lancy_trl.evaluation.classify import classify, generate_texts
    from lancy_trl.evaluation.metrics import classification_report

    model, tok = loaded.model, loaded.tokenizer
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
    from lancy_trl.models import ModelSource, resolve_model, short_name

    source = resolve_model(args.model, log=console.print)
    run_dir = Path(args.model) if source.origin == "run" else None
    run_info = runs.read(run_dir) if run_dir else {}
    spec, rows, labels = eval_rows(args, run_info)
    methods = methods_for(spec.kind, args.method)
    thinking = args.enable_thinking
    if thinking is None:
        thinking = run_info.get("config", {}).get("enable_thinking", False)

    def evaluate(src: Any) -> dict[str, dict[str, Any]]:
        return evaluate_model(src, args, spec, rows, labels, methods, console, bool(thinking))

    results = {"model": evaluate(source)}
    if args.compare_base:
        base_path = run_info.get("base_model_path", source.path)
        if base_path == source.path and source.adapter is None:
            raise LancyError("--compare-base needs a fine-tuned model: pass a run directory or an adapter to --model")
        results["base"] = evaluate(ModelSource(short_name(base_path), base_path, "base"))
    out = Path(args.output_dir) if args.output_dir else (run_dir / "eval" if run_dir else Path("eval_runs") / source.name)
    metrics = {tag: {m: {k: v for k, v in r.items() if k != "predictions"} for m, r in rs.items()}
               for tag, rs in results.items()}
    save(out, results, metrics, spec.name)
    return {"dataset": spec.name, "task": spec.kind, "output_dir": str(out), **metrics}


def save(out: Path, results: dict[str, Any], metrics: dict[str, Any], dataset: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"dataset": dataset, **metrics}, indent=2))
    with (out / "predictions.jsonl").open("w") as fh:
        for tag, rs in results.items():
            for method, report in rs.items():
                for p in report["predictions"]:
                    fh.write(json.dumps({"model": tag, "method": method, **p}) + "\n")
    if any("confusion" in r for rs in results.values() for r in rs.values()):
        _confusion_png(out / "confusion.png", results)


def _confusion_png(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(tag, m, r["confusion"]) for tag, rs in results.items() for m, r in rs.items()]
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
