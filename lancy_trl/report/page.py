"""`lancy report`: one self-contained HTML page for a run, or for runs side by side, from the run's own files.

    html = page([Path("runs/a")])                       # training curves, eval, data, memory, privacy, manifest
    html = page([Path("runs/a"), Path("runs/b")])       # the curves overlaid, the compare table, each run below

Nothing on the page is fetched: the styles are in the page, the plots are inline SVG (lancy_trl/report/plots.py),
there is no script, font, image or link to anywhere else.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from lancy_trl import comparison, runs
from lancy_trl.report import plots

TIMING = ("runtime", "per_second", "num_tokens", "entropy", "epoch")  # not learning figures
STYLE = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}.best{font-weight:bold;color:#1a7f37}
.grid{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}figure{margin:0}code,.hash{font:12px ui-monospace,monospace}
.note{color:#8a5a00}.muted{color:#666}"""


def page(picked: list[Path]) -> str:
    """The whole HTML document for one run or a comparison of several."""
    title = f"lancy run {picked[0].name}" if len(picked) == 1 else f"lancy: {len(picked)} runs compared"
    logged = {run: scalars(run) for run in picked}  # each run's TensorBoard events, read once
    body = [f"<h1>{escape(title)}</h1>"]
    if len(picked) > 1:
        body.append(compared(picked, logged))
    body += [run_section(run, logged[run], heading=len(picked) > 1) for run in picked]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def table(header: list[str] | None, rows: list[list[Any]]) -> str:
    """An HTML table (no header row when None); numbers right-aligned and shortened, a cell given as
    ("text", "class") keeps its class."""
    def cell(v: Any) -> str:
        if isinstance(v, tuple):
            return f'<td class="{v[1]}">{escape(str(v[0]))}</td>'
        if isinstance(v, float):
            return f'<td class="n">{v:.4g}</td>'
        return f'<td class="n">{v}</td>' if isinstance(v, int) else f"<td>{escape('' if v is None else str(v))}</td>"
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>" if header else ""
    return f"<table>{head}{''.join('<tr>' + ''.join(map(cell, r)) + '</tr>' for r in rows)}</table>"


def figure(svg: str) -> str:
    return f"<figure>{svg}</figure>"


def scalars(run: Path) -> dict[str, list[tuple[float, float]]]:
    """Every scalar the run logged to TensorBoard: tag -> [(step, value)]; empty when it logged none."""
    folder = run / "tensorboard"
    if not folder.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def curves(logged: dict[str, list[tuple[float, float]]]) -> str:
    """Training and eval loss over steps, and every other eval figure over steps."""
    loss = {name: logged[tag] for name, tag in (("training", "train/loss"), ("eval", "eval/loss")) if tag in logged}
    if not loss:
        return ('<p class="muted">No training curves: the run wrote no TensorBoard events (it ran with --report-to '
                'without tensorboard, or stopped before its first log).</p>')
    out = [figure(plots.lines(loss, "loss", "step"))]
    evals = {t.removeprefix("eval/"): v for t, v in logged.items()
             if t.startswith("eval/") and t != "eval/loss" and not any(s in t for s in TIMING)}
    if evals:
        out.append(figure(plots.lines(evals, "eval figures during training", "step")))
    rewards = {t.removeprefix("train/"): v for t, v in logged.items() if t.startswith("train/reward")}
    if rewards:
        out.append(figure(plots.lines(rewards, "rewards", "step")))
    return '<div class="grid">' + "".join(out) + "</div>"


def run_section(run: Path, logged: dict[str, list[tuple[float, float]]], heading: bool) -> str:
    info = runs.read(run)
    parts = [f"<h2>{escape(run.name)}</h2>" if heading else "", summary(run, info),
             "<h3>Training</h3>", curves(logged), evaluation(run), data_mix(info), memory(info),
             privacy(run, info), manifest(run), settings(info)]
    return f'<section id="run-{escape(run.name)}">' + "".join(parts) + "</section>"


