"""`lancy grpo`: reinforcement learning with verifiable rewards, TRL's GRPOTrainer.

    lancy grpo --model runs/<sft-run> --dataset finsent --reward label --num-generations 4
    lancy grpo --dataset openai/gsm8k --dataset-config main --data-files train.parquet --reward numeric --reward format:0.2
    lancy grpo --dataset my_rows.jsonl --reward my_rewards.py:score

Prompts are the rows `lancy sft` and `lancy eval` build (same templates, system prompt, held-out rows); each row's
reference answer reaches the reward functions as its `answer` column (lancy_trl/train/rewards.py). Every step samples
--num-generations completions per prompt, scores them, and moves the policy toward the completions that scored above
their group's mean. The run logs the reward of each function and in total, its spread, the completion lengths and
the share cut at --max-completion-length, and the KL to the starting model when --beta is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lancy_trl.config import DataArgs, ModelArgs, RunArgs, TrainArgs, opt
from lancy_trl.errors import LancyError
from lancy_trl.train import arguments, driver
from lancy_trl.train.methods import Method

ANCHOR_BETA = 0.04  # TRL's former default: keeps a GRPO run near the SFT run it starts from


@dataclass
class GRPOArgs(ModelArgs, DataArgs, TrainArgs, RunArgs):
    """`lancy grpo`: reinforcement learning with verifiable rewards (TRL's GRPOTrainer)."""

    reward: list[str] = opt(
        [], "Reward NAME[:WEIGHT], repeatable: label (the exact label word), numeric (the final number), choice (the "
        "option letter), format (the answer where the prompt asks for it), length (a penalty past --length-budget), "
        "or your own FILE.py:NAME / module:NAME. Default: the task's own (label, numeric or choice).", group="GRPO",
    )
    num_generations: int | None = opt(
        None, "Completions sampled per prompt; --batch-size x --gradient-accumulation-steps completions make a step, "
        "so it must divide that. Default 16 for classification and multiple choice (short answers: enough samples "
        "that a group holds the rarer right answers), 8 otherwise.", group="GRPO")
    max_completion_length: int | None = opt(
        None, "Longest completion in tokens; default 8 for classification, 16 for multiple choice, 256 for math, "
        "128 otherwise.", group="GRPO",
    )
    length_budget: int | None = opt(None, "Completion tokens the length reward allows before its penalty starts; "
                                    "default half of --max-completion-length.", group="GRPO")
    temperature: float = opt(1.0, "Sampling temperature of the completions.", group="GRPO")
    beta: float | None = opt(
        None, "KL penalty against the starting model (0: none, and no reference model is kept). Default: "
        f"{ANCHOR_BETA} from a finished run (--model runs/<run>: the run's model, adapter included, is the anchor), "
        "0 from a base model.", group="GRPO")
    max_length: int = opt(256, "Longest prompt in tokens; longer prompts are dropped with a count.")
    batch_size: int | None = opt(  # type: ignore[assignment]  # None until fill_defaults knows the task
        None, "Completions per device per step (prompts x --num-generations); default two prompts' worth, "
        "2 x --num-generations.")
    eval_steps: int = opt(20, "Every N steps a classification run answers its held-out prompts greedily and logs "
                          "the accuracy and each label's share of the answers (`lancy eval` on the run scores its "
                          "test rows).", group="Logging")


def beta(args: Any) -> float:
    if args.beta is not None:
        return args.beta
    return ANCHOR_BETA if Path(args.model, "run.json").is_file() else 0.0


COMPLETION_LENGTH = {"classification": 8, "multiple_choice": 16, "math": 256}  # else 128
# Measured on finsent from SmolLM2-135M (README, GRPO; docs/benchmarks.md has every run): with 8 completions a
# prompt the model's rare label (neutral, 2% of its first answers) never came up in a group, so nothing rewarded it
# and greedy answers never named it (0.613 held-out, macro-F1 0.49); 16 a prompt found it within 40 steps. LoRA at
# 1e-4 learned the form in 20 steps (5e-5 had not learned the task in 100). Full fine-tuning: TRL's 1e-6.
GENERATIONS = {"classification": 16, "multiple_choice": 16}  # else 8
PROMPTS_PER_STEP = 2
LORA_LEARNING_RATE = 1e-4


def completion_length(args: Any, task: str) -> int:
    return args.max_completion_length or COMPLETION_LENGTH.get(task, 128)


def check(args: Any) -> None:
    """Refusals before anything loads."""
    if args.num_generations is not None and args.num_generations < 2:
        raise LancyError(f"--num-generations {args.num_generations}: GRPO compares completions of one prompt, so it "
                         "needs at least 2")
    if args.beta is not None and args.beta < 0:
        raise LancyError(f"--beta {args.beta}: the KL penalty's weight cannot be negative; 0 turns it off")
    from_lora = Path(args.model, "model", "adapter_config.json").is_file()
    several = args.num_processes > 1 or args.deepspeed or args.fsdp
    if beta(args) > 0 and from_lora and not args.use_lora and several:
        raise LancyError("full fine-tuning from a LoRA run with a KL penalty under several processes would anchor "
                         "to the base model without the run's adapter: train on in the adapter (--use-lora), pass "
                         "--beta 0, or use one process")


def fill_defaults(args: Any, task: str) -> None:
    """--num-generations and --batch-size for the task when not given, then TRL's rule, before the model loads: a
    step's completions are whole groups of --num-generations."""
    chosen = "" if args.num_generations else f" ({task}'s default)"
    if args.num_generations is None:
        args.num_generations = GENERATIONS.get(task, 8)
    if args.batch_size is None:
        args.batch_size = PROMPTS_PER_STEP * args.num_generations
    per_step = args.batch_size * args.gradient_accumulation_steps
    if per_step % args.num_generations:
        fits = [g for g in range(2, per_step + 1) if per_step % g == 0]
        sizes = [args.num_generations * k for k in range(1, 5)]
        raise LancyError(f"--num-generations {args.num_generations}{chosen} does not divide the {per_step} "
                         f"completions of a step (--batch-size {args.batch_size} x --gradient-accumulation-steps "
                         f"{args.gradient_accumulation_steps}): use --num-generations {' or '.join(map(str, fits))}, "
                         f"or --batch-size {', '.join(map(str, sizes))}")


def as_prompts(ds: Any) -> Any:
    """Prompt rows with their reference answer as the `answer` column (and an empty answer turn for the length
    checks); the `completion` column goes once the checks are done."""
    return ds.map(lambda row: {"answer": " ".join(m["content"] for m in row["completion"]),
                               "completion": [{"role": "assistant", "content": ""}]})


def reward_functions(args: Any, data: Any) -> tuple[list[Any], list[float]]:
    from lancy_trl.train import rewards

    limit = completion_length(args, data.kind)
    return rewards.load(list(args.reward), data.kind, tuple(data.labels), args.length_budget or limit // 2, limit)


def prompt_data(args: Any) -> Any:
    """The run's rows as prompts with their reference answers."""
    from lancy_trl.data.build import build_data
    from lancy_trl.data.sources import quiet

    data = build_data(args)
    if "text" in data.train.column_names:
        raise LancyError(f"{data.name} is plain text, with no prompts to answer: GRPO needs prompt rows "
                         "(a registry task dataset, or a file with prompt/answer columns)")
    with quiet():  # held-out rows stay as `lancy sft` keeps them: `lancy eval` scores the run on them
        data.train = as_prompts(data.train)
    return data


def load_data(args: GRPOArgs) -> Any:
    """The prompts, with the rewards checked against the data's task before the model loads."""
    data = prompt_data(args)
    fill_defaults(args, data.kind)
    reward_functions(args, data)
    return data


def prepare(r: Any) -> dict[str, Any]:
    from lancy_trl.data.tokens import fit_to_model

    args, data = r.args, r.data
    r.state["rewards"] = funcs, weights = reward_functions(args, data)
    with r.console.status("Counting tokens..."):
        r.report = fit_to_model(data, r.loaded.tokenizer, args)
    data.train = data.train.remove_columns([c for c in ("completion", "chat_template_kwargs")
                                            if c in data.train.column_names])
    return {"data": {**data.stats, **r.report}, "chat_template_kwargs": r.report["chat_template_kwargs"],
            "template": data.spec.template if data.spec else None,
            "rewards": [f.__name__ for f in funcs], "reward_weights": weights}


def grpo_config(args: Any, run_dir: Path, info: dict[str, Any], task: str, weights: list[float],
                chat_kwargs: dict[str, Any]) -> Any:
    """The shared trainer arguments with GRPO's own: generations, completion length, sampling, KL, reward weights."""
    from trl import GRPOConfig

    shared = arguments.trainer_arguments(args, run_dir, info)
    shared.update(learning_rate=args.learning_rate or (LORA_LEARNING_RATE if args.use_lora else 1e-6),
                  logging_steps=args.logging_steps or 1)  # the reward curve, every step
    return GRPOConfig(
        **shared, num_generations=args.num_generations, max_completion_length=completion_length(args, task),
        temperature=args.temperature, beta=beta(args), reward_weights=weights, chat_template_kwargs=chat_kwargs or None,
        eval_strategy="no", pad_to_multiple_of=args.pad_to_multiple_of,
    )


def build(r: Any) -> Any:
    from lancy_trl.data.template import stop_ids
    from lancy_trl.scale import distributed
    from lancy_trl.train.callbacks import GreedyEval, LittleSignal
    from lancy_trl.train.grpo_trainer import LancyGRPOTrainer

    args, info, chat_kwargs = r.args, r.info, r.report["chat_template_kwargs"]
    funcs, weights = r.state["rewards"]
    config = grpo_config(args, r.run_dir, info, r.data.kind, weights, chat_kwargs)
    r.loaded.model.generation_config.eos_token_id = stop_ids(r.loaded.tokenizer, chat_kwargs)  # end of turn ends it
    labels = list(r.data.labels) if r.data.kind == "classification" else []
    trainer = LancyGRPOTrainer(
        model=r.loaded.model, reward_funcs=funcs, args=config, train_dataset=r.data.train,
        processing_class=r.loaded.tokenizer, peft_config=arguments.lora_config(args, r.loaded.model, info),
        **arguments.trainer_options(args, info), callbacks=r.callbacks, balance_by="answer" if labels else None,
    )
    held_out = arguments.eval_subset(args, r.data.eval)
    if labels and held_out is not None and distributed.is_main() and distributed.world_size() == 1:
        trainer.add_callback(GreedyEval(r.writer, r.loaded.tokenizer, held_out, labels, args.batch_size, chat_kwargs,
                                        every=args.eval_steps))
    if distributed.is_main():
        trainer.add_callback(LittleSignal(args.eval_steps))
    info.update(shared_prefix=trainer.shared_prefix, lean_logps=trainer.lean_logps, lean_modules=trainer.lean_modules,
                checkpointed_layers=trainer.checkpointed_layers)
    return trainer


def describe(r: Any, trainer: Any) -> str:
    args, info = r.args, r.info
    funcs, weights = r.state["rewards"]
    named = " + ".join(f"{f.__name__}" + (f" x{w:g}" if w != 1 else "") for f, w in zip(funcs, weights))
    return (f"{info['architecture']} on {info['device']} ({info['precision']}): {len(r.data.train):,} prompts, "
            f"{args.num_generations} completions each of up to {trainer.args.max_completion_length} tokens, reward "
            f"{named}" + (", shared prefixes computed once per batch" if trainer.shared_prefix else ""))


def after(r: Any, trainer: Any, result: Any) -> None:
    result.final_eval.update(reward_curve(trainer.state.log_history))


def meta(r: Any) -> dict[str, Any]:
    args, data = r.args, r.data
    return {"dataset": data.name, "labels": list(data.labels), "template": data.spec.template if data.spec else None,
            "system_prompt": args.system_prompt, "use_lora": args.use_lora,
            "rewards": [f.__name__ for f in r.state["rewards"][0]]}


def reward_curve(history: list[dict[str, Any]]) -> dict[str, float]:
    """The mean reward over the first and the last tenth of the logged steps (at least one step each)."""
    rewards = [h["reward"] for h in history if "reward" in h]
    if not rewards:
        return {}
    tenth = max(len(rewards) // 10, 1)
    first, last = rewards[:tenth], rewards[-tenth:]
    return {"reward_first_tenth": sum(first) / len(first), "reward_last_tenth": sum(last) / len(last)}


def done(result: Any) -> str:
    curve = result.final_eval
    rise = (f", mean reward {curve['reward_first_tenth']:.3f} in the first tenth of steps -> "
            f"{curve['reward_last_tenth']:.3f} in the last") if "reward_first_tenth" in curve else ""
    return driver.done(result, rise, f"  score it: lancy eval --model {result.run_dir}\n")


METHOD = Method(name="grpo", args=GRPOArgs, check=check, load_data=load_data, prepare=prepare,
                build=build, describe=describe, after=after, meta=meta, done=done, memory_rows="completions",
                model_as_checkpointed=True,
                help="Reinforcement learning with verifiable rewards: sample completions, score them, learn from the "
                     "better ones.")
