"""Lean activations: the same forward and gradients, fewer tensors kept for backward (CPU).

Without gradient checkpointing, autograd keeps every intermediate a backward formula reads. Two of them are cheap to
recompute from tensors that are kept anyway, and together they are about a third of a Llama-style layer's activation
memory in full fine-tuning:

- the gated MLP, `down(act(gate(x)) * up(x))`: autograd keeps `gate(x)`, `act(gate(x))`, `up(x)` and the product;
  here only `gate(x)` and `up(x)` are kept and the rest is recomputed in backward (elementwise work);
- RMSNorm, `weight * (x * rstd)`: autograd keeps `x`, `rstd` and the normalised `x * rstd` (for the weight's
  gradient); here `x` and `rstd` are kept.

The vocabulary matrices (input embeddings and LM head, 49k x 576 for SmolLM2, often one tied tensor) are the other
cost: autograd gives each of them a freshly allocated full-size gradient every step (the embedding's a dense
zero tensor for a few hundred rows, and a tied weight a third one for the sum), and tensors that large are mmapped
and page-faulted anew each time. Here the embedding adds its rows (`index_add_`) and the head its product
(`addmm_`) into the weight's `.grad` in place, in one buffer kept between steps: the same gradient, without the
three 113 MB allocations, fills and copies.

Liger's kernels do the same on GPUs with Triton; these are plain PyTorch for CPUs. A module is changed only when its
`forward` is, character for character, the Llama implementation these functions reproduce (Llama, Qwen2/3, Mistral
and others share it), or, for the vocabulary, a plain `nn.Embedding` / bias-free `nn.Linear`; anything else keeps its
own forward. Tests check the loss and every gradient against the unchanged model, over several steps with gradients
reset to None or zero. Single process only: gradients added outside autograd are not seen by its hooks, so
distributed training (which lancy's trainer leaves to TRL's own path) must not use these.
"""

from __future__ import annotations

import inspect
import types
import weakref
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
    """linear(h, W, b) [+ s * (h A^T) B^T with a LoRA adapter] for h = act(g) * u, keeping g, u and the rank-wide
    h A^T: h is recomputed in backward for the gradients of W and A, which would otherwise keep it."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, bias: Any, a: Any, b: Any,
                scaling: float, act: Any) -> torch.Tensor:
        h = (act(g) * u).reshape(-1, g.shape[-1])
        out = F.linear(h, weight, bias)
        xa = None
        if a is not None:
            xa = h @ a.t()
            out.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(g, u, xa)
        ctx.weight, ctx.a, ctx.b, ctx.scaling, ctx.act, ctx.has_bias = weight, a, b, scaling, act, bias is not None
        return out.view(*g.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        g, u, xa = ctx.saved_tensors
        need = ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])
        with torch.enable_grad():
            g_ = g.detach().requires_grad_()
            act = ctx.act(g_)
        h = (act.detach() * u).reshape(-1, g.shape[-1])
        grad_w = g2.t() @ h if need[2] else None
        grad_bias = g2.sum(0) if ctx.has_bias and need[3] else None
        gb = grad_a = grad_b = None
        if xa is not None:
            gb = (g2 @ ctx.b).mul_(ctx.scaling)  # the gradient at h A^T, scaled
            grad_a = gb.t() @ h if need[4] else None
            grad_b = (g2.t() @ xa).mul_(ctx.scaling) if need[5] else None
        grad_g = grad_u = None
        if need[0] or need[1]:
            grad_h = g2 @ ctx.weight
            if gb is not None:
                grad_h.addmm_(gb, ctx.a)
            grad_h = grad_h.view(g.shape)
            grad_g = torch.autograd.grad(act, g_, grad_h * u)[0] if need[0] else None
            grad_u = grad_h * act.detach() if need[1] else None
        return grad_g, grad_u, grad_w, grad_bias, grad_a, grad_b, None, None


def _lora_parts(module: Any) -> tuple[Any, ...] | None:
    """(W, b, A, B, scaling) of a PEFT LoRA Linear with one plain adapter active (no dropout, DoRA or bias), else None."""
    lora = _peft_lora_linear()
    if lora is None or type(module) is not lora or module.disable_adapters or module.merged:
        return None
    names = [n for n in module.active_adapters if n in module.lora_A]
    if len(names) != 1 or names[0] in module.lora_variant or type(module.base_layer) is not torch.nn.Linear:
        return None
    name = names[0]
    a, b = module.lora_A[name], module.lora_B[name]
    if type(module.lora_dropout[name]) is not torch.nn.Identity or a.bias is not None or b.bias is not None:
        return None
    base = module.base_layer
    return base.weight, base.bias, a.weight, b.weight, module.scaling[name]


def _peft_lora_linear() -> Any:
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return None
    return Linear


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


_grad_buffers: dict[int, torch.Tensor] = {}  # id(weight) -> its gradient buffer, dropped with the weight


def _add_to_grad(weight: torch.Tensor, write: Any, add: Any) -> None:
    """Add a gradient into weight.grad in place: `add(grad)` if it has one, else `write(buffer)` on the kept buffer."""
    if weight.grad is not None:
        add(weight.grad)
        return
    buffer = _grad_buffers.get(id(weight))
    if buffer is None or buffer.shape != weight.shape or buffer.dtype != weight.dtype:
        if buffer is None:
            weakref.finalize(weight, _grad_buffers.pop, id(weight), None)
        buffer = _grad_buffers[id(weight)] = torch.empty_like(weight, memory_format=torch.contiguous_format)
    write(buffer)
    weight.grad = buffer


class VocabRows(torch.autograd.Function):
    """embedding(ids, W) whose gradient rows are added into W.grad in place (autograd gets none)."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx  # the parameter itself, whose .grad receives the rows
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        if ctx.needs_input_grad[1]:
            (ids,) = ctx.saved_tensors
            ids, rows = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
            if ctx.padding_idx is not None:  # the padding row gets no gradient, as in F.embedding
                rows = rows * (ids != ctx.padding_idx).unsqueeze(1).to(rows.dtype)
            _add_to_grad(ctx.weight, lambda b: b.zero_().index_add_(0, ids, rows), lambda g: g.index_add_(0, ids, rows))
        return None, None, None


