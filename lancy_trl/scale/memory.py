"""How much memory a training run will take, estimated from the model's config before any weight loads.

    need = memory.estimate(args, memory.shape(config, args), device)   # Estimate(weights=..., ...), bytes per process
    info = memory.report(args, config, device, data, "sft", console)  # the summary's figures; a warning if too much

The parts: weights (fp32 while training, as lancy trains; 4-bit NF4 or 8-bit for a quantized base's linear layers),
gradients and AdamW's two moments for what trains (LoRA's A and B, or every weight), each divided among the
processes as the engine shards it (ZeRO-1: optimizer state; ZeRO-2: and gradients; ZeRO-3 and FSDP: and weights;
ZeRO-3 offload: optimizer and weights in CPU memory), and activations for the longest batch (rows as long as the
data's longest, guessed from its characters, or --max-length for packed blocks): per decoder layer and token, the
tensors a Llama-style layer keeps for backward, fewer with checkpointing, plus the logits the loss path
materialises. Bench figures against measured peaks: bench/memory_estimate.py, docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

LOSS_CHUNK = 1024  # positions whose logits exist at once in the trainer's chunked loss (lancy_trl/train/trainer.py)

GB = 1024**3
RUNTIME = {"cpu": 0.6 * GB, "cuda": 0.6 * GB, "mps": 0.6 * GB}  # torch, Python and the libraries; a CUDA context


@dataclass(frozen=True)
class Estimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    runtime: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    def line(self) -> str:
        parts = ", ".join(f"{name} {getattr(self, name) / GB:.2f}" for name in
                          ("weights", "gradients", "optimizer", "activations"))
        return f"about {self.total / GB:.1f} GB per process ({parts}; GB)"


@dataclass(frozen=True)
class Shape:
    """What the estimate reads from a model: parameter counts and the decoder's sizes."""

    params: int
    linear: int  # parameters in linear layers a 4/8-bit base quantizes (not the embeddings or the LM head)
    lora: int  # LoRA parameters per unit of rank on the default targets (sum of in + out features)
    layers: int
    hidden: int
    intermediate: int
    vocab: int


def shape(config: Any, args: Any) -> Shape:
    """Counts from a weightless (meta-device) model built from the config: exact for any family."""
    import torch
    from transformers import AutoModelForCausalLM

    from lancy_trl.scale.moe import lora_targets

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=args.trust_remote_code)
    head = model.get_output_embeddings()
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    targets = set(args.lora_target_modules or lora_targets(model))
    text = config.get_text_config()
    return Shape(
        params=sum(p.numel() for p in model.parameters()),
        linear=sum(m.weight.numel() for _, m in linears),
        lora=sum(m.in_features + m.out_features for n, m in linears if n.rsplit(".", 1)[-1] in targets),
        layers=text.num_hidden_layers, hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size, vocab=text.vocab_size,
    )


def estimate(args: Any, s: Shape, device: str, processes: int = 1, answers: int | None = None,
             length: int | None = None) -> Estimate:
    """Bytes per process for this run's method, precision, engine and batch; `answers`: the positions per example
    lancy's compact loss takes logits at (None: the loss is on every token); `length`: the longest row (default
    --max-length)."""
    from lancy_trl.scale import engines

    bits = 4 if getattr(args, "load_in_4bit", False) else 8 if getattr(args, "load_in_8bit", False) else 32
    weights = (s.params - s.linear) * 4 + s.linear * (bits / 8 + (0.06 if bits == 4 else 0))  # NF4's scales
    trained = s.lora * args.lora_r if args.use_lora else s.params
    gradients, optimizer = trained * 4.0, trained * 8.0  # fp32 gradients, AdamW's two fp32 moments
    stage = 3 if getattr(args, "fsdp", None) else engines.zero_stage(getattr(args, "deepspeed", None))
    offload = "offload" in str(getattr(args, "deepspeed", "") or "")
    if processes > 1 or stage:
        optimizer = 0.0 if offload else optimizer / processes if stage >= 1 else optimizer
        gradients = gradients / processes if stage >= 2 else gradients
        weights = 0.0 if offload else weights / processes if stage >= 3 else weights
    plain = processes == 1 and not stage
    return Estimate(weights, gradients, optimizer, activations(args, s, device, answers if plain else None, length),
                    RUNTIME.get(device, RUNTIME["cpu"]))


