"""What every training method sets alike: the TrainingArguments (batches, schedule, precision, checkpoints, logging,
engines), the LoRA config, and which of lancy's speed paths a run takes. Each method's TRL config starts from
`trainer_arguments` and adds its own (lancy_trl/train/methods/).

    config = SFTConfig(**trainer_arguments(args, run_dir, info), max_length=args.max_length, ...)
    trainer = LancySFTTrainer(..., peft_config=lora_config(args, model, info), **trainer_options(args, info))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError
from lancy_trl.scale import engines
from lancy_trl.train import trackers


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


def micro_batches(args: Any) -> tuple[int, int]:
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


def private(args: Any) -> bool:
    """Whether the run trains with differential privacy (lancy_trl/privacy/dp.py): the speed paths that mix examples
    or bypass per-example gradients are off (check_args refuses them by flag)."""
    return getattr(args, "dp_epsilon", None) is not None


def use_lean_activations(args: Any, info: dict[str, Any]) -> bool:
    """Lean activations (lancy_trl/train/speed/lean.py) where training runs in fp32: their backward does not follow autocast."""
    if private(args):
        return False
    if args.lean_activations and info["precision"] != "fp32":
        raise LancyError(f"--lean-activations needs fp32 training (this run is {info['precision']}): pass "
                         "--precision fp32 or drop --lean-activations")
    return info["precision"] == "fp32" if args.lean_activations is None else args.lean_activations


def use_shared_prefix(args: Any, info: dict[str, Any]) -> bool:
    """Shared-prefix batches (lancy_trl/train/speed/prefix.py) need transformers' SDPA attention, which they extend. On by
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


def trainer_options(args: Any, info: dict[str, Any]) -> dict[str, Any]:
    """LancySFTTrainer's own keyword arguments for a run (the bench builds lancy's trainer with the same)."""
    return {"checkpoint_layers": args.checkpoint_layers, "lean_activations": use_lean_activations(args, info),
            "shared_prefix": use_shared_prefix(args, info)}


def trainer_arguments(args: Any, run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The TrainingArguments every lancy command sets alike (batches, schedule, precision, checkpoints, logging);
    each command's TRL config adds its own."""
    device, precision = info["device"], info["precision"]
    micro, accumulation = micro_batches(args)
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        run_name=run_dir.name,  # what --report-to's trackers call the run
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
        disable_tqdm=True,
        dataloader_num_workers=0,
        router_aux_loss_coef=getattr(args, "router_aux_loss_coef", None),  # MoE: TRL adds, weights and logs it
        ddp_find_unused_parameters=bool(info.get("experts")),  # dense: every trained weight has a gradient each step
        **engine_arguments(args),
        **trackers.trainer_fields(args),  # lancy adds its own TensorBoard callback, writing into the run
    )


def sft_config(args: Any, run_dir: Path, info: dict[str, Any], has_eval: bool) -> Any:
    """The one place where lancy's names map onto TRL's SFTConfig (`lancy sft`; `lancy pretrain` packs on top)."""
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


def engine_arguments(args: Any) -> dict[str, Any]:
    """The TrainingArguments naming the DeepSpeed config file or the FSDP settings a run trains under."""
    deepspeed, fsdp = getattr(args, "deepspeed", None), getattr(args, "fsdp", None)
    if deepspeed:
        engines.skip_inference_comm_build()
        return {"deepspeed": str(engines.resolve(deepspeed))}
    return {"fsdp": True, "fsdp_config": engines.fsdp_config(fsdp)} if fsdp else {}


def lora_config(args: Any, model: Any, info: dict[str, Any]) -> Any:
    """peft's LoraConfig from the shared LoRA options (every linear layer but the LM head by default), or None."""
    if not args.use_lora:
        return None
    if hasattr(model, "peft_config"):  # --model runs/<LoRA run>: its adapter goes on training, with its own settings
        config = model.peft_config["default"]
        info["lora_target_modules"] = ",".join(sorted(config.target_modules))
        info["lora_continued_from"] = info.get("adapter")
        return None
    from peft import LoraConfig

    targets = target_modules(args, model)
    info["lora_target_modules"] = ",".join(targets)
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def target_modules(args: Any, model: Any) -> list[str]:
    """--lora-target-modules, else every linear layer but the LM head; under --dp-epsilon the attention's query and
    value projections where the model has them (few trained weights: less noise in all; privacy/dp.py RECIPE)."""
    from lancy_trl.scale.moe import lora_targets

    if args.lora_target_modules:
        return list(args.lora_target_modules)
    every = lora_targets(model)
    if private(args):
        from lancy_trl.privacy.dp import TARGETS

        return [t for t in TARGETS if t in every] or every
    return every


def lora_size(args: Any, model: Any) -> int:
    """The weights LoRA will train on `model`: r x (inputs + outputs) of each adapted linear layer, r x outputs when
    a private run trains B alone (a LoRA run continued: its adapter's own size)."""
    if hasattr(model, "peft_config"):
        return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    targets = set(target_modules(args, model))
    a_too = not private(args) or args.dp_train_lora_a  # a private run trains B alone unless asked
    return sum(args.lora_r * (m.in_features * a_too + m.out_features) for name, m in model.named_modules()
               if name.rsplit(".", 1)[-1] in targets and hasattr(m, "in_features"))


def check_targets(targets: list[str], model: Any) -> None:
    """Every --lora-target-modules name must match a module of the model; else list the linear layers it has."""
    from lancy_trl.scale.moe import lora_targets

    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    names = [t for t in targets if t != "all-linear" and not set(t) & set("*+?[]()|^$\\")]  # peft's keyword and regexes pass
    missing = [t for t in names if t not in leaves and not any(n.endswith("." + t) for n, _ in model.named_modules())]
    if missing:
        raise LancyError(f"--lora-target-modules {', '.join(missing)}: no such module in this model; its linear layers "
                         f"are {', '.join(lora_targets(model))}")


def eval_subset(args: Any, ds: Any) -> Any:
    """The held-out rows an in-training evaluation scores: at most --eval-max-batches batches, a seeded sample (a file
    sorted by label would give one class from its first rows)."""
    if ds is not None and len(ds) > args.eval_max_batches * args.batch_size:
        return ds.shuffle(seed=args.seed).select(range(args.eval_max_batches * args.batch_size))
    return ds
