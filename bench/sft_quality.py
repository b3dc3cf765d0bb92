"""Eval quality behind the speed: train the baselines on the same data, then score them as `lancy eval` does.

    python bench/sft_quality.py --variant trl_default            # TRL's SFTConfig defaults, 2 epochs, LoRA r16
    python bench/sft_quality.py --variant trl_default --learning-rate 2e-4   # TRL at lancy's LoRA learning rate
    python bench/sft_quality.py --variant padded --epochs 2
    python bench/sft_quality.py --variant lancy                  # what `lancy sft` does (its config and trainer)
    python bench/sft_quality.py --variant lancy --full           # full fine-tuning instead of LoRA

Each variant trains on the finsent train split that `lancy sft` uses (the same seeded 90%), on SmolLM2-135M with
LoRA r16 on every linear layer (or every weight, --full), then the 75 held-out test sentences are scored with
lancy's `score` and `generate` methods. Prints wall time, the final train loss, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=("padded", "trl_default", "lancy"), required=True)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r16")
    p.add_argument("--learning-rate", type=float, help="the same peak learning rate for any variant (default: each "
                   "tool's own: TRL's 2e-5, lancy's 2e-4 with LoRA / 2e-5 full)")
    opts = p.parse_args()

    from harness import sft_trainer
    from peft import LoraConfig

    from lancy_trl.config import EvalArgs, resolve
    from lancy_trl.data.build import build_data
    from lancy_trl.evaluation.classify import classify
    from lancy_trl.evaluation.metrics import classification_report
    from lancy_trl.evaluation.runner import eval_rows
    from lancy_trl.models import load_model, lora_targets, pick_device, resolve_model
    from lancy_trl.train.methods.sft import SFTArgs

    device = pick_device("auto")
    args = resolve(SFTArgs, flags={"model": opts.model, "num_train_epochs": opts.epochs, "batch_size": opts.batch_size,
                                   "use_lora": not opts.full, "learning_rate": opts.learning_rate})
    data = build_data(args)
    loaded = load_model(resolve_model(opts.model), args, device=device)
    model, tok = loaded.model, loaded.tokenizer
    peft_config = None if opts.full else LoraConfig(r=16, lora_alpha=32, target_modules=lora_targets(model),
                                                    task_type="CAUSAL_LM")
    out = tempfile.mkdtemp(prefix=f"lancy-quality-{opts.variant}-")
    common = dict(output_dir=out, num_train_epochs=opts.epochs, per_device_train_batch_size=opts.batch_size,
                  report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=device == "cpu", seed=42,
                  **({"learning_rate": opts.learning_rate} if opts.learning_rate else {}))
    bf16 = device == "cuda"
    start = time.perf_counter()
    trainer = sft_trainer(opts.variant, model, tok, data.train, common, peft_config, bf16, args.max_length,
                          lancy=(args, loaded.info, Path(out)))
    result = trainer.train()
    seconds = time.perf_counter() - start
    es = eval_rows(resolve(EvalArgs, flags={"dataset": "finsent"}), {}, None)
    rows, labels = es.rows, es.labels
    prompts, targets = [r["prompt"] for r in rows], [r["target"] for r in rows]
    report = {"variant": opts.variant, "full": opts.full, "learning_rate": opts.learning_rate,
              "train_seconds": round(seconds, 1), "steps": result.global_step,
              "train_loss": result.training_loss}
    for method in ("score", "generate"):
        preds = [r["prediction"] for r in classify(trainer.model, tok, prompts, labels, method, 16)]
        r = classification_report(targets, preds, labels)
        report[method] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "invalid_rate": r["invalid_rate"]}
    print(f"{opts.variant}: {result.global_step} steps in {seconds:.0f} s; score accuracy {report['score']['accuracy']:.3f}, "
          f"generate {report['generate']['accuracy']:.3f} ({report['generate']['invalid_rate']:.0%} invalid)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
