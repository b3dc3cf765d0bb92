"""The LM head and cross-entropy on most positions (pretraining), a chunk at a time, gradients taken in forward.

A batch's logits (2,048 positions x 49k for SmolLM2: 400 MB, and as much again for their gradient) must never exist
at once, so the loss runs LOSS_CHUNK positions at a time. Checkpointing each chunk does that but runs the head's
matmul a third time in backward (forward, recompute, gradient). Here each chunk's gradient with respect to the
logits, softmax minus one-hot, is known as soon as the chunk's loss is: it is turned at once into the gradients of
the hidden states (and of the head's weight, when it trains) and the logits are dropped. Backward only scales
them by the loss's incoming gradient. Same loss, same gradients, one matmul over the vocabulary fewer per position,
and no second softmax. Liger's and Apple's fused linear cross-entropy do this on GPUs in Triton; this is plain
PyTorch.

It applies to a plain bias-free `nn.Linear` head (or the lean one of lancy_trl/train/speed/lean.py) with no hooks
and no autocast; anything else keeps the checkpointed chunks. A test checks the loss and every gradient against the
model's own logits and autograd.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

from lancy_trl.train.speed import lean

_weight_grads: dict[int, torch.Tensor] = {}  # one buffer per trained head weight, kept between steps


def applies(head: Any, device_type: str) -> bool:
    """Whether `head` is one this loss is written for: a plain bias-free Linear (or its lean form), no hooks, no
    autocast."""
    hooks = head._forward_hooks or head._forward_pre_hooks or head._backward_hooks or head._backward_pre_hooks
    return (type(head) is torch.nn.Linear and head.bias is None and not hooks
            and not torch.is_autocast_enabled(device_type))


class HeadLoss(torch.autograd.Function):
    """(sum over positions of cross_entropy(h @ W^T, targets), [entropy sum, correct count]); the second output
    is a plain record, not differentiable."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                in_place: bool) -> tuple[torch.Tensor, torch.Tensor]:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        stats = torch.zeros(2, dtype=torch.float64)
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = _buffer(weight) if want_w else None
        for a in range(0, len(targets), chunk):
            hc, t = h[a:a + chunk], targets[a:a + chunk]
            logits = F.linear(hc, weight).float()
            logp = torch.log_softmax(logits, -1)
            total += F.nll_loss(logp, t, reduction="sum")
            probs = logp.exp()
            stats += torch.stack([-(probs * logp).sum().double().cpu(), (logits.argmax(-1) == t).sum().double().cpu()])
            del logits, logp
            probs[torch.arange(len(t), device=t.device), t] -= 1  # d loss / d logits
            d = probs.to(weight.dtype)
            if grad_h is not None:
                torch.mm(d, weight, out=grad_h[a:a + chunk])
            if grad_w is not None:
                grad_w.addmm_(d.t(), hc, beta=0 if a == 0 else 1)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.weight, ctx.in_place = weight, in_place
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _: Any) -> Any:
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0) * grad if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            buffer, scale = saved.pop(0), grad.to(ctx.weight.dtype)
            if ctx.in_place:  # the lean head's in-place gradient: added into W.grad, autograd gets none
                lean._add_to_grad(ctx.weight, lambda b: torch.mul(buffer, scale, out=b), lambda w: w.add_(buffer * scale))
            else:
                grad_w = buffer * scale
        return grad_h, grad_w, None, None, None


def _buffer(weight: torch.Tensor) -> torch.Tensor:
    buffer = _weight_grads.get(id(weight))
    if buffer is None or buffer.shape != weight.shape or buffer.dtype != weight.dtype:
        if buffer is None:
            weakref.finalize(weight, _weight_grads.pop, id(weight), None)
        buffer = _weight_grads[id(weight)] = torch.empty_like(weight, memory_format=torch.contiguous_format)
    return buffer


def head_loss(head: Any, states: torch.Tensor, targets: torch.Tensor, chunk: int) -> tuple[torch.Tensor, float, int]:
    """(summed cross-entropy, summed entropy, correct predictions) of `head` on `states` (positions x hidden)."""
    in_place = getattr(head.forward, "__func__", None) is lean._head_forward
    total, stats = HeadLoss.apply(states, head.weight, targets, chunk, in_place)
    return total, float(stats[0]), int(stats[1])
