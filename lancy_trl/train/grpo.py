"""`lancy grpo`: reinforcement learning with verifiable rewards, TRL's GRPOTrainer on the shared run lifecycle.

    result = run_grpo(resolve(GRPOArgs, flags={"dataset": ["finsent"], "reward": ["label"]}), console)

Prompts are the rows `lancy sft` and `lancy eval` build (same templates, system prompt, held-out rows); each row's
reference answer reaches the reward functions as its `answer` column (lancy_trl/train/rewards.py). Every step samples
--num-generations completions per prompt, scores them, and moves the policy toward the completions that scored above
their group's mean. The run logs the reward of each function and in total, its spread, the completion lengths and
the share cut at --max-completion-length, and the KL to the starting model when --beta is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lancy_trl import runs
from lancy_trl.config import GRPOArgs
from lancy_trl.errors import LancyError
from lancy_trl.train import lifecycle
from lancy_trl.train.lifecycle import RunResult

COMPLETION_LENGTH = {"classification": 16, "multiple_choice": 16, "math": 256}  # else 128
# Measured on finsent from SmolLM2-135M (README, GRPO): 4 completions a prompt at 1e-4 collapsed to one answer for
# every prompt within 60 steps (90% of groups all scoring alike: no signal left); 8 at 5e-5, 16 completions a step,
# kept 70% of groups informative to the end. Full fine-tuning: TRL's 1e-6.
LORA_LEARNING_RATE = 5e-5


def completion_length(args: GRPOArgs, task: str) -> int:
    return args.max_completion_length or COMPLETION_LENGTH.get(task, 128)


def check_generations(args: GRPOArgs) -> None:
    """TRL's rule, before anything loads: a step's completions are whole groups of --num-generations."""
    per_step = args.batch_size * args.gradient_accumulation_steps
    if args.num_generations < 2:
        raise LancyError(f"--num-generations {args.num_generations}: GRPO compares completions of one prompt, so it "
                         "needs at least 2")
    if per_step % args.num_generations:
        fits = [g for g in range(2, per_step + 1) if per_step % g == 0]
        sizes = [args.num_generations * k for k in range(1, 5)]
        raise LancyError(f"--num-generations {args.num_generations} does not divide the {per_step} completions of a "
                         f"step (--batch-size {args.batch_size} x --gradient-accumulation-steps "
                         f"{args.gradient_accumulation_steps}): use --num-generations {' or '.join(map(str, fits))}, "
                         f"or --batch-size {', '.join(map(str, sizes))}")
    if args.beta > 0 and Path(args.model, "run.json").is_file() and args.use_lora:
        raise LancyError("--beta > 0 from a LoRA run would measure the KL against the base model without the run's "
                         "adapter; pass --beta 0, or start from a full fine-tune")


def as_prompts(ds: Any) -> Any:
    """Prompt rows with their reference answer as the `answer` column (and an empty answer turn for the length
    checks); the `completion` column goes once the checks are done."""
    return ds.map(lambda row: {"answer": " ".join(m["content"] for m in row["completion"]),
                               "completion": [{"role": "assistant", "content": ""}]})


def reward_functions(args: GRPOArgs, data: Any) -> tuple[list[Any], list[float]]:
    from lancy_trl.train import rewards

    limit = completion_length(args, data.kind)
    return rewards.load(list(args.reward), data.kind, tuple(data.labels), args.length_budget or limit // 2, limit)


def prompt_data(args: GRPOArgs) -> Any:
    """The run's rows as prompts with their reference answers."""
    from lancy_trl.data.build import build_data, quiet

    data = build_data(args)
    if "text" in data.train.column_names:
        raise LancyError(f"{data.name} is plain text, with no prompts to answer: GRPO needs prompt rows "
                         "(a registry task dataset, or a file with prompt/answer columns)")
    with quiet():  # held-out rows stay as `lancy sft` keeps them: `lancy eval` scores the run on them
        data.train = as_prompts(data.train)
    return data