def summary(run: Path, info: dict[str, Any]) -> str:
    seconds = info.get("train_seconds")
    rows = [["path", str(run)], ["command", info.get("command", "sft")], ["model", info.get("model_name")],
            ["data", info.get("dataset")], ["task", info.get("task")], ["status", info.get("status")],
            ["steps", info.get("steps")], ["training time", f"{seconds:.0f} s" if seconds else None],
            ["started", info.get("started")], ["finished", info.get("finished")],
            ["train loss", info.get("train_loss")], ["eval loss", info.get("eval_loss")]]
    if info.get("error"):
        rows.append(["error", info["error"]])
    return table(None, [r for r in rows if r[1] is not None])


def evaluation(run: Path) -> str:
    """The last `lancy eval`: each method's figures, confusion matrix and per-label metrics; each mixture source."""
    result = comparison.last_eval(run)
    if not result:
        return "<h3>Evaluation</h3><p class=\"muted\">Not evaluated yet: <code>lancy eval --model " \
               f"{escape(str(run))}</code> writes eval/metrics.json.</p>"
    out = [f"<h3>Evaluation: {escape(str(result.get('rows', '?')))} rows of {escape(str(result.get('dataset')))} "
           f"({escape(str(result.get('rows_from', result.get('split'))))})</h3>"]
    out += [method_section(name, report) for name, report in (result.get("model") or {}).items()]
    sources = result.get("sources") or {}
    ranked = comparison.HIGHER + comparison.LOWER
    if sources:
        rows = [[src, m, k, v] for src, part in sources.items() for m, r in (part.get("model") or {}).items()
                for k, v in r.items() if k in ranked and isinstance(v, (int, float))]
        out.append("<h3>Per source</h3>" + table(["source", "method", "figure", "value"], rows))
    out += [f'<p class="note">{escape(n)}</p>' for n in result.get("notes", [])]
    return "".join(out)


