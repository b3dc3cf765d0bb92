"""What an exported file is checked against: the run's model, on prompts the run held out. Next-token logits on up to
32 prompts (the largest difference, and how often the most likely token agrees) and, for a classification run, the
label accuracy on every held-out row, scored as `lancy eval --method score` scores.

    reference = Outputs.of(run_dir, tokenizer, model)       # the run's model, before the export changes anything
    report = reference.compare(Outputs.of(run_dir, tokenizer, exported), TOLERANCE["bf16"], str(path))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError

ARGMAX_AGREEMENT = 0.9  # the share of prompts whose most likely next token must agree
# The largest next-token logit difference accepted, by type. bf16 keeps 8 significant bits, as q8_0 does: the demo
# run of SmolLM2-135M differs by 0.83 in bf16 (every most likely token the same) and 1.20 in q8_0 (97%); f16 by 0.05.
TOLERANCE = {"f16": 0.25, "bf16": 2.0, "q8_0": 2.0}
PROMPTS = 32


@dataclass
class Outputs:
    """One model's next-token logits on the run's held-out prompts, and its label accuracy (classification runs)."""

    logits: list[Any]
    accuracy: dict[str, Any]

    @classmethod
    def of(cls, run_dir: Path, tokenizer: Any, model: Any) -> Outputs:
        import torch

        from lancy_trl.data.template import render

        texts = [render(tokenizer, r) for r in held_out_prompts(run_dir, PROMPTS)]
        with torch.no_grad():
            logits = [model(tokenizer(t, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device))
                      .logits[0, -1].float().cpu() for t in texts]
        return cls(logits, label_accuracy(run_dir, tokenizer, model))

    def compare(self, other: Outputs, tolerance: float, name: str, against: str = "the run's model") -> dict[str, Any]:
        """The export's agreement with this reference (`against` says what it is); an error outside the tolerance."""
        diffs = [float((a - b).abs().max()) for a, b in zip(self.logits, other.logits)]
        agree = sum(int(a.argmax() == b.argmax()) for a, b in zip(self.logits, other.logits))
        worst, share = max(diffs), agree / len(diffs)
        if worst > tolerance or share < ARGMAX_AGREEMENT:
            raise LancyError(f"{name} does not compute what {against} computes: largest next-token logit "
                             f"difference {worst:.3f} (tolerance {tolerance}), most likely token agreeing on {agree} "
                             f"of {len(diffs)} prompts; the file is kept for inspection")
        report = {"prompts": len(diffs), "max_logit_diff": worst, "argmax_agreement": share, "tolerance": tolerance,
                  "against": against}
        if self.accuracy:
            report |= {"accuracy_merged": self.accuracy["accuracy"], "accuracy_exported": other.accuracy["accuracy"],
                       "accuracy_rows": self.accuracy["rows"], "accuracy_split": self.accuracy["split"]}
        return report


def lines(report: dict[str, Any], size: int) -> list[str]:
    """What the export says of its check."""
    said = [f"{size / 2**20:.0f} MB; next-token logits on {report['prompts']} held-out prompts: largest difference "
            f"{report['max_logit_diff']:.3f} (tolerance {report['tolerance']}), most likely token agreeing "
            f"{report['argmax_agreement']:.0%}"]
    if "accuracy_exported" in report:
        said.append(f"label accuracy on the run's {report['accuracy_rows']} held-out {report['accuracy_split']} rows: "
                    f"{report['accuracy_exported']:.3f} exported, {report['accuracy_merged']:.3f} {report['against']}")
    return said


def label_accuracy(run_dir: Path, tokenizer: Any, model: Any) -> dict[str, Any]:
    """For a classification run: the model's label accuracy on every row the run held out (test, else validation)."""
    from lancy_trl import runs
    from lancy_trl.evaluation.classify import classify

    info = runs.read(run_dir)
    labels = list(info.get("labels") or [])
    path = next((run_dir / "data" / f"{s}.jsonl" for s in ("test", "validation")
                 if (run_dir / "data" / f"{s}.jsonl").is_file()), None)
    if not labels or path is None:
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    predictions = classify(model, tokenizer, [r["prompt"] for r in rows], labels, "score",
                           chat_kwargs=info.get("chat_template_kwargs") or {})
    right = sum(p["prediction"] == r["target"] for p, r in zip(predictions, rows))
    return {"accuracy": right / len(rows), "rows": len(rows), "split": path.stem}


def held_out_prompts(run_dir: Path, n: int) -> list[list[dict[str, str]]]:
    """Up to n chat prompts the run held out (or its documents' first words, for pretraining runs)."""
    rows: list[dict[str, Any]] = []
    for split in ("test", "validation"):
        path = run_dir / "data" / f"{split}.jsonl"
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines()[:n]]
    prompts = [r["prompt"] if "prompt" in r else [{"role": "user", "content": r.get("text", "")[:400]}] for r in rows]
    return prompts[:n] or [[{"role": "user", "content": "Revenue rose in the quarter."}]]
