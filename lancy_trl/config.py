"""Typed configs, one per command: YAML file < CLI flags, every problem reported at once.

Each field is documented once, here; the CLI's `--help` is generated from these docs.

    args = resolve(SFTArgs, yaml_path="recipes/finance_sentiment.yaml", flags={"learning_rate": 1e-4})
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError, did_you_mean


def opt(default: Any, help: str, *, group: str = "Training", choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its one description, its help panel and, for strings, its valid choices."""
    meta = {"help": help, "group": group, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
ATTENTIONS = ("auto", "eager", "sdpa", "flash_attention_2")


@dataclass
class ModelArgs:
    model: str = opt("smollm2-135m-instruct", "Catalog name, hub id, local directory or .gguf file.", group="Model")
    device: str = opt("auto", "Where to train: auto picks cuda > mps > cpu.", group="Model", choices=DEVICES)
    precision: str = opt(
        "auto", "Training precision; auto is bf16 on CUDA GPUs that support it, fp32 elsewhere.",
        group="Model", choices=PRECISIONS,
    )
    attn_implementation: str = opt(
        "auto", "Attention kernel; auto is flash_attention_2 on CUDA when installed, eager on MPS, sdpa otherwise.",
        group="Model", choices=ATTENTIONS,
    )
    trust_remote_code: bool = opt(False, "Run code shipped with a hub model (only for models you trust).", group="Model")
    use_lora: bool = opt(True, "Train LoRA adapters; --no-use-lora fine-tunes every weight.", group="LoRA")
    lora_r: int = opt(16, "LoRA rank.", group="LoRA")
    lora_alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r).", group="LoRA")
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input (0: no copy of each input is kept for backward).", group="LoRA")
    lora_target_modules: list[str] = opt(
        [], "Module names to adapt; default: every linear layer but the LM head.", group="LoRA"
    )
    load_in_4bit: bool = opt(False, "QLoRA: the frozen base in 4-bit NF4 with double quantization (bitsandbytes; "
                             "CUDA, or CPU with bitsandbytes 0.50+), LoRA adapters trained on top.", group="LoRA")
    load_in_8bit: bool = opt(False, "The frozen base in 8-bit (bitsandbytes LLM.int8()), LoRA adapters on top.",
                             group="LoRA")
    router_aux_loss_coef: float | None = opt(None, "Mixture-of-experts models: weight of the router's load-balancing "
                                             "loss added to the training loss (default: the model config's own; 0 "
                                             "turns it off).", group="Model")


@dataclass
class DataArgs:
    dataset: list[str] = opt(
        ["finsent"], "Registry name, hub id or local file (.jsonl/.json/.csv/.parquet); repeat for a mixture.",
        group="Data",
    )
    dataset_config: list[str] = opt([], "Hub config per --dataset ('None' for none).", group="Data")
    data_files: list[str] = opt([], "Local files in the hub schema: PATH or SPLIT=PATH.", group="Data")
    mixture_rates: list[float] = opt([], "Sampling rate per --dataset, positive and summing to 1.", group="Data")
    system_prompt: str | None = opt(None, "Replace the template's system message.", group="Data")
    eval_fraction: float = opt(
        0.1, "Held-out share of train used for evaluation when a dataset has no validation split.", group="Data"
    )
    max_examples: int | None = opt(
        None, "Use at most this many training examples (quick trials; rows streamed from huge corpora).", group="Data"
    )
    enable_thinking: bool = opt(
        False, "Let models whose chat template has a thinking mode (Qwen3) think before answering.", group="Data"
    )
    redact_pii: bool = opt(
        False, "Replace e-mails, phones, IBANs, cards, SSNs, IPs, API keys and crypto addresses in the training and "
        "held-out text with typed placeholders (<EMAIL>, <IBAN>, ...); the run records counts per kind, never values "
        "(`lancy datasets scan` shows what would be replaced).", group="Data",
    )


