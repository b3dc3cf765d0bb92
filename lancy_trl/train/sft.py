"""`lancy sft`: load data, load model, build TRL's SFTTrainer, train, save. Resumable, logged, interruptible.

    result = run_sft(resolve(SFTArgs, flags={"max_steps": 20}), console)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lancy_trl import runs
from lancy_trl.config import RunnableArgs, SFTArgs
from lancy_trl.errors import LancyError
from lancy_trl.scale import engines
from lancy_trl.train import lifecycle
from lancy_trl.train.lifecycle import RunResult

SFTResult = RunResult  # the name earlier releases used


def default_packing(attention: str) -> bool:
    """Pack only where the attention kernel is varlen (flash-attention): TRL's packing flattens a whole batch into
    one row, so with sdpa every token attends over the batch's full length under a block mask, which cost more than
    the padding it saves on CPU (bench/sft_throughput.py; README, performance). Without packing, batches are grouped
    by length so that padding stays small.
    """
    return attention.startswith("flash_attention")


def default_pad_multiple(device: str) -> int | None:
    """Pad batch lengths to a multiple of 64 on CUDA only. Lengths grouped batch by batch give a new tensor shape at
    nearly every step; on a GPU each new shape costs allocator misses and kernel selection, which at small-model sizes
    outweigh the compute: on one H100, full fine-tuning of SmolLM2-135M ran 1.77x faster padded to multiples of 64
    (bench/sft_throughput.py; README, performance). On CPU the padding is compute, so none.
    """
    return 64 if device == "cuda" else None


def micro_batches(args: RunnableArgs) -> tuple[int, int]:
    """(examples per forward/backward, micro-batches per optimizer step) for `--batch-size` x `--gradient-accumulation-steps`.

    Whole batches by default. `--micro-batch-size` splits each batch into micro-batches (the largest divisor of the
    batch that fits): the same examples make each step (TRL groups lengths over the whole step) and the loss is
    normalised over all of the step's answer tokens, so the gradients are the batch's, for less activation memory at
    less speed. Lancy split LoRA batches on CPU into micro-batches of 4 by default until shared-prefix batches cut
    the activations: whole batches of 8 then measured 1.80 GB peak RSS against 2.32 GB for TRL's checkpointed
    defaults, at 1.6x the speed of micro-batches (README, performance).
    """
    micro = args.micro_batch_size or args.batch_size
    micro = max(d for d in range(1, min(micro, args.batch_size) + 1) if args.batch_size % d == 0)
    return micro, args.gradient_accumulation_steps * (args.batch_size // micro)


def private(args: RunnableArgs) -> bool:
    """Whether the run trains with differential privacy (lancy_trl/train/dp.py): the speed paths that mix examples
    or bypass per-example gradients are off (check_args refuses them by flag)."""
    return getattr(args, "dp_epsilon", None) is not None


def use_lean_activations(args: RunnableArgs, info: dict[str, Any]) -> bool:
    """Lean activations (lancy_trl/train/lean.py) where training runs in fp32: their backward does not follow autocast."""
    if private(args):
        return False
    if args.lean_activations and info["precision"] != "fp32":
        raise LancyError(f"--lean-activations needs fp32 training (this run is {info['precision']}): pass "
                         "--precision fp32 or drop --lean-activations")
    return info["precision"] == "fp32" if args.lean_activations is None else args.lean_activations


def use_shared_prefix(args: RunnableArgs, info: dict[str, Any]) -> bool:
    """Shared-prefix batches (lancy_trl/train/prefix.py) need transformers' SDPA attention, which they extend. On by
    default on CPU, where they were measured (README, performance); on a GPU each batch's packed length is a new shape
    (which `default_pad_multiple` avoids there) and the trade has not been measured, so there it is opt-in."""
    from lancy_trl.train.speed.prefix import MODEL_TYPES

    if private(args):
        return False
    sdpa = info["attn_implementation"] == "sdpa"
    if args.shared_prefix and not sdpa:
        raise LancyError(f"--shared-prefix needs SDPA attention (this run uses {info['attn_implementation']}): "
                         "pass --attn-implementation sdpa or drop --shared-prefix")
    family = info.get("model_type") in MODEL_TYPES
    if args.shared_prefix and not family:
        raise LancyError(f"--shared-prefix is written for {', '.join(MODEL_TYPES)} models (this is "
                         f"{info.get('model_type')}): drop --shared-prefix")
    return sdpa and family and info["device"] == "cpu" if args.shared_prefix is None else args.shared_prefix


def trainer_options(args: RunnableArgs, info: dict[str, Any]) -> dict[str, Any]:
    """LancySFTTrainer's own keyword arguments for a run (the bench builds lancy's trainer with the same)."""
    return {"checkpoint_layers": args.checkpoint_layers, "lean_activations": use_lean_activations(args, info),
            "shared_prefix": use_shared_prefix(args, info)}


def trainer_arguments(args: RunnableArgs, run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The TrainingArguments every lancy command sets alike (batches, schedule, precision, checkpoints, logging);
    each command's TRL config adds its own."""
    device, precision = info["device"], info["precision"]
    micro, accumulation = micro_batches(args)
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate or (2e-4 if args.use_lora else 2e-5),
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_ratio,
        weight_decay=args.weight_decay,
        seed=args.seed,
        data_seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        logging_steps=args.logging_steps or args.eval_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        report_to="none",  # lancy adds its own TensorBoard callback, writing into the run directory
        disable_tqdm=True,
        dataloader_num_workers=0,
        router_aux_loss_coef=getattr(args, "router_aux_loss_coef", None),  # MoE: TRL adds, weights and logs it
        ddp_find_unused_parameters=bool(info.get("experts")),  # dense: every trained weight has a gradient each step
        **engine_arguments(args),
    )