def run_grpo(args: GRPOArgs, console: Any, flags: dict[str, Any] | None = None) -> RunResult:
    from lancy_trl.train.sft import fit_to_model

    args, run_dir, checkpoint = lifecycle.prepare(args, flags or {}, console, GRPOArgs, "grpo")
    check_generations(args)
    picked: dict[str, Any] = {}

    def load_data(args: GRPOArgs) -> Any:  # the rewards are checked against the data's task before the model loads
        data = prompt_data(args)
        picked["rewards"] = reward_functions(args, data)
        return data

    data, source, loaded = lifecycle.setup(args, console, run_dir, checkpoint, load_data, "grpo")
    funcs, weights = picked["rewards"]
    with console.status("Counting tokens..."):
        report = fit_to_model(data, loaded.tokenizer, args)
    data.train = data.train.remove_columns([c for c in ("completion", "chat_template_kwargs")
                                            if c in data.train.column_names])
    extra = {"data": {**data.stats, **report}, "chat_template_kwargs": report["chat_template_kwargs"],
             "template": data.spec.template if data.spec else None,
             "rewards": [f.__name__ for f in funcs], "reward_weights": weights}
    run_dir = lifecycle.open_run(args, "grpo", run_dir, checkpoint, source, loaded, data, extra)
    with lifecycle.recorded(run_dir, "grpo"):
        return _train(args, run_dir, checkpoint, data, loaded, console, (funcs, weights), report["chat_template_kwargs"])


def grpo_config(args: GRPOArgs, run_dir: Path, info: dict[str, Any], task: str, weights: list[float],
                chat_kwargs: dict[str, Any]) -> Any:
    """The shared trainer arguments with GRPO's own: generations, completion length, sampling, KL, reward weights."""
    from trl import GRPOConfig

    from lancy_trl.train.sft import trainer_arguments

    shared = trainer_arguments(args, run_dir, info)
    shared.update(learning_rate=args.learning_rate or (LORA_LEARNING_RATE if args.use_lora else 1e-6),
                  logging_steps=args.logging_steps or 1)  # the reward curve, every step
    return GRPOConfig(
        **shared, num_generations=args.num_generations, max_completion_length=completion_length(args, task),
        temperature=args.temperature, beta=args.beta, reward_weights=weights, chat_template_kwargs=chat_kwargs or None,
        eval_strategy="no", pad_to_multiple_of=args.pad_to_multiple_of,
    )


def _train(args: GRPOArgs, run_dir: Path, checkpoint: str | None, data: Any, loaded: Any, console: Any,
           rewards: tuple[list[Any], list[float]], chat_kwargs: dict[str, Any]) -> RunResult:
    from transformers import PrinterCallback

    from lancy_trl.evaluation.classify import stop_ids
    from lancy_trl.train.grpo_trainer import LancyGRPOTrainer
    from lancy_trl.train.sft import trainer_options

    funcs, weights = rewards
    config = grpo_config(args, run_dir, loaded.info, data.kind, weights, chat_kwargs)
    loaded.model.generation_config.eos_token_id = stop_ids(loaded.tokenizer, chat_kwargs)  # end of turn ends it
    writer, interrupt, callbacks = lifecycle.observers(args, run_dir, console)
    trainer = LancyGRPOTrainer(
        model=loaded.model, reward_funcs=funcs, args=config, train_dataset=data.train,
        processing_class=loaded.tokenizer, peft_config=lifecycle.lora_config(args, loaded.model, loaded.info),
        **trainer_options(args, loaded.info),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    lifecycle.print_notes(data, console)
    info = loaded.info
    named = " + ".join(f"{f.__name__}" + (f" x{w:g}" if w != 1 else "") for f, w in zip(funcs, weights))
    console.print(f"[bold]{run_dir}[/]\n  {info['architecture']} on {info['device']} ({info['precision']}): "
                  f"{len(data.train):,} prompts, {args.num_generations} completions each of up to "
                  f"{config.max_completion_length} tokens, reward {named}"
                  + (", shared prefixes computed once per batch" if trainer.shared_prefix else "")
                  + lifecycle.notes(args, info, trainer))
    info.update(shared_prefix=trainer.shared_prefix, lean_logps=trainer.lean_logps, lean_modules=trainer.lean_modules,
                checkpointed_layers=trainer.checkpointed_layers)
    runs.update(run_dir, model_info=info)
    result = lifecycle.train(trainer, run_dir, checkpoint, interrupt, console, "grpo")
    result.final_eval.update(reward_curve(trainer.state.log_history))
    if result.status == "complete":
        meta = {"dataset": data.name, "labels": list(data.labels), "template": data.spec.template if data.spec else None,
                "system_prompt": args.system_prompt, "use_lora": args.use_lora, "rewards": [f.__name__ for f in funcs]}
        lifecycle.finish(trainer, result, meta)
    writer.close()
    return result


def reward_curve(history: list[dict[str, Any]]) -> dict[str, float]:
    """The mean reward over the first and the last tenth of the logged steps (at least one step each)."""
    rewards = [h["reward"] for h in history if "reward" in h]
    if not rewards:
        return {}
    tenth = max(len(rewards) // 10, 1)
    first, last = rewards[:tenth], rewards[-tenth:]
    return {"reward_first_tenth": sum(first) / len(first), "reward_last_tenth": sum(last) / len(last)}
