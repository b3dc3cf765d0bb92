"""Training throughput: lancy's defaults against a padded baseline and TRL's defaults, same model, same data.

    python bench/sft_throughput.py                       # SmolLM2-135M (hub / cache / PyPI GGUF), full fine-tuning
    python bench/sft_throughput.py --lora --steps 6 --repeats 3
    python bench/sft_throughput.py --model tiny          # a tiny random model: checks the script in seconds
    python bench/sft_throughput.py --lancy-set batch_size=4 --lancy-set gradient_accumulation_steps=2   # a lever
    python bench/sft_throughput.py --lora --heap         # also malloc's in-use peak beside peak RSS (CPU, glibc)

Each variant runs in its own process (clean peak memory), A/B interleaved over --repeats; the first step of each
run is warm-up and not timed. Prints a table and one JSON line with real (non-padding) tokens per second, the
ratios to both baselines (of the medians, and run by run: each lancy run against the baseline run next to it),
model FLOP utilisation against a matmul peak measured in this run, and peak memory.
Model FLOPs per token count the body (4N with LoRA's frozen base, 6N otherwise) for every token and the LM head
only for the tokens the objective learns from (all of them for the padded baseline, the answers for the others).
Variants:
  padded       transformers.Trainer, prompt+answer text padded to max_length, DataCollatorForLanguageModeling(mlm=False)
  trl_default  trl.SFTTrainer with SFTConfig's defaults on prompt/completion rows (bf16 only where the device has it)
  lancy        lancy's own SFTConfig (lancy_trl.train.sft.sft_config) with its defaults for this device, and its
               trainer (lancy_trl.train.trainer: the LM head only where answer tokens are predicted)
On a CUDA machine the same three run on the GPU, with MFU against the GPU's measured bf16/fp32 peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SFT_VARIANTS, HeapWatch, interleaved, matmul_peak, model_path, sft_trainer  # noqa: E402


def run_variant(variant: str, opts: argparse.Namespace) -> dict:
    """One training run of `opts.steps + 1` steps; returns timing, tokens and memory."""
    import torch
    from transformers import TrainerCallback

    from lancy_trl.config import resolve
    from lancy_trl.data.build import build_data
    from lancy_trl.models import load_model, lora_targets, pick_device, resolve_model
    from lancy_trl.train.methods.sft import SFTArgs

    device = pick_device(opts.device)
    flags = {"max_steps": opts.steps + 1, "batch_size": opts.batch_size, "max_length": opts.max_length,
             "use_lora": opts.lora, "eval_fraction": 0.0, "device": device}
    trl_set = {}  # a lever to measure: lancy's options (or TRL's SFTConfig fields) changed, the baselines untouched
    if variant == "lancy":
        import dataclasses

        names = {f.name for f in dataclasses.fields(SFTArgs)}
        for item in opts.lancy_set or []:
            key, _, value = item.partition("=")
            key = key.replace("-", "_")
            (flags if key in names else trl_set)[key] = json.loads(value)
    args = resolve(SFTArgs, flags=flags)
    data = build_data(args)
    loaded = load_model(resolve_model(opts.model_path), args, device=device)
    model, tok = loaded.model, loaded.tokenizer
    counts: list[int] = []
    loss_counts: list[int] = []

    def counting(collate):
        def wrapped(features):
            batch = collate(features)
            if "attention_mask" in batch:
                counts.append(int(batch["attention_mask"].sum()))
            else:  # padding-free: one row of real tokens
                counts.append(int(batch["position_ids"].numel()))
            loss_counts.append(int((batch["labels"][:, 1:] != -100).sum()))
            return batch

        return wrapped

    times: list[float] = []
    computed: list[int] = []  # lancy: tokens its decoder layers computed so far, at the end of each step

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)
            computed.append(getattr(trainer, "body_tokens", 0))

    peft_config = None
    if opts.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=lora_targets(model), task_type="CAUSAL_LM")
    common = dict(output_dir=opts.tmp, max_steps=opts.steps + 1, per_device_train_batch_size=opts.batch_size,
                  report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=device == "cpu", seed=0)
    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    trainer = sft_trainer(variant, model, tok, data.train, common, peft_config, bf16_ok, opts.max_length,
                          lancy=(args, loaded.info, Path(opts.tmp)), trl_set=trl_set)
    trainer.data_collator = counting(trainer.data_collator)
    trainer.add_callback(Timer())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if opts.heap and device == "cpu":
        with HeapWatch() as watch:
            trainer.train()
        heap_mb = watch.peak / 2**20
    else:
        trainer.train()
        heap_mb = None
    # step i consumed batch i; drop the warm-up step
    ga = trainer.args.gradient_accumulation_steps  # the collator runs once per micro-batch
    tokens, seconds = sum(counts[ga: ga * len(times)]), sum(times[1:])
    # the tokens the decoder layers computed: the real tokens, but lancy computes a batch's shared prefix once
    body_tokens = computed[-1] - computed[0] if computed[-1] else tokens
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    base = loaded.model
    head = base.get_output_embeddings().weight
    n_body = sum(p.numel() for n, p in base.named_parameters() if "embed" not in n and "lora_" not in n and p is not head)
    return {"variant": variant, "tokens_per_s": tokens / seconds, "step_s": seconds / max(1, len(times) - 1),
            "computed_share": body_tokens / max(tokens, 1),
            "peak_mb": peak, "heap_mb": heap_mb, "device": device, "params_body": n_body, "params_head": head.numel(),
            "loss_token_share": sum(loss_counts[ga: ga * len(times)]) / max(tokens, 1),
            "precision": "bf16" if (bf16_ok or getattr(trainer.args, "bf16", False)) else "fp32"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="catalog name, path, or 'tiny'")
    p.add_argument("--steps", type=int, default=4, help="timed steps per run (plus one warm-up)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--lora", action="store_true", help="LoRA r16 instead of full fine-tuning")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--lancy-set", action="append", metavar="KEY=JSON",
                   help="change one of lancy's options (or a TRL SFTConfig field) for its variant only, e.g. "
                        "--lancy-set batch_size=4 --lancy-set gradient_accumulation_steps=2")
    p.add_argument("--heap", action="store_true",
                   help="CPU: also report the most memory malloc had in use while training (sampled; peak RSS "
                        "minus this is memory the allocator kept after it was freed)")
    p.add_argument("--variants", nargs="+", choices=SFT_VARIANTS, default=list(SFT_VARIANTS),
                   help="run only these (ratios need padded / trl_default in the same run)")
    p.add_argument("--variant", choices=SFT_VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp/lancy-bench", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.variant:  # child process
        print("RESULT " + json.dumps(run_variant(opts.variant, opts)))
        return
    path = model_path(opts.model)
    chosen = [v for v in SFT_VARIANTS if v in opts.variants]
    results = interleaved(__file__, chosen, path, opts.repeats, "tokens_per_s")
    import torch

    device = results[chosen[0]][0]["device"]
    peaks = {dt: matmul_peak(device, dt) for dt in ("float32", "bfloat16")} if device == "cuda" else {
        "float32": matmul_peak(device, "float32")}
    # Model FLOPs per token: the body (2N forward + 2N input gradients, + 2N weight gradients without LoRA's frozen
    # base) for every token it computes (the real tokens; for lancy, a batch's shared prefix once), and the LM head
    # only for the tokens the objective learns from (every token for the padded baseline, the answers for
    # completion-only loss). Work beyond that (padding, a head over prompt tokens) is waste.
    k = 4 if opts.lora else 6
    summary = {}
    heap = " heap MB" if opts.heap and device == "cpu" else ""
    print(f"\n{'variant':12s} {'tok/s':>8s} {'step s':>8s} {'computed':>8s} {'MFU':>6s} {'peak MB':>9s}{heap}  "
          f"({device}, {torch.__version__})")
    for variant, runs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        peak = peaks["bfloat16" if runs[0]["precision"] == "bf16" else "float32"] if device == "cuda" else peaks["float32"]
        share = statistics.median(r["loss_token_share"] for r in runs)
        computed = statistics.median(r["computed_share"] for r in runs)
        flops_per_token = k * (computed * runs[0]["params_body"] + share * runs[0]["params_head"])
        mfu = tps * flops_per_token / (peak * 1e9)
        summary[variant] = {"tokens_per_s": tps, "mfu": mfu, "peak_mb": max(r["peak_mb"] for r in runs),
                            "loss_token_share": share, "computed_share": computed,
                            "step_s": statistics.median(r["step_s"] for r in runs), "precision": runs[0]["precision"]}
        s = summary[variant]
        if heap:
            s["heap_mb"] = max(r["heap_mb"] for r in runs)
        print(f"{variant:12s} {tps:8.1f} {s['step_s']:8.2f} {computed:8.0%} {mfu:6.1%} {s['peak_mb']:9.0f}"
              + (f" {s['heap_mb']:7.0f}" if heap else ""))
    report = {
        "model": opts.model, "device": device, "lora": opts.lora, "steps": opts.steps, "repeats": opts.repeats,
        "matmul_peak_gflops": peaks, "variants": summary,
    }
    for base in ("padded", "trl_default"):
        if "lancy" in summary and base in summary:
            report[f"ratio_vs_{base}"] = summary["lancy"]["tokens_per_s"] / summary[base]["tokens_per_s"]
            # run r of lancy against run r of the baseline, which ran next to it: the machine's slow and fast spells
            # cancel out of these better than out of the ratio of medians
            pairs = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results["lancy"], results[base])]
            report[f"ratio_vs_{base}_by_run"] = [round(r, 2) for r in pairs]
            print(f"lancy / {base}: {report[f'ratio_vs_{base}']:.2f}x (run by run: "
                  + ", ".join(f"{r:.2f}x" for r in pairs) + ")")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