def method_section(method: str, report: dict[str, Any]) -> str:
    headline = [[k, v] for k, v in report.items() if isinstance(v, (int, float)) and k != "n"]
    out = [f"<h4>{escape(method)}</h4>", table(["figure", "value"], headline)]
    matrix = report.get("confusion")
    if matrix:
        out.append(figure(plots.confusion(matrix["labels"], matrix["matrix"], f"confusion ({method})")))
    per_class = report.get("per_class") or {}
    if per_class:
        rows = [[label, m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
                for label, m in per_class.items()]
        out.append(table(["label", "precision", "recall", "F1", "support"], rows))
    return '<div class="grid"><div>' + "".join(out[:2]) + "</div>" + "".join(out[2:]) + "</div>"


def data_mix(info: dict[str, Any]) -> str:
    data = info.get("data") or {}
    rows = [[k.replace("_", " "), data[k]] for k in ("train_examples", "eval_examples", "test_examples", "eval_from",
                                                        "max_examples", "train_fingerprint") if k in data]
    tokens = (data.get("train_tokens") or {}).get("tokens") or {}
    if tokens:
        rows.append(["tokens trained on", sum(tokens.values())])
    out = ["<h3>Data</h3>", table(None, rows)]
    mixture = data.get("mixture") or {}
    if mixture:
        examples = {name: float(m.get("examples_after_checks", m.get("examples", 0))) for name, m in mixture.items()}
        out.append(figure(plots.bars(examples, "mixture as realised", "training examples")))
        out.append(table(["source", "rate", "examples", "tokens", "source rows"],
                         [[n, m.get("rate"), m.get("examples_after_checks"), m.get("tokens"), m.get("source_examples")]
                          for n, m in mixture.items()]))
    notes = data.get("notes") or []
    out += [f'<p class="note">{escape(n)}</p>' for n in notes] or ['<p class="muted">No rows dropped.</p>']
    return "".join(out)


def memory(info: dict[str, Any]) -> str:
    model = info.get("model_info") or {}
    given = {"estimated": model.get("memory_estimate_gb"), "measured peak (RSS)": info.get("peak_memory_gb"),
             "measured peak (GPU)": info.get("peak_gpu_memory_gb")}
    values = {k: float(v) for k, v in given.items() if isinstance(v, (int, float))}
    if len(values) < 2:
        return ""
    return "<h3>Memory</h3>" + figure(plots.bars(values, "memory per process", "GB")) + \
        f'<p class="muted">{escape(str(model.get("memory_estimate", "")))}</p>'


def privacy(run: Path, info: dict[str, Any]) -> str:
    out = []
    dp = info.get("dp") or {}
    if dp:
        keys = ("epsilon", "epsilon_spent", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "steps_taken")
        out.append(table(["differential privacy", ""], [[k.replace("_", " "), dp[k]] for k in keys if k in dp]))
    canaries = read_json(run / "eval" / "canaries.json")
    if canaries:
        rows = [[c["secret"], c["repeats"], c["rank"], c["exposure"], c["max_exposure"], "yes" if c["recited"] else "no"]
                for c in canaries.get("canaries", [])]
        out.append(table(["canary", "repeats", "rank", "exposure (bits)", "max", "recited"], rows))
    audit = read_json(run / "audit.json")
    if audit:
        aucs = {name: a["auc"] for name, a in audit["attacks"].items()}
        out.append(figure(plots.bars(aucs, f"membership inference: ROC AUC ({audit['members']} members against "
                                           f"{audit['non_members']} non-members; 0.5 is chance)", "AUC")))
        out.append(table(["attack", "AUC", "95% interval", "TPR at 1% FPR"],
                         [[n, a["auc"], f"{a['auc_low']:.3f}-{a['auc_high']:.3f}", a["tpr_at_1pct_fpr"]]
                          for n, a in audit["attacks"].items()]))
    return "<h3>Privacy</h3>" + "".join(out) if out else ""


def manifest(run: Path) -> str:
    record = read_json(run / "manifest.json")
    if not record:
        return ""
    rows = [[group, name, (digest, "hash")] for group in ("data", "held_out") for name, digest in
            (record.get(group) or {}).items() if isinstance(digest, str)]
    for group in ("base_model", "output"):
        part = record.get(group) or {}
        rows += [[group.replace("_", " "), name, (digest, "hash")] for name, digest in (part.get("files") or {}).items()]
    return "<h3>Manifest (sha256)</h3>" + table(["what", "file", "sha256"], rows)


def settings(info: dict[str, Any]) -> str:
    config = info.get("config") or {}
    rows = [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in sorted(config.items()) if v is not None]
    return "<details><summary>Settings</summary>" + table(["setting", "value"], rows) + "</details>"


def compared(picked: list[Path], logged: dict[Path, dict[str, list[tuple[float, float]]]]) -> str:
    """The runs' curves overlaid, their figures with the best of each marked, and the settings that differ."""
    out = ["<h2>Side by side</h2>", table(["#", "run"], [[i, str(r)] for i, r in enumerate(picked, 1)])]
    plotted = []
    for tag, name in (("train/loss", "training loss"), ("eval/loss", "eval loss")):
        series = {f"#{i} {r.name}": logged[r][tag] for i, r in enumerate(picked, 1) if tag in logged[r]}
        if series:
            plotted.append(figure(plots.lines(series, name, "step")))
    out.append('<div class="grid">' + "".join(plotted) + "</div>")
    figures = {r: comparison.figures_of(r) for r in picked}
    best = comparison.best_of(figures)
    rows = [[name, *[(f"{figures[r][name]:.4g}", "n best" if r in best.get(name, []) else "n")
                     if name in figures[r] else "" for r in picked]]
            for name in sorted({n for f in figures.values() for n in f})]
    out.append(table(["figure (the best in green)", *[f"#{i}" for i in range(1, len(picked) + 1)]], rows))
    diff = comparison.config_diff(picked)
    out.append("<h3>Settings that differ</h3>" + table(
        ["setting", *[f"#{i}" for i in range(1, len(picked) + 1)]],
        [[k, *[v if isinstance(v, str) else json.dumps(v) for v in values]] for k, values in diff.items()])
        if diff else "<p>No setting differs.</p>")
    return "".join(out)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