@dataclass
class TrainArgs:
    max_steps: int = opt(-1, "Stop after this many optimizer steps (-1: run the epochs).")
    num_train_epochs: float = opt(2.0, "Passes over the training data.")
    batch_size: int = opt(8, "Examples per device per step (packed rows when packing).")
    gradient_accumulation_steps: int = opt(1, "Batches per optimizer step.")
    micro_batch_size: int | None = opt(
        None, "Examples per forward/backward pass; each batch is split into micro-batches whose gradients add up to "
        "the batch's (less activation memory, less speed). Default: the whole batch."
    )
    max_length: int = opt(256, "Longest tokenized sequence; with packing, the packed row length.")
    learning_rate: float | None = opt(None, "Peak learning rate; default 2e-4 with LoRA, 2e-5 for full fine-tuning.")
    warmup_ratio: float = opt(0.05, "Share of steps spent warming up the learning rate.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    seed: int = opt(42, "Seed for data order, held-out split, mixture sampling and initialisation.")
    packing: bool | None = opt(
        None, "Pack examples into rows with no cross-example attention; default: on where measured faster."
    )
    pad_to_multiple_of: int | None = opt(
        None, "Pad each batch's length up to a multiple of N; default 64 on CUDA (few distinct shapes, which the "
        "GPU's allocator and kernels reuse), none on CPU (padding is compute there)."
    )
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward to save memory.")
    lean_activations: bool | None = opt(
        None, "Keep fewer activations for backward in Llama-style MLPs and RMSNorms (cheap elementwise recompute, "
        "same gradients) and add the embedding's and LM head's gradients in place; default: on when training in fp32."
    )
    shared_prefix: bool | None = opt(
        None, "Compute the tokens all examples of a batch start with (chat header, system prompt, instruction) once "
        "per batch instead of once per example; same loss and gradients. Default: on for CPU runs with SDPA attention."
    )
    checkpoint_layers: float = opt(
        0.0, "Share of decoder layers whose activations are recomputed in backward (0.5: every other layer); "
        "a memory/compute dial below --gradient-checkpointing, which is all of them."
    )
    logging_steps: int | None = opt(None, "Log every N steps (default: --eval-steps).", group="Logging")
    eval_steps: int = opt(20, "Evaluate every N steps.", group="Logging")
    eval_max_batches: int = opt(8, "Evaluate on at most this many batches.", group="Logging")
    save_steps: int = opt(50, "Save a resumable checkpoint every N steps.", group="Logging")
    save_total_limit: int = opt(2, "Keep at most this many checkpoints.", group="Logging")
    save_minutes: float = opt(10.0, "Also save a checkpoint after this many minutes of training since the last one "
                              "(0: steps only), so a killed run loses minutes.", group="Logging")
    report_to: list[str] = opt(["tensorboard"], "Trackers to log to, through the Trainer's integrations: tensorboard "
                               "(into the run), mlflow (an SQLite database in the run unless MLFLOW_TRACKING_URI is "
                               "set), trackio (a database beside the runs unless TRACKIO_DIR is set), none.",
                               group="Logging")


@dataclass
class RunArgs:
    output_dir: str = opt("runs", "Parent folder of run directories.", group="Run")
    run_dir: str | None = opt(None, "Exact run directory (with --resume: the run to continue).", group="Run")
    run_name: str | None = opt(None, "Name the run directory yourself instead of the generated name.", group="Run")
    resume: str | None = opt(None, "'latest' (the newest resumable run) or a checkpoint/run path: continue a run "
                             "where it stopped.", group="Run")
    allow_data_change: bool = opt(False, "Resume even though the training data differ from the run's.", group="Run")
    offline: bool = opt(False, "No byte leaves the machine: hub and PyPI fetches refused, library telemetry off, and any "
                        "connection to a non-loopback address stops the run (also implied by HF_HUB_OFFLINE=1).",
                        group="Run")
    num_processes: int = opt(1, "Train with N processes on this machine: the command re-launches itself under torch's "
                             "launcher (torchrun), one process per GPU on CUDA, gloo on CPU; each step's global batch "
                             "is --batch-size x N x --gradient-accumulation-steps.", group="Run")
    multi_gpu: bool = opt(False, "One process per visible CUDA GPU (--num-processes set to their count).", group="Run")
    deepspeed: str | None = opt(None, "Train under DeepSpeed: a shipped config (zero1, zero2, zero3, zero3_offload; "
                                "`lancy configs list`) or your own JSON file; its \"auto\" values come from lancy's "
                                "flags.", group="Run")
    fsdp: str | None = opt(None, "Train under PyTorch FSDP on GPUs (weights, gradients and optimizer state sharded): "
                           "bare --fsdp for the shipped full-shard config (`lancy configs path fsdp`), or your own "
                           "accelerate config (.yaml) or fsdp_config (.json).", group="Run")


@dataclass
class CanaryArgs:
    canaries: int = opt(0, "Plant this many random secret-like sentences (\"my account PIN is 4821-93\") among the "
                        "training rows, kept in the run's canaries.json; `lancy eval --model RUN --canaries` then "
                        "measures how much of them the model memorised.", group="Privacy")
    canary_repeats: int = opt(1, "Times each canary is planted (memorisation grows with repetition).", group="Privacy")


@dataclass
class DPArgs:
    dp_epsilon: float | None = opt(
        None, "Train LoRA with differential privacy (DP-SGD through opacus): each example's gradient clipped, noise "
        "added so that the whole run spends at most this epsilon; the epsilon spent is logged and kept in run.json.",
        group="Privacy",
    )
    dp_delta: float | None = opt(None, "The delta of the (epsilon, delta) guarantee; default 1 / training examples.",
                                 group="Privacy")
    dp_max_grad_norm: float = opt(1.0, "Each example's gradient is clipped to this L2 norm before noise is added.",
                                  group="Privacy")
    dp_train_lora_a: bool = opt(False, "Under --dp-epsilon, train LoRA's A matrices too (by default only the "
                                "zero-initialised B matrices train, A keeping its random start: half the weights "
                                "the noise lands on, FFA-LoRA).", group="Privacy")


# ---------------------------------------------------------------------------------------------
# Resolving a config from defaults, a YAML file and flags


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _coerce(value: Any, tp: Any) -> Any:
    """Convert a YAML value to the field's type, or raise ValueError with what was expected."""
    tp, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ValueError("may not be empty")
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        values = value if isinstance(value, list) else [value]
        return [_coerce(v, inner) for v in values]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-4 as a string
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected text, got {value!r}")
        return str(value)
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LancyError(f"config file {str(path)!r} not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LancyError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix the file or drop --config") from None
    if not isinstance(data, dict):
        raise LancyError(f"{path} must hold a mapping of option names to values, e.g. 'max_steps: 100'")
    return data


def resolve(cls, yaml_values: dict[str, Any] | None = None, flags: dict[str, Any] | None = None, source: str = "config"):
    """Build `cls` from defaults < YAML values < explicit flags; report every problem at once."""
    types_ = field_types(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, raw in (yaml_values or {}).items():
        name = str(key).replace("-", "_")
        if name not in types_:
            problems.append(f"unknown key {key!r} in {source}{did_you_mean(name, types_)}")
            continue
        try:
            values[name] = _coerce(raw, types_[name])
        except ValueError as e:
            problems.append(f"key {key!r} in {source}: {e}")
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    if problems:
        raise LancyError("; ".join(problems))
    implied = cls.implied(values) if hasattr(cls, "implied") else {}  # defaults that follow from other settings
    args = cls(**{**implied, **values})
    args.implied = implied  # what lancy chose, for the run's summary
    validate(args)
    return args


def validate(args) -> None:
    """Check values against their choices and ranges; raise once with every problem, naming the flag."""
    problems = []
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            problems.append(f"--{flag(f.name)} must be one of {', '.join(choices)} (got {value!r})")
    positive = ("batch_size", "gradient_accumulation_steps", "micro_batch_size", "pad_to_multiple_of", "max_new_tokens", "limit",
                "max_length", "eval_steps", "eval_max_batches", "save_steps", "lora_r", "lora_alpha", "save_total_limit",
                "logging_steps", "max_examples", "num_processes")
    for name in positive:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            problems.append(f"--{flag(name)} must be positive (got {value})")
    if getattr(args, "learning_rate", None) is not None and args.learning_rate <= 0:
        problems.append(f"--learning-rate must be positive (got {args.learning_rate})")
    if hasattr(args, "lora_dropout") and not 0 <= args.lora_dropout < 1:
        problems.append(f"--lora-dropout must be in [0, 1) (got {args.lora_dropout})")
    if hasattr(args, "eval_fraction") and not 0 <= args.eval_fraction < 1:
        problems.append(f"--eval-fraction must be in [0, 1) (got {args.eval_fraction})")
    if hasattr(args, "checkpoint_layers") and not 0 <= args.checkpoint_layers <= 1:
        problems.append(f"--checkpoint-layers must be in [0, 1] (got {args.checkpoint_layers})")
    if getattr(args, "max_steps", -1) == 0 or getattr(args, "max_steps", -1) < -1:
        problems.append(f"--max-steps must be positive, or -1 to run the epochs (got {args.max_steps})")
    if getattr(args, "num_train_epochs", 1) <= 0:
        problems.append(f"--num-train-epochs must be positive (got {args.num_train_epochs})")
    if (getattr(args, "router_aux_loss_coef", None) or 0) < 0:
        problems.append(f"--router-aux-loss-coef must be 0 (off) or positive (got {args.router_aux_loss_coef})")
    if getattr(args, "save_minutes", 0) < 0:
        problems.append(f"--save-minutes must be 0 (off) or positive (got {args.save_minutes})")
    for bits in (4, 8):
        if getattr(args, f"load_in_{bits}bit", False) and not getattr(args, "use_lora", True):
            problems.append(f"--load-in-{bits}bit trains LoRA adapters on a frozen {bits}-bit base: drop --no-use-lora")
    if getattr(args, "load_in_4bit", False) and getattr(args, "load_in_8bit", False):
        problems.append("--load-in-4bit and --load-in-8bit exclude each other: keep one")
    problems += check_engine(args)
    problems += args.problems() if hasattr(args, "problems") else []  # a method's own (sft: --dp-epsilon's)
    if problems:
        raise LancyError("; ".join(problems))


def check_engine(args) -> list[str]:
    """--deepspeed and --fsdp: a config that exists and reads, DeepSpeed installed, not both, not on a k-bit base
    under FSDP."""
    import importlib.util

    from lancy_trl.scale import engines

    ds, fsdp = getattr(args, "deepspeed", None), getattr(args, "fsdp", None)
    if ds and fsdp:
        return ["--deepspeed and --fsdp are two sharding engines: keep one"]
    try:
        if ds:
            engines.resolve(ds)
        if fsdp:
            engines.fsdp_config(fsdp)
    except LancyError as e:
        return [f"--{'deepspeed' if ds else 'fsdp'}: {str(e).removeprefix('--fsdp: ')}"]
    if ds and importlib.util.find_spec("deepspeed") is None:
        return ["--deepspeed needs DeepSpeed: pip install --no-build-isolation deepspeed (against the torch installed)"]
    if fsdp and (getattr(args, "load_in_4bit", False) or getattr(args, "load_in_8bit", False)):
        return ["--fsdp does not shard a 4-bit or 8-bit base in lancy: use --deepspeed zero2 or zero3 with it instead"]
    return []


def flag(name: str) -> str:
    return name.replace("_", "-")


def to_dict(args) -> dict[str, Any]:
    return dataclasses.asdict(args)


@dataclass
class EvalArgs:
    """`lancy eval`: generative evaluation with the template the model was trained on."""

    model: str = opt("smollm2-135m-instruct", "A finished run directory, catalog name, hub id, local dir or .gguf.",
                     group="Model")
    dataset: str | None = opt(None, "Registry name or local file; default: the run's dataset, else finsent.", group="Data")
    dataset_config: str | None = opt(None, "Hub config of --dataset.", group="Data")
    data_files: list[str] = opt([], "Local files in the hub schema: PATH or SPLIT=PATH.", group="Data")
    split: str | None = opt(None, "Split to evaluate; default for a run: the rows it held out (its test split, else "
                            "its validation rows); else test, then validation, then train. `train` on a run scores the "
                            "rows it trained on, and says so.", group="Data")
    limit: int | None = opt(None, "Evaluate at most this many examples (a seeded random sample).", group="Data")
    seed: int = opt(42, "Seed of the --limit sample.", group="Data")
    system_prompt: str | None = opt(None, "Replace the template's system message (default: the run's).", group="Data")
    enable_thinking: bool | None = opt(None, "Thinking mode for templates that have one (default: the run's, else off).",
                                       group="Data")
    method: str = opt("both", "score ranks label words by likelihood; generate decodes and parses; both shares one "
                      "prompt pass.", group="Eval",
                      choices=("score", "generate", "both"))
    compare_base: bool = opt(False, "Also evaluate the base model and show the difference.", group="Eval")
    max_new_tokens: int | None = opt(
        None, "Generation budget; default: the label length (classification), 16 (multiple choice), 320 (math), "
        "160 (QA).", group="Eval",
    )
    batch_size: int = opt(16, "Examples per forward pass.", group="Eval")
    output_dir: str | None = opt(None, "Where metrics.json, predictions.jsonl, confusion.png go (default: the run's "
                                 "eval/ folder, else eval_runs/).", group="Eval")
    device: str = opt("auto", "auto picks cuda > mps > cpu.", group="Model", choices=DEVICES)
    precision: str = opt("auto", "Inference precision.", group="Model", choices=PRECISIONS)
    attn_implementation: str = opt("auto", "Attention kernel.", group="Model", choices=ATTENTIONS)
    trust_remote_code: bool = opt(False, "Run code shipped with a hub model.", group="Model")
    offline: bool = opt(False, "No byte leaves the machine (also implied by HF_HUB_OFFLINE=1).", group="Model")
    canaries: bool = opt(False, "Measure the exposure of the secrets a run planted with --canaries (instead of "
                         "scoring a dataset).", group="Eval")
    canary_candidates: int = opt(1000, "Random secrets each planted one is ranked against (exposure is at most "
                                 "log2 of this + 1).", group="Eval")