def longest_row(rows: Any, max_length: int, scan: int = 20_000) -> int:
    """The longest row in tokens, guessed before any tokenizer loads: its text's characters / 3 (English runs about
    4 per token) plus 8 per chat message for the template, at most --max-length (longer rows are dropped). Scans
    the first `scan` rows; a dataset without a length (streamed) counts as full rows."""
    if not hasattr(rows, "__len__") or not hasattr(rows, "select"):
        return max_length
    columns = [c for c in ("prompt", "completion", "messages", "text") if c in rows.column_names]
    longest = 0
    for row in rows.select(range(min(len(rows), scan))).select_columns(columns):
        parts = [m for c in columns for m in (row[c] if isinstance(row[c], list) else [row[c]])]
        chars = sum(len(p["content"] if isinstance(p, dict) else str(p)) for p in parts)
        longest = max(longest, chars // 3 + 8 * len(parts))
    return min(max_length, longest or max_length)


def activations(args: Any, s: Shape, device: str, answers: int | None, length: int | None = None) -> float:
    """The longest batch's saved activations: per layer and token, a Llama layer keeps about 10 hidden-size and 4
    intermediate-size tensors for backward (norm inputs, q/k/v, attention output, the MLP's gate, up and product),
    in the autocast precision; checkpointed layers keep their input only. Calibrated on full blocks (pretraining
    SmolLM2-135M on CPU: bench/memory_estimate.py). Plus the fp32 logits and their gradient
    where the loss is taken: every position on TRL's path, `answers` per example on lancy's compact one."""
    micro = min(getattr(args, "micro_batch_size", None) or args.batch_size, args.batch_size)
    tokens = micro * (length or args.max_length)
    width = 2 if args.precision in ("bf16", "fp16") or (args.precision == "auto" and device == "cuda") else 4
    lora = 1.5 if args.use_lora else 1.0  # measured: LoRA's saved inputs and low-rank outputs add half again
    per_layer = tokens * (10 * s.hidden + 4 * s.intermediate) * width * lora
    share = 1.0 if args.gradient_checkpointing else getattr(args, "checkpoint_layers", 0.0)
    kept = s.layers * (per_layer * (1 - share) + tokens * s.hidden * width * share) + per_layer * (share > 0)
    positions = tokens if answers is None else min(tokens, micro * answers)
    return kept + positions * s.vocab * 4 * 2


def device_memory(device: str) -> float:
    """What the device has: a CUDA GPU's memory, else the machine's RAM."""
    if device == "cuda":
        import torch

        return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def alternatives(args: Any, s: Shape, device: str, processes: int, answers: int | None, length: int | None,
                 room: float) -> list[str]:
    """The flags that would bring the estimate under `room`, each tried alone on this run's settings."""
    tries: list[tuple[str, dict[str, Any]]] = []
    if not args.use_lora:
        tries.append(("LoRA (drop --no-use-lora)", {"use_lora": True}))
    if not (getattr(args, "load_in_4bit", False) or getattr(args, "fsdp", None)):
        tries.append(("--load-in-4bit", {"load_in_4bit": True, "load_in_8bit": False, "use_lora": True}))
    micro = getattr(args, "micro_batch_size", None) or args.batch_size
    tries += [(f"--micro-batch-size {m}", {"micro_batch_size": m}) for m in (micro // 2, micro // 4, 1) if 0 < m < micro]
    if not args.gradient_checkpointing:
        tries.append(("--gradient-checkpointing", {"gradient_checkpointing": True}))
    if processes > 1 and not getattr(args, "fsdp", None):
        tries += [(f"--deepspeed {z}", {"deepspeed": z}) for z in ("zero2", "zero3", "zero3_offload")]
    fitting = []
    for words, change in tries:
        other = dataclasses.replace(args, **{k: v for k, v in change.items() if hasattr(args, k)})
        need = estimate(other, s, device, processes, answers, length).total
        if need <= room:
            fitting.append(f"{words} (about {need / GB:.1f} GB)")
    return fitting


def report(args: Any, config: Any, device: str, data: Any, command: str, console: Any) -> dict[str, Any]:
    """A run's estimate for run.json and its summary, before the weights load; a warning line with the options
    that would fit when it is more than the device has."""
    from lancy_trl.scale import distributed

    try:
        s = shape(config, args)
    except Exception as e:  # advisory: a family transformers cannot build on the meta device trains without it
        console.print(f"[dim]note: no memory estimate for this model ({type(e).__name__}: {str(e)[:120]})[/]",
                      highlight=False)
        return {}
    micro = min(getattr(args, "micro_batch_size", None) or args.batch_size, args.batch_size)
    classify = getattr(data, "kind", "") == "classification"
    answers = {"pretrain": -(-LOSS_CHUNK // micro), "sft": 4 if classify else None}.get(command)
    length = args.max_length if command == "pretrain" else longest_row(data.train, args.max_length)
    n = distributed.world_size()
    need, room = estimate(args, s, device, n, answers, length), device_memory(device)
    if need.total > room and distributed.is_main():
        fits = alternatives(args, s, device, n, answers, length, room)
        console.print(f"[yellow]warning:[/] this run needs {need.line()} and the {device} has {room / GB:.1f} GB; "
                      + (f"would fit: {', '.join(fits)}" if fits else "no single change fits: use a smaller model"),
                      highlight=False)
    return {"memory_estimate_gb": round(need.total / GB, 2), "memory_estimate": need.line(),
            "memory_estimate_row_tokens": length, "device_memory_gb": round(room / GB, 1)}
