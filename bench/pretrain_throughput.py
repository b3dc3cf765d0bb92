"""Continued-pretraining throughput: lancy's defaults against the classic transformers recipe and TRL's defaults.

    python bench/pretrain_throughput.py                   # SmolLM2-135M, finsent as text, blocks of 256, LoRA r16
    python bench/pretrain_throughput.py --full --block 512 --steps 4 --repeats 2
    python bench/pretrain_throughput.py --model tiny      # a tiny random model: checks the script in seconds

Same model, same documents (the finsent sentences as plain text), same block size and batch, each variant in its own
process, interleaved, the first step untimed. Prints real (non-padding) tokens per second, model FLOP utilisation
against a matmul peak measured in the same run, peak RSS, and the ratios at equal attention semantics:
  run_clm       the transformers example's recipe: tokenize, concatenate every document (EOS between), cut into
                blocks of --block tokens, `Trainer` + DataCollatorForLanguageModeling(mlm=False); no padding, tokens
                attend across documents inside a block
  run_clm_docs  run_clm's blocks with document boundaries: positions restart after each EOS and no attention mask, so
                transformers builds a block-diagonal causal mask (no token attends to another document)
  trl_default   trl.SFTTrainer with SFTConfig's defaults on {"text"} rows (one document per row, padded per batch,
                truncated at --block)
  lancy         `lancy pretrain`: pretrain_config and its trainer, documents packed into blocks by best-fit, each
                block a row (padding-free with flash-attention), no attention across documents
  lancy_across  `lancy pretrain --attend-across-documents`: TRL's wrapped packing (run_clm's blocks), plain causal
Ratios: lancy / run_clm_docs (both keep documents apart), lancy_across / run_clm (both attend across), lancy / TRL.
Model FLOPs per token: (4N with LoRA's frozen base, 6N otherwise) for the body and the LM head, every token learned.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

VARIANTS = ("run_clm", "run_clm_docs", "trl_default", "lancy", "lancy_across")
PAIRS = (("lancy", "run_clm_docs"), ("lancy_across", "run_clm"), ("lancy", "trl_default"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_variant(variant: str, opts: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback

    from lancy_trl.config import resolve
    from lancy_trl.data.text import text_data
    from lancy_trl.models import load_model, lora_targets, pick_device, resolve_model
    from lancy_trl.train.methods.pretrain import PretrainArgs

    device = pick_device(opts.device)
    args = resolve(PretrainArgs, flags={"dataset": ["finsent"], "max_steps": opts.steps + 1, "max_length": opts.block,
                                        "batch_size": opts.batch_size, "use_lora": not opts.full, "device": device,
                                        "model": opts.model_path, "attend_across_documents": variant == "lancy_across"})
    data = text_data(args)
    loaded = load_model(resolve_model(opts.model_path, log=lambda m: None), args, device=device)
    model, tok = loaded.model, loaded.tokenizer
    peft = None if opts.full else LoraConfig(r=16, lora_alpha=32, target_modules=lora_targets(model), task_type="CAUSAL_LM")
    common = dict(output_dir=opts.tmp, max_steps=opts.steps + 1, per_device_train_batch_size=opts.batch_size,
                  report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=device == "cpu", seed=0,
                  learning_rate=2e-4 if peft else 2e-5)
    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    counted: list[int] = []
    if variant.startswith("run_clm"):
        from peft import get_peft_model
        from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

        ids = [i for doc in tok(list(data.train["text"]))["input_ids"] for i in doc + [tok.eos_token_id]]
        blocks = [ids[i: i + opts.block] for i in range(0, len(ids) - opts.block + 1, opts.block)]
        from datasets import Dataset

        train = Dataset.from_dict({"input_ids": blocks})
        trainer: object = Trainer(model=get_peft_model(model, peft) if peft else model,
                                  args=TrainingArguments(**common, bf16=bf16_ok), train_dataset=train,
                                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
        if variant == "run_clm_docs":
            trainer.data_collator = DocumentBoundaries(trainer.data_collator, tok.eos_token_id)
    elif variant == "trl_default":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**common, max_length=opts.block, bf16=bf16_ok),
                             train_dataset=data.train, processing_class=tok, peft_config=peft)
    else:
        from lancy_trl.train.arguments import trainer_options
        from lancy_trl.train.methods.pretrain import pretrain_config, use_document_rows
        from lancy_trl.train.trainer import LancySFTTrainer

        config = pretrain_config(args, Path(opts.tmp), loaded.info, has_eval=False)
        config.save_strategy, config.output_dir, config.seed = "no", opts.tmp, 0
        trainer = LancySFTTrainer(model=model, args=config, train_dataset=data.train, processing_class=tok,
                                  peft_config=peft, **trainer_options(args, loaded.info))
        use_document_rows(trainer, loaded.info, tok)
    collate = trainer.data_collator  # type: ignore[attr-defined]

    def counting(features):
        batch = collate(features)
        counted.append(int((batch["labels"] != -100).sum()))  # the tokens the loss learns from
        return batch

    trainer.data_collator = counting  # type: ignore[attr-defined]
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    trainer.add_callback(Timer())  # type: ignore[attr-defined]
    trainer.train()  # type: ignore[attr-defined]
    base = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    head = base.get_output_embeddings().weight
    n_body = sum(p.numel() for n, p in base.named_parameters() if "embed" not in n and "lora_" not in n and p is not head)
    return {"variant": variant, "tokens_per_s": sum(counted[1: len(times)]) / sum(times[1:]),
            "step_s": statistics.mean(times[1:]), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device": device, "params": n_body + head.numel()}


class DocumentBoundaries:
    """run_clm's batch with positions restarting after each EOS and no attention mask: transformers then builds a
    block-diagonal causal mask, and a document's first token is not a target (nothing of its own predicts it)."""

    def __init__(self, collate, eos: int) -> None:
        self.collate, self.eos = collate, eos

    def __call__(self, features):
        import torch

        batch = self.collate(features)
        ids = batch.pop("input_ids")
        batch.pop("attention_mask")
        after_eos = torch.zeros_like(ids, dtype=torch.bool)
        after_eos[:, 1:] = ids[:, :-1] == self.eos
        starts = after_eos.clone()
        starts[:, 0] = True
        index = torch.arange(ids.shape[1]).expand_as(ids)
        last_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
        batch["position_ids"] = index - last_start
        batch["labels"][after_eos] = -100
        return {"input_ids": ids, **batch}


