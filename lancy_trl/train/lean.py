"""Lean activations: the same forward and gradients, fewer tensors kept for backward (CPU).

Without gradient checkpointing, autograd keeps every intermediate a backward formula reads. Two of them are cheap to
recompute from tensors that are kept anyway, and together they are about a third of a Llama-style layer's activation
memory in full fine-tuning:

- the gated MLP, `down(act(gate(x)) * up(x))`: autograd keeps `gate(x)`, `act(gate(x))`, `up(x)` and the product;
  here only `gate(x)` and `up(x)` are kept and the rest is recomputed in backward (elementwise work);
- RMSNorm, `weight * (x * rstd)`: autograd keeps `x`, `rstd` and the normalised `x * rstd` (for the weight's
  gradient); here `x` and `rstd` are kept.

Liger's kernels do the same on GPUs with Triton; these are plain PyTorch for CPUs. A module is changed only when its
`forward` is, character for character, the Llama implementation these functions reproduce (Llama, Qwen2/3, Mistral
and others share it); anything else keeps its own forward. A test checks the loss and every gradient against the
unchanged model.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch
import torch.nn.functional as F


class GatedProduct(torch.autograd.Function):
    """act(g) * u, keeping g and u only."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, u: torch.Tensor, act: Any) -> torch.Tensor:
        ctx.save_for_backward(g, u)
        ctx.act = act
        return act(g) * u

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        g, u = ctx.saved_tensors
        with torch.enable_grad():
            g_ = g.detach().requires_grad_()
            a = ctx.act(g_)
        (grad_g,) = torch.autograd.grad(a, g_, grad * u)
        return grad_g, grad * a.detach(), None


class GatedDown(torch.autograd.Function):
    """linear(act(g) * u, W, b), keeping g, u and W: the product is recomputed for W's gradient."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, bias: Any, act: Any) -> torch.Tensor:
        ctx.save_for_backward(g, u, weight)
        ctx.act, ctx.has_bias = act, bias is not None
        return F.linear(act(g) * u, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        g, u, weight = ctx.saved_tensors
        with torch.enable_grad():
            g_ = g.detach().requires_grad_()
            a = ctx.act(g_)
        a = a.detach() if not ctx.needs_input_grad[0] else a
        grad_h = grad @ weight
        grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            h = a.detach() * u
            grad_w = grad.reshape(-1, grad.shape[-1]).t() @ h.reshape(-1, h.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        grad_g = torch.autograd.grad(a, g_, grad_h * u)[0] if ctx.needs_input_grad[0] else None
        grad_u = grad_h * a.detach() if ctx.needs_input_grad[1] else None
        return grad_g, grad_u, grad_w, grad_b, None


class RMSNormFn(torch.autograd.Function):
    """weight * (x * rsqrt(mean(x^2) + eps)) in fp32, cast back as Llama's RMSNorm does, keeping x and rstd."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd, weight)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        x, rstd, weight = ctx.saved_tensors
        normed = x.to(torch.float32) * rstd
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * normed.to(x.dtype)).reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_n = (grad * weight).to(torch.float32)
            grad_x = (rstd * (grad_n - normed * (grad_n * normed).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_w, None


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    down = self.down_proj
    if type(down) is torch.nn.Linear:  # plain (full fine-tuning): the product is not kept for its weight's gradient
        return GatedDown.apply(self.gate_proj(x), self.up_proj(x), down.weight, down.bias, self.act_fn)
    return down(GatedProduct.apply(self.gate_proj(x), self.up_proj(x), self.act_fn))


def _norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormFn.apply(hidden_states, self.weight, self.variance_epsilon)


def _source(fn: Any) -> str | None:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return None


def lean_activations(model: Any) -> int:
    """Give every Llama-style gated MLP and RMSNorm in `model` the lean forward; returns how many modules changed."""
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    reference = {_source(LlamaMLP.forward): _mlp_forward, _source(LlamaRMSNorm.forward): _norm_forward}
    changed = 0
    for module in model.modules():
        lean = reference.get(_source(type(module).forward))
        if lean is not None:
            module.forward = types.MethodType(lean, module)
            changed += 1
    return changed