def engine_arguments(args: RunnableArgs) -> dict[str, Any]:
    """The TrainingArguments naming the DeepSpeed config file or the FSDP settings a run trains under."""
    deepspeed, fsdp = getattr(args, "deepspeed", None), getattr(args, "fsdp", None)
    if deepspeed:
        return {"deepspeed": str(engines.resolve(deepspeed))}
    return {"fsdp": True, "fsdp_config": engines.fsdp_config(fsdp)} if fsdp else {}


def to_trl_config(args: RunnableArgs, run_dir: Path, info: dict[str, Any], has_eval: bool) -> Any:
    """The one place where lancy's names map onto TRL's SFTConfig."""
    from trl import SFTConfig

    packing = default_packing(info["attn_implementation"]) if args.packing is None else args.packing
    packing = packing and not private(args)
    return SFTConfig(
        **trainer_arguments(args, run_dir, info),
        max_grad_norm=0.0 if private(args) else 1.0,  # under DP, opacus clips each example's gradient instead
        per_device_eval_batch_size=args.batch_size,
        max_length=args.max_length,
        packing=packing,
        packing_strategy="bfd",
        pad_to_multiple_of=args.pad_to_multiple_of or default_pad_multiple(info["device"]),
        train_sampling_strategy="random" if packing else "group_by_length",
        eval_packing=False,  # eval batches are examples, so --eval-max-batches means what it says
        prediction_loss_only=True,  # eval needs the loss, not every logit gathered
        completion_only_loss=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=args.eval_steps,
        dataset_num_proc=None,
    )


def run_sft(args: SFTArgs, console: Any, flags: dict[str, Any] | None = None) -> RunResult:
    from lancy_trl.data.build import build_data

    args, run_dir, checkpoint = lifecycle.prepare(args, flags or {}, console, SFTArgs, "sft")
    data, source, loaded = lifecycle.setup(args, console, run_dir, checkpoint, build_data, "sft")
    with console.status("Counting tokens..."):
        data_report = fit_to_model(data, loaded.tokenizer, args)
    plan = None
    if private(args):
        from lancy_trl.privacy.dp import keep_plan, make_plan

        plan = make_plan(args, len(data.train))
        plan = keep_plan(run_dir, plan) if checkpoint else plan
    extra = {"data": {**data.stats, **data_report}, "chat_template_kwargs": data_report["chat_template_kwargs"],
             "template": data.spec.template if data.spec else None, **({"dp": plan.record()} if plan else {})}
    run_dir = lifecycle.open_run(args, "sft", run_dir, checkpoint, source, loaded, data, extra)
    with lifecycle.recorded(run_dir, "sft"):
        return _train(args, run_dir, checkpoint, data, loaded, console, data_report, plan)


