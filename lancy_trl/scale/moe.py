"""Mixture-of-experts models: how many experts, how many parameters a token uses, and which modules are routers.

    facts = moe.describe(model)          # {} for a dense model; else experts, experts_per_token, active_params...
    moe.routers(model)                   # module names of the routers, which LoRA leaves alone by default

The router's load-balancing loss is TRL's: SFTTrainer turns it on for a config with `output_router_logits`, weights it
with the architecture's `router_aux_loss_coef` (or --router-aux-loss-coef) and logs it as `aux_loss`. Expert weights
are fused 3-D parameters in transformers 5 (one tensor per layer for all experts), not Linear layers, so LoRA by
default adapts attention and any shared-expert MLP; the experts themselves stay frozen.
"""

from __future__ import annotations

import re
from typing import Any

# config attributes naming the routed experts and the experts each token goes to, across families
EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
PER_TOKEN = ("num_experts_per_tok", "num_experts_per_token", "moe_top_k", "top_k")
ROUTER_CLASS = re.compile(r"Router|Gating")  # MixtralTopKRouter, DeepseekV3TopkRouter, DbrxRouter, JetMoeTopKGating
ROUTER_LEAVES = {"gate", "router", "shared_expert_gate"}  # inside an MoE block (remote-code and older layouts)
EXPERT_CLASS = re.compile(r"Experts$")  # MixtralExperts, Qwen3MoeExperts, JetMoeParallelExperts...


def _setting(config: Any, names: tuple[str, ...]) -> int:
    for source in (config, getattr(config, "ffn_config", None)):
        for name in names:
            value = getattr(source, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return 0


def experts(config: Any) -> tuple[int, int]:
    """(routed experts, experts per token) from a model config; (0, 0) for a dense model."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = _setting(text, EXPERTS)
    return (n, _setting(text, PER_TOKEN) or 1) if n > 1 else (0, 0)


def routers(model: Any) -> set[str]:
    """Names of the router modules (and the modules inside them)."""
    found: set[str] = set()
    for name, module in model.named_modules():
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        in_moe = re.search(r"moe|sparse", type(model.get_submodule(parent)).__name__, re.I) if parent else None
        leaf = name.rsplit(".", 1)[-1]
        if ROUTER_CLASS.search(type(module).__name__) or (in_moe and leaf in ROUTER_LEAVES) or \
                any(name.startswith(r + ".") for r in found):
            found.add(name)
    return found


def describe(model: Any) -> dict[str, Any]:
    """An MoE model's expert count, experts per token and active parameters (a token's share of the experts'); {}
    for a dense model."""
    n, k = experts(model.config)
    if not n:
        return {}
    expert_params = sum(p.numel() for m in model.modules() if EXPERT_CLASS.search(type(m).__name__)
                        for p in m.parameters(recurse=False))
    if not expert_params:  # experts as a ModuleList of MLPs
        expert_params = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    total = sum(p.numel() for p in model.parameters())
    return {"experts": n, "experts_per_token": k, "expert_params": expert_params,
            "active_params": total - expert_params + expert_params * k // n}


def check_args(args: Any, config: Any, path: str) -> None:
    """--router-aux-loss-coef on a dense model: one line, before its weights load."""
    from lancy_trl.errors import LancyError

    if getattr(args, "router_aux_loss_coef", None) and not experts(config)[0]:
        raise LancyError(f"--router-aux-loss-coef weighs a mixture-of-experts router's loss, and {path} is a dense "
                         "model: drop --router-aux-loss-coef")


def router_loss(trainer: Any) -> float:
    """The weight of the router load-balancing loss TRL adds (0: none)."""
    return getattr(trainer, "router_aux_loss_coef", 0.0) if getattr(trainer, "aux_loss_enabled", False) else 0.0


def note(info: dict[str, Any], trainer: Any) -> str:
    """The run summary's words on a mixture-of-experts model: experts, active parameters, routers, the router loss."""
    if not info.get("experts"):
        return ""
    coef = router_loss(trainer)
    adapted = any(".lora_" in name for name in routers(trainer.model))
    lora = "" if not info.get("lora_target_modules") else "LoRA on routers too; " if adapted else "routers without LoRA; "
    return (f"\n  mixture of experts: {info['experts']} experts, {info['experts_per_token']} per token; "
            f"{info['active_params']:,} of {info['total_params']:,} parameters active per token; {lora}"
            + (f"router load-balancing loss x{coef:g} (logged as aux_loss)" if coef else "no router load-balancing loss"))


def lora_targets(model: Any) -> list[str]:
    """Every linear layer's leaf name except the output head and a mixture-of-experts model's routers: LoRA on all of
    them works best for small models; a router adapted by LoRA would learn to send tokens elsewhere."""
    import torch

    out_emb, skip = model.get_output_embeddings(), routers(model)
    names = set()
    for name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if is_linear and module is not out_emb and name not in skip:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)
