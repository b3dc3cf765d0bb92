"""`lancy sft`: supervised fine-tuning on chat rows, loss on the answer only (TRL's SFTTrainer, with lancy's compact
loss and shared-prefix batches); `--dp-epsilon` trains it with differential privacy.

    lancy sft                                        # embedded demo: finance sentiment, SmolLM2-135M, LoRA
    lancy sft --model Qwen/Qwen3-0.6B --dataset my_data.jsonl --max-steps 200
    lancy sft --config recipes/finance_sentiment.yaml --learning-rate 1e-4
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lancy_trl.config import CanaryArgs, DataArgs, DPArgs, ModelArgs, RunArgs, TrainArgs
from lancy_trl.train import arguments, driver
from lancy_trl.train.methods import Method


@dataclass
class SFTArgs(ModelArgs, DataArgs, TrainArgs, RunArgs, CanaryArgs, DPArgs):
    """`lancy sft`: supervised fine-tuning with completion-only loss."""

    @staticmethod
    def implied(values: dict[str, Any]) -> dict[str, Any]:
        """DP-SGD's own defaults under --dp-epsilon (lancy_trl/privacy/dp.py RECIPE), where no flag or YAML key set
        them."""
        if values.get("dp_epsilon") is None:
            return {}
        from lancy_trl.privacy.dp import RECIPE

        return {k: v for k, v in RECIPE.items() if k not in values}

    def problems(self) -> list[str]:
        if self.dp_epsilon is None:
            return []
        from lancy_trl.privacy.dp import check_args

        return check_args(self)


def load_data(args: SFTArgs) -> Any:
    from lancy_trl.data.build import build_data

    return build_data(args)


def prepare(r: Any) -> dict[str, Any]:
    """The tokenizer's checks on the rows, and a private run's plan (its noise for the epsilon asked)."""
    from lancy_trl.data.tokens import fit_to_model

    args, data = r.args, r.data
    with r.console.status("Counting tokens..."):
        r.report = fit_to_model(data, r.loaded.tokenizer, args)
    record = {"data": {**data.stats, **r.report}, "chat_template_kwargs": r.report["chat_template_kwargs"],
              "template": data.spec.template if data.spec else None}
    if arguments.private(args):
        from lancy_trl.privacy.dp import keep_plan, make_plan

        plan = make_plan(args, len(data.train))
        r.state["dp"] = keep_plan(r.run_dir, plan) if r.checkpoint else plan
        record["dp"] = r.state["dp"].record()
        from lancy_trl.privacy.dp import too_noisy

        warning = too_noisy(r.state["dp"], arguments.lora_size(args, r.loaded.model), args.batch_size)
        if warning:
            r.console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    return record


def build(r: Any) -> Any:
    """LancySFTTrainer (DPTrainer when private), scoring the label words at each evaluation of a classification run."""
    from lancy_trl.scale import distributed, engines
    from lancy_trl.train.callbacks import ScoreEval
    from lancy_trl.train.trainer import LancySFTTrainer

    args, data, info = r.args, r.data, r.info
    config = arguments.sft_config(args, r.run_dir, info, has_eval=data.eval is not None)
    eval_ds = arguments.eval_subset(args, data.eval)
    options: dict[str, Any] = arguments.trainer_options(args, info)
    trainer_cls: Any = LancySFTTrainer
    if "dp" in r.state:
        from lancy_trl.train.dp_trainer import DPTrainer

        trainer_cls, options["dp"] = DPTrainer, r.state["dp"]
    with r.console.status("Tokenizing..."):
        trainer = trainer_cls(model=r.loaded.model, args=config, train_dataset=data.train, eval_dataset=eval_ds,
                              processing_class=r.loaded.tokenizer,
                              peft_config=arguments.lora_config(args, r.loaded.model, info), **options,
                              callbacks=r.callbacks)
    # rank 0 scores alone; not when weights are sharded over several processes: its forward would wait on the others
    alone = distributed.world_size() == 1 or not engines.sharded_weights(args)
    if data.labels and eval_ds is not None and "prompt" in eval_ds.column_names and distributed.is_main() and alone:
        trainer.add_callback(ScoreEval(r.writer, r.loaded.tokenizer, eval_ds, list(data.labels), args.batch_size,
                                       r.report["chat_template_kwargs"]))
    info.update(packing=config.packing, pad_to_multiple_of=config.pad_to_multiple_of,
                micro_batch_size=config.per_device_train_batch_size, checkpointed_layers=trainer.checkpointed_layers,
                lean_modules=trainer.lean_modules, shared_prefix=trainer.shared_prefix,
                loss_path="compact" if "dp" not in r.state and trainer._compact(trainer.model) else "trl")
    return trainer


def describe(r: Any, trainer: Any) -> str:
    from lancy_trl.train.speed.prefix import MODEL_TYPES

    args, info, device = r.args, r.info, r.info["device"]
    config = trainer.args
    text = (f"{info['architecture']} on {device} ({info['precision']}, {info['attn_implementation']}), "
            f"{info['trainable_params']:,} of {info['total_params']:,} parameters trained, {len(r.data.train)} examples, "
            f"packing {'on' if config.packing else 'off'}"
            + (", shared prefixes computed once per batch" if trainer.shared_prefix else "")
            + (f", shared-prefix batches off (written for {', '.join(MODEL_TYPES)}; this is {info.get('model_type')})"
               if args.shared_prefix is None and device == "cpu" and info.get("model_type") not in MODEL_TYPES else "")
            + (f", batches of {args.batch_size} run as micro-batches of {config.per_device_train_batch_size}"
               if config.per_device_train_batch_size < args.batch_size else ""))
    plan = r.state.get("dp")
    if plan is not None:
        chosen = getattr(args, "implied", {})
        if chosen:
            text += ("\n  DP-SGD's defaults (any flag overrides): " + ", ".join(f"--{k.replace('_', '-')} {v:g}"
                                                                             for k, v in chosen.items())
                     + (f", LoRA on {info['lora_target_modules']}" if not args.lora_target_modules else ""))
        text += (f"\n  differentially private: epsilon {plan.epsilon:g} at delta {plan.delta:.2g} over {plan.steps} "
                 f"steps; Poisson batches of {args.batch_size} on average (q = {plan.sample_rate:.4g}), each "
                 f"example's gradient clipped to {plan.max_grad_norm:g}, noise x{plan.noise_multiplier:.3f}; "
                 + ("" if plan.train_lora_a else "LoRA's B matrices trained, A frozen at its random start; ") +
                 "packing, shared prefixes and lean activations off")
    return text


def after(r: Any, trainer: Any, result: Any) -> None:
    """A private run's epsilon spent, over every step it took (a resumed run's earlier ones too)."""
    plan = r.state.get("dp")
    if plan is None:
        return
    from lancy_trl import runs

    spent = plan.spent(result.steps)
    runs.update(r.run_dir, dp={**plan.record(), "steps_taken": result.steps, "epsilon_spent": spent})
    r.console.print(f"  privacy spent: epsilon {spent:.3g} at delta {plan.delta:.2g} after {result.steps} steps",
                    highlight=False)


def meta(r: Any) -> dict[str, Any]:
    args, data = r.args, r.data
    return {"dataset": data.name, "labels": list(data.labels), "template": data.spec.template if data.spec else None,
            "system_prompt": args.system_prompt, "use_lora": args.use_lora, "enable_thinking": args.enable_thinking}


def done(result: Any) -> str:
    losses = f", train loss {result.train_loss:.4f}" + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss else "")
    return driver.done(result, losses)


METHOD = Method(name="sft", args=SFTArgs, load_data=load_data, prepare=prepare, build=build, describe=describe,
                after=after, meta=meta, done=done,
                model_as_checkpointed=True,
                help="Fine-tune a model on chat-style examples (loss on the answer only); with no options, the "
                     "embedded demo.")