class VocabHead(torch.autograd.Function):
    """linear(h, W) whose weight gradient is added into W.grad in place (autograd gets none)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h)
        ctx.weight = weight  # the parameter itself: a saved tensor may come back as another object (saved-tensor hooks)
        return F.linear(h, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (h,), weight = ctx.saved_tensors, ctx.weight
        if ctx.needs_input_grad[1]:
            g2, h2 = grad.reshape(-1, grad.shape[-1]).t(), h.reshape(-1, h.shape[-1])
            _add_to_grad(weight, lambda b: torch.mm(g2, h2, out=b), lambda w: w.addmm_(g2, h2))
        return (grad @ weight if ctx.needs_input_grad[0] else None), None


def _embedding_forward(self: Any, ids: torch.Tensor) -> torch.Tensor:
    return VocabRows.apply(ids, self.weight, self.padding_idx)


def _head_forward(self: Any, h: torch.Tensor) -> torch.Tensor:
    return VocabHead.apply(h, self.weight)


def _plain_vocab_modules(model: Any) -> list[tuple[Any, Any]]:
    """(module, lean forward) for the input embedding and LM head when they are plain torch modules."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = []
    embedding = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    if (type(embedding) is torch.nn.Embedding and embedding.max_norm is None and not embedding.scale_grad_by_freq
            and not embedding.sparse):
        found.append((embedding, _embedding_forward))
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is torch.nn.Linear and head.bias is None:
        found.append((head, _head_forward))
    return found


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    down = self.down_proj
    if type(down) is torch.nn.Linear:  # plain (full fine-tuning)
        parts: tuple[Any, ...] | None = (down.weight, down.bias, None, None, 0.0)
    else:
        parts = _lora_parts(down)
    if parts is not None:  # the product is not kept for the weight's or the adapter's A gradient
        return GatedDown.apply(self.gate_proj(x), self.up_proj(x), *parts, self.act_fn)
    return down(GatedProduct.apply(self.gate_proj(x), self.up_proj(x), self.act_fn))


def _norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormFn.apply(hidden_states, self.weight, self.variance_epsilon)


def _source(fn: Any) -> str | None:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return None


def lean_activations(model: Any, vocab: bool = True) -> int:
    """Give every Llama-style gated MLP and RMSNorm, and the plain embedding and LM head, in `model` the lean forward;
    returns how many modules changed. `vocab=False` leaves the embedding and head alone (several processes)."""
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    reference = {_source(LlamaMLP.forward): _mlp_forward, _source(LlamaRMSNorm.forward): _norm_forward}
    changed = 0
    for module in model.modules():
        lean = reference.get(_source(type(module).forward))
        if lean is not None:
            module.forward = types.MethodType(lean, module)
            changed += 1
    for module, lean in _plain_vocab_modules(model) if vocab else []:
        module.forward = types.MethodType(lean, module)
        changed += 1
    return changed
