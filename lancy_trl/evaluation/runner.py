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


def eval_rows(args: EvalArgs, run_info: dict[str, Any]) -> tuple[Any, list[dict], list[str]]:
    """(spec, chat rows with `target`, label words) for the chosen split, built with the run's template."""
    from lancy_trl.data.build import convert, label_words, load_source

    config = run_info.get("config", {})
    if args.dataset:
        name, dataset_config = args.dataset, args.dataset_config
    else:
        name = (config.get("dataset") or ["finsent"])[0]
        dataset_config = args.dataset_config or (config.get("dataset_config") or [None])[0]
    source = load_source(name, dataset_config, args.data_files)
    spec = source.spec
    if spec is None or spec.kind != "classification":
        raise LancyError(f"{name}: `lancy eval` scores classification datasets so far; pass a registry classification "
                         "dataset such as finsent with --data-files")
    wanted = [args.split] if args.split else ["test", "validation", "train"]
    split = next((s for w in wanted if (s := source.split(w))), None)
    if split is None:
        raise LancyError(f"{name} has no split {wanted[0]!r} (found {', '.join(source.raw)}); pass --split")
    system = args.system_prompt or config.get("system_prompt")
    rows, skipped = convert(source.raw[split], spec, system, f"{source.name} ({split})")
    if args.limit:
        rows = rows.select(range(min(args.limit, len(rows))))
    return spec, list(rows), list(label_words(spec, rows))


def evaluate_model(source: Any, args: EvalArgs, rows: list[dict], labels: list[str], methods: list[str],
                   console: Any) -> dict[str, dict[str, Any]]:
    from rich.progress import Progress

    from lancy_trl.evaluation.classify import classify
    from lancy_trl.evaluation.metrics import classification_report
    from lancy_trl.models import load_model, pick_device

    loaded = load_model(source, args, device=pick_device(args.device), for_training=False)
    prompts = [r["prompt"] for r in rows]
    targets = [r["target"] for r in rows]
    reports = {}
    for method in methods:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{method} {source.name}", total=len(prompts))
            start = time.perf_counter()
            results = classify(loaded.model, loaded.tokenizer, prompts, labels, method, args.batch_size,
                               progress=lambda n, t=task: progress.advance(t, n))
            seconds = time.perf_counter() - start
        preds = [r["prediction"] for r in results]
        confidences = [max(r["probs"].values()) for r in results] if method == "score" else None
        report = classification_report(targets, preds, labels, confidences)
        report.update(task="classification", method=method, examples_per_second=len(prompts) / seconds,
                      model=source.path, adapter=source.adapter)
        if method != "generate":
            report.pop("invalid_rate")
        report["predictions"] = [{"target": t, **r} for t, r in zip(targets, results)]
        reports[method] = report
    return reports


def run_eval(args: EvalArgs, console: Any) -> dict[str, Any]:
    from lancy_trl.models import ModelSource, resolve_model, short_name

    source = resolve_model(args.model, log=console.print)
    run_dir = Path(args.model) if source.origin == "run" else None
    run_info = runs.read(run_dir) if run_dir else {}
    spec, rows, labels = eval_rows(args, run_info)
    methods = ["score", "generate"] if args.method == "both" else [args.method]
    results = {"model": evaluate_model(source, args, rows, labels, methods, console)}
    if args.compare_base:
        base_path = run_info.get("base_model_path", source.path)
        if base_path == source.path and source.adapter is None:
            raise LancyError("--compare-base needs a fine-tuned model: pass a run directory or an adapter to --model")
        base = ModelSource(short_name(base_path), base_path, "base")
        results["base"] = evaluate_model(base, args, rows, labels, methods, console)
    out = Path(args.output_dir) if args.output_dir else (run_dir / "eval" if run_dir else Path("eval_runs") / source.name)
    metrics = {tag: {m: {k: v for k, v in r.items() if k != "predictions"} for m, r in rs.items()}
               for tag, rs in results.items()}
    save(out, results, metrics, spec.name)
    return {"dataset": spec.name, "output_dir": str(out), **metrics}


def save(out: Path, results: dict[str, Any], metrics: dict[str, Any], dataset: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"dataset": dataset, **metrics}, indent=2))
    with (out / "predictions.jsonl").open("w") as fh:
        for tag, rs in results.items():
            for method, report in rs.items():
                for p in report["predictions"]:
                    fh.write(json.dumps({"model": tag, "method": method, **p}) + "\n")
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