def fit_to_model(data: Any, tokenizer: Any, args: RunnableArgs) -> dict[str, Any]:
    """Tokenizer-dependent data checks, done once before training: the thinking-mode switch, examples whose answer
    truncation would remove (dropped, counted), tokens per source, and label words sharing a first token."""
    from lancy_trl.data.tokens import chat_kwargs, fit, fold_system, label_collisions, refuses_system

    kwargs = chat_kwargs(tokenizer, args.enable_thinking)
    if refuses_system(tokenizer, kwargs):
        for split in ("train", "eval", "test"):
            ds = getattr(data, split)
            if ds is not None and "prompt" in ds.column_names:
                setattr(data, split, ds.map(lambda r: {"prompt": fold_system(r["prompt"])}))
        data.notes.append("the chat template takes no system message: the system prompt is folded into the first user "
                          "turn (in training and eval alike)")
    if kwargs:
        for split in ("train", "eval"):
            ds = getattr(data, split)
            if ds is not None and "prompt" in ds.column_names:
                setattr(data, split, ds.add_column("chat_template_kwargs", [kwargs] * len(ds)))
    data.train, report = fit(data.train, tokenizer, args.max_length, kwargs, "training")
    if data.eval is not None:
        data.eval, eval_report = fit(data.eval, tokenizer, args.max_length, kwargs, "evaluation")
        for key in ("dropped_truncated", "dropped_answer_cut"):
            if eval_report.get(key):
                report[f"eval_{key}"] = eval_report[key]
    for source, n in report.get("dropped_truncated", {}).items():
        data.notes.append(f"{source}: dropped {n} example(s) whose prompt fills --max-length {args.max_length}")
    for source, n in report.get("dropped_answer_cut", {}).items():
        data.notes.append(f"{source}: dropped {n} example(s) whose answer --max-length {args.max_length} would cut "
                          "(raise --max-length to keep them)")
    for words in label_collisions(tokenizer, list(data.labels), kwargs):
        data.notes.append(f"label words {', '.join(words)} start with the same token; `lancy eval --method score` "
                          "still tells them apart, generation must get past it")
    return {"train_tokens": report, "chat_template_kwargs": kwargs}


def _report_data(data: Any, report: dict[str, Any], console: Any, writer: Any) -> None:
    """Print what the data became (notes, the mixture as realised) and log it to TensorBoard."""
    lifecycle.print_notes(data, console)
    tokens = report["train_tokens"]
    mixture = data.stats.get("mixture")
    if mixture:
        from rich.table import Table

        table = Table(title="Mixture as realised")
        for col in ("source", "rate", "examples", "tokens", "source rows", "epochs of source"):
            table.add_column(col)
        lines = ["| source | rate | examples | tokens |", "|---|---|---|---|"]
        for name, m in mixture.items():
            n, t = tokens["examples"].get(name, 0), tokens["tokens"].get(name, 0)
            m.update(examples_after_checks=n, tokens=t)
            table.add_row(name, f"{m['rate']:.3f}", f"{n:,}", f"{t:,}", f"{m['source_examples']:,}", f"{m['epochs_of_source']:.2f}")
            lines.append(f"| {name} | {m['rate']:.3f} | {n} | {t} |")
            writer.add_scalar(f"data/examples/{name}", n, 0)
            writer.add_scalar(f"data/tokens/{name}", t, 0)
        console.print(table)
        writer.add_text("data/mixture", "\n".join(lines), 0)
    writer.add_scalar("data/train_tokens", sum(tokens["tokens"].values()), 0)
    writer.add_scalar("data/train_examples", sum(tokens["examples"].values()), 0)


