"""GRPO step speed: lancy's defaults against TRL's GRPOConfig defaults, same model, prompts, generations and LoRA.

    python bench/grpo_throughput.py                       # SmolLM2-135M (hub / cache / PyPI GGUF), finsent prompts
    python bench/grpo_throughput.py --steps 6 --repeats 3
    python bench/grpo_throughput.py --model tiny          # a tiny random model: checks the script in seconds

Both variants train LoRA r16 on every linear layer at the same learning rate, with --batch-size completions a step
(--num-generations per prompt) of exactly --completion-length tokens: end-of-sequence is suppressed, so every step
samples and trains on the same number of tokens whatever the policy has learned, and steps/s compares like with like.
The reward is 1 when a completion names the reference label anywhere (the shipped `label` reward, an exact match,
is 0 on forced-length completions, and so would be the loss).
Each run is its own process, A/B interleaved over --repeats; the first step is warm-up and not timed. Prints a
table and one JSON line: seconds per step, the part spent generating, steps/s ratio lancy / TRL (of the medians and
run by run), the first step's loss and reward (the same prompts, seed and first samples: they should agree), and
peak RSS.
Variants:
  trl_default  trl.GRPOTrainer with GRPOConfig's defaults (gradient checkpointing on; bf16 only where the device has it)
  lancy        lancy's GRPOConfig (lancy_trl.train.grpo.grpo_config) and trainer (lancy_trl.train.grpo_trainer)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

VARIANTS = ("trl_default", "lancy")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def mentions_answer(completions: list, answer: list, **_: object) -> list[float]:
    """1 when the completion names its reference label anywhere: nonzero on forced-length completions."""
    from lancy_trl.train.rewards import text_of

    return [float(a.lower() in text_of(c).lower()) for c, a in zip(completions, answer)]


def run_variant(variant: str, opts: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback

    from lancy_trl.config import resolve
    from lancy_trl.models import load_model, lora_targets, pick_device, resolve_model
    from lancy_trl.train.methods.grpo import GRPOArgs, grpo_config, prompt_data, reward_functions

    device = pick_device(opts.device)
    args = resolve(GRPOArgs, flags={"max_steps": opts.steps + 1, "batch_size": opts.batch_size, "device": device,
                                    "num_generations": opts.num_generations, "eval_fraction": 0.0,
                                    "max_completion_length": opts.completion_length, "learning_rate": 1e-4,
                                    "model": opts.model_path})
    data = prompt_data(args)
    _, weights = reward_functions(args, data)
    funcs = [mentions_answer]  # the label reward is 0 on forced-length completions; this one varies, so the loss does
    loaded = load_model(resolve_model(opts.model_path, log=lambda m: None), args, device=device)
    model, tok = loaded.model, loaded.tokenizer
    train = data.train.remove_columns([c for c in ("completion",) if c in data.train.column_names])
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=lora_targets(model), task_type="CAUSAL_LM")
    fixed = {"min_new_tokens": opts.completion_length}  # every completion the same length: equal work per step
    if variant == "trl_default":
        from trl import GRPOConfig, GRPOTrainer

        bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
        config = GRPOConfig(output_dir=opts.tmp, max_steps=opts.steps + 1, per_device_train_batch_size=opts.batch_size,
                            num_generations=opts.num_generations, max_completion_length=opts.completion_length,
                            learning_rate=1e-4, report_to="none", save_strategy="no", disable_tqdm=True,
                            use_cpu=device == "cpu", seed=0, bf16=bf16_ok, generation_kwargs=fixed, logging_steps=1)
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=train, processing_class=tok,
                              peft_config=peft_config)
    else:
        from lancy_trl.train.arguments import trainer_options
        from lancy_trl.train.grpo_trainer import LancyGRPOTrainer

        config = grpo_config(args, Path(opts.tmp), loaded.info, data.kind, weights, {})
        config.save_strategy, config.output_dir, config.seed, config.generation_kwargs = "no", opts.tmp, 0, fixed
        trainer = LancyGRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=train,
                                   processing_class=tok, peft_config=peft_config, **trainer_options(args, loaded.info))
    times: list[float] = []
    generating: list[float] = []
    generate = trainer._generate

    def timed_generate(*a, **k):
        start = time.perf_counter()
        out = generate(*a, **k)
        generating.append(time.perf_counter() - start)
        return out

    trainer._generate = timed_generate  # type: ignore[method-assign]

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    trainer.add_callback(Timer())
    trainer.train()
    first = next(h for h in trainer.state.log_history if "reward" in h)
    return {"variant": variant, "step_s": statistics.mean(times[1:]), "generate_s": statistics.mean(generating[1:]),
            "first_loss": first["loss"], "first_reward": first["reward"],
            "completion_tokens": first["completions/mean_length"],
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "device": device,
            "shared_prefix": getattr(trainer, "shared_prefix", False)}


def main() -> None:
    from harness import interleaved, model_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="catalog name, path, or 'tiny'")
    p.add_argument("--steps", type=int, default=4, help="timed steps per run (plus one warm-up)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--completion-length", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp/lancy-bench-grpo", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.variant:  # child process
        print("RESULT " + json.dumps(run_variant(opts.variant, opts)))
        return
    results = interleaved(__file__, list(VARIANTS), model_path(opts.model), opts.repeats, "step_s")
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("step_s", "generate_s", "peak_mb")}
           for v, rs in results.items()}
    print(f"{'variant':<12} {'s/step':>8} {'generate s':>11} {'train s':>8} {'first loss':>11} {'first reward':>13} "
          f"{'peak MB':>8}")
    for v, rs in results.items():
        m = med[v]
        print(f"{v:<12} {m['step_s']:>8.2f} {m['generate_s']:>11.2f} {m['step_s'] - m['generate_s']:>8.2f} "
              f"{rs[0]['first_loss']:>11.5f} {rs[0]['first_reward']:>13.3f} {m['peak_mb']:>8.0f}")
    ratio = med["trl_default"]["step_s"] / med["lancy"]["step_s"]
    rest = {v: med[v]["step_s"] - med[v]["generate_s"] for v in VARIANTS}
    pairs = [t["step_s"] / lc["step_s"] for t, lc in zip(results["trl_default"], results["lancy"])]
    print(f"lancy steps/s vs TRL defaults: {ratio:.2f}x (run by run: {', '.join(f'{r:.2f}' for r in pairs)}); "
          f"generation {med['trl_default']['generate_s'] / med['lancy']['generate_s']:.2f}x, rest of the step "
          f"{rest['trl_default'] / rest['lancy']:.2f}x")
    print(json.dumps({"model": opts.model, "batch_size": opts.batch_size, "num_generations": opts.num_generations,
                      "completion_length": opts.completion_length, "ratio_steps_per_s": ratio, "ratios": pairs,
                      "median": med, "runs": results}))


if __name__ == "__main__":
    main()