def main() -> None:
    from harness import interleaved, matmul_peak, model_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="catalog name, path, or 'tiny'")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (plus one warm-up)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r16")
    p.add_argument("--block", type=int, default=256, help="block length (lancy: --max-length)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp/lancy-bench-pretrain", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.variant:
        print("RESULT " + json.dumps(run_variant(opts.variant, opts)))
        return
    results = interleaved(__file__, list(VARIANTS), model_path(opts.model), opts.repeats, "tokens_per_s")
    peak = matmul_peak(results["lancy"][0]["device"], "float32")
    k = 6 if opts.full else 4
    summary = {}
    print(f"{'variant':<13} {'tok/s':>8} {'s/step':>8} {'MFU':>6} {'peak MB':>8}   (fp32 matmul peak {peak:.0f} GFLOP/s)")
    for v, rs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        mfu = tps * k * rs[0]["params"] / (peak * 1e9)
        summary[v] = {"tokens_per_s": tps, "mfu": mfu, "peak_mb": max(r["peak_mb"] for r in rs)}
        print(f"{v:<13} {tps:>8.1f} {statistics.median(r['step_s'] for r in rs):>8.2f} {mfu:>6.1%} "
              f"{summary[v]['peak_mb']:>8.0f}")
    report = {"model": opts.model, "block": opts.block, "lora": not opts.full, "matmul_peak_gflops": peak,
              "variants": summary}
    for ours, base in PAIRS:
        pairs = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results[ours], results[base])]
        ratio = summary[ours]["tokens_per_s"] / summary[base]["tokens_per_s"]
        report[f"{ours}/{base}"] = {"ratio": ratio, "by_run": [round(x, 2) for x in pairs]}
        print(f"{ours} / {base}: {ratio:.2f}x (run by run: {', '.join(f'{x:.2f}' for x in pairs)})")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