def _train(args, run_dir, checkpoint, data, loaded, console, data_report, plan) -> RunResult:
    from transformers import PrinterCallback

    from lancy_trl.scale import distributed
    from lancy_trl.train.callbacks import RunFacts, ScoreEval
    from lancy_trl.train.speed.prefix import MODEL_TYPES
    from lancy_trl.train.trainer import LancySFTTrainer

    info, device = loaded.info, loaded.info["device"]
    trl_config = to_trl_config(args, run_dir, info, data.eval is not None)
    peft_config = lifecycle.lora_config(args, loaded.model, info)
    eval_ds = data.eval
    if eval_ds is not None and len(eval_ds) > args.eval_max_batches * args.batch_size:  # a seeded sample, not the first rows
        eval_ds = eval_ds.shuffle(seed=args.seed).select(range(args.eval_max_batches * args.batch_size))
    writer, interrupt, callbacks = lifecycle.observers(args, run_dir, console)
    _report_data(data, data_report, console, writer)
    runs.update(run_dir, data={**data.stats, **data_report})
    options: dict[str, Any] = trainer_options(args, info)
    trainer_cls: Any = LancySFTTrainer
    if plan is not None:
        from lancy_trl.train.dp_trainer import DPTrainer

        trainer_cls, options["dp"] = DPTrainer, plan
    with console.status("Tokenizing..."):
        trainer = trainer_cls(
            model=loaded.model, args=trl_config, train_dataset=data.train, eval_dataset=eval_ds,
            processing_class=loaded.tokenizer, peft_config=peft_config, **options,
            callbacks=callbacks,
        )
    # rank 0 scores alone; not when weights are sharded over several processes: its forward would wait on the others
    alone = distributed.world_size() == 1 or not engines.sharded_weights(args)
    if data.labels and eval_ds is not None and "prompt" in eval_ds.column_names and distributed.is_main() and alone:
        trainer.add_callback(ScoreEval(writer, loaded.tokenizer, eval_ds, list(data.labels), args.batch_size,
                                       data_report["chat_template_kwargs"]))
    trainer.remove_callback(PrinterCallback)  # the progress bar shows the loss; every record goes to the log file
    model: Any = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info.update(trainable_params=trainable, packing=trl_config.packing, pad_to_multiple_of=trl_config.pad_to_multiple_of,
                micro_batch_size=trl_config.per_device_train_batch_size, checkpointed_layers=trainer.checkpointed_layers,
                lean_modules=trainer.lean_modules, shared_prefix=trainer.shared_prefix,
                loss_path="compact" if plan is None and trainer._compact(model) else "trl")
    facts = {**{k: v for k, v in info.items() if v is not None}, **{f"version_{k}": v for k, v in lifecycle.versions().items()}}
    trainer.add_callback(RunFacts(writer, facts, {"trainable_params": trainable, "total_params": info["total_params"]}))
    runs.update(run_dir, model_info=info)
    console.print(
        f"[bold]{run_dir}[/]\n  {info['architecture']} on {device} ({info['precision']}, {info['attn_implementation']}), "
        f"{trainable:,} of {info['total_params']:,} parameters trained, {len(data.train)} examples, "
        f"packing {'on' if trl_config.packing else 'off'}"
        + (", shared prefixes computed once per batch" if trainer.shared_prefix else "")
        + (f", shared-prefix batches off (written for {', '.join(MODEL_TYPES)}; this is {info.get('model_type')})"
           if args.shared_prefix is None and device == "cpu" and info.get("model_type") not in MODEL_TYPES else "")
        + (f", batches of {args.batch_size} run as micro-batches of {trl_config.per_device_train_batch_size}"
           if trl_config.per_device_train_batch_size < args.batch_size else "")
        + lifecycle.notes(args, info, trainer)
    )
    if plan is not None:
        console.print(f"  differentially private: epsilon {plan.epsilon:g} at delta {plan.delta:.2g} over {plan.steps} "
                      f"steps; Poisson batches of {args.batch_size} on average (q = {plan.sample_rate:.4g}), each "
                      f"example's gradient clipped to {plan.max_grad_norm:g}, noise x{plan.noise_multiplier:.3f}; "
                      "packing, shared prefixes and lean activations off", highlight=False)
    result = lifecycle.train(trainer, run_dir, checkpoint, interrupt, console, "sft")
    if plan is not None:
        spent = plan.spent(result.steps)
        runs.update(run_dir, dp={**plan.record(), "steps_taken": result.steps, "epsilon_spent": spent})
        console.print(f"  privacy spent: epsilon {spent:.3g} at delta {plan.delta:.2g} after {result.steps} steps",
                      highlight=False)
    if result.status == "complete":
        meta = {"dataset": data.name, "labels": list(data.labels), "template": data.spec.template if data.spec else None,
                "system_prompt": args.system_prompt, "use_lora": args.use_lora, "enable_thinking": args.enable_thinking}
        lifecycle.finish(trainer, result, meta)
    writer.close()
    return result
