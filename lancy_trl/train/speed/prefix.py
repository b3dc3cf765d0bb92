"""Shared-prefix batches: the tokens every example of a batch starts with are computed once, not once per row.

Instruction data repeats itself: every finsent example starts with the same chat header, system prompt and question
("<|im_start|>system\\nYou are a financial analyst. ...Sentence:", 37 of ~71 tokens for SmolLM2). Causal attention
makes the hidden states of those tokens the same in every row, so a batch of B rows computes them B times. Here the
batch becomes one packed row, the common prefix once and then each row's own tokens, with positions as in the batch:

    rows   [p p p a a a .]   ->   packed [p p p | a a a | b b | c c c c]
           [p p p b b . .]        positions 0 1 2 | 3 4 5 | 3 4 | 3 4 5 6
           [p p p c c c c]

Every linear layer, norm and MLP then runs on P + sum(S_b) tokens instead of B x max length (no padding either).
Attention is where the rows meet: the prefix attends causally to itself, and each row's tokens attend to the whole
prefix and causally to their own row (one batched SDPA call over the rows, padded to the longest row under a mask).
The loss, the logits it reads and the gradients are those of the batch: the prefix's hidden states receive the sum of
what each row sends back, which is what the batch's B copies received one by one. Tests compare loss and every
gradient with the unchanged batch.

Its attention is registered under its own name in transformers' attention registry (the model is pointed at it; the
name is not saved with the model) and differs from transformers' SDPA function only when a batch passes a layout (the
`lancy_prefix_layout` keyword reaches attention through transformers' `**kwargs`, so gradient checkpointing's
recompute sees it too). It runs only on the model families its tests cover (MODEL_TYPES) and refuses any attention
argument it does not compute (a softcap, attention sinks). Sliding-window layers (Mistral, Qwen2's windowed layers, Gemma's local
ones) get their window by position, as transformers' masks apply it. With attention dropout (0 in Llama, Qwen and
SmolLM configs) the prefix's dropout is drawn once for all rows, as its hidden states are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

KEY = "lancy_prefix_layout"


@dataclass
class Layout:
    """Where each row's tokens sit in the packed row, and the attention mask of the rows' own tokens."""

    prefix: int  # P: tokens shared by every row, packed once at the start
    index: torch.Tensor  # (B, S): position of row b's i-th own token among the packed own tokens (0 where padding)
    valid: torch.Tensor  # (B, S): whether row b has an i-th own token
    mask: torch.Tensor  # (B, 1, S, P + S): True where row b's i-th own token attends
    offsets: torch.Tensor  # (B,): packed position of row b's first own token
    tokens: int  # packed length: P + sum of own tokens
    calls: int = 0  # attention layers that read this layout (Layout.check)

    def packed_position(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Packed positions of batch positions (rows, cols), all at or after the prefix."""
        return self.offsets[rows] + cols - self.prefix

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float,
               scaling: float | None, window: int | None = None) -> torch.Tensor:
        """Attention over the packed row: query (1, H, T, d), key/value (1, Hkv, T, d) -> (1, T, H, d); with a sliding
        `window`, a token attends to the positions less than `window` behind it, as transformers' masks do."""
        self.calls += 1
        p, (rows, longest) = self.prefix, self.index.shape
        head_mask, mask = None, self.mask
        if window is not None and window < p + longest:
            at = torch.arange(p + longest, device=query.device)
            near = at[:, None] - at[None, :] < window  # (query position, key position)
            head_mask = near[:p, :p].tril()
            mask = mask & near[p:, :].unsqueeze(0)  # own tokens sit at positions p.. in every row
            mask = mask | ~self.valid[:, None, :, None]  # padding queries (dropped) keep a key: no empty softmax rows
        repeat = query.shape[1] // key.shape[1]
        q, k, v = query[0], key[0], value[0]  # (heads, T, d)
        if repeat > 1:
            k, v = k.repeat_interleave(repeat, dim=0), v.repeat_interleave(repeat, dim=0)
        head = F.scaled_dot_product_attention(q[:, :p], k[:, :p], v[:, :p], attn_mask=head_mask, dropout_p=dropout,
                                              is_causal=head_mask is None, scale=scaling)  # (H, P, d)

        def own(x: torch.Tensor) -> torch.Tensor:  # (H, T, d) -> (B, H, S, d): each row's own tokens, padded
            return x[:, p:].transpose(0, 1)[self.index].transpose(1, 2)

        def with_prefix(x: torch.Tensor) -> torch.Tensor:  # (B, H, P + S, d)
            return torch.cat([x[:, :p].unsqueeze(0).expand(rows, -1, -1, -1), own(x)], dim=2)

        tail = F.scaled_dot_product_attention(own(q), with_prefix(k), with_prefix(v), attn_mask=mask,
                                              dropout_p=dropout, scale=scaling)  # (B, H, S, d)
        tail = tail.transpose(1, 2)[self.valid]  # (sum of own tokens, H, d), in packed order
        return torch.cat([head.transpose(0, 1), tail], dim=0).unsqueeze(0)

    def check(self, model: Any) -> None:
        """Raise unless every decoder layer's attention read the layout: a model whose attention does not take
        transformers' SDPA function with its keyword arguments would otherwise attend across the packed rows."""
        from lancy_trl.errors import LancyError

        layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if self.calls == 0 or (layers is not None and self.calls < layers):
            raise LancyError(f"shared-prefix batches reached {self.calls} of this model's {layers} attention layers "
                             "(its attention does not use transformers' SDPA function); pass --no-shared-prefix")
        self.calls = 0


def plan(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
         labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], Layout] | None:
    """(packed model inputs, layout) for a right-padded batch whose rows share a prefix, else None.

    The prefix stops before the first position that predicts a label, so every logit the loss reads comes from a
    row's own tokens, and before each row's last token, so no row is empty.
    """
    rows, width = input_ids.shape
    if rows < 2:
        return None
    device = input_ids.device
    if attention_mask is None:
        lengths = torch.full((rows,), width, device=device)
    else:
        lengths = attention_mask.sum(1)
        if not torch.equal(attention_mask.bool(), torch.arange(width, device=device) < lengths[:, None]):
            return None  # not right-padded (left padding, holes): the batch runs as it is
    same = (input_ids == input_ids[:1]).all(0).long().cumprod(0)
    prefix = int(same.sum())
    learned = torch.nonzero(labels[:, 1:] != -100)[:, 1]  # hidden positions that predict a label
    prefix = min(prefix, int(lengths.min()) - 1, int(learned.min()) if len(learned) else width)
    if prefix < 1:
        return None
    own = lengths - prefix  # (B,)
    longest = int(own.max())
    steps = torch.arange(longest, device=device)
    valid = steps < own[:, None]  # (B, S)
    starts = torch.cumsum(own, 0) - own  # start of row b's own tokens among all own tokens
    index = torch.where(valid, starts[:, None] + steps, torch.zeros_like(steps))
    causal = steps[:, None] >= steps[None, :]  # (S, S)
    mask = torch.cat([torch.ones(rows, longest, prefix, dtype=torch.bool, device=device),
                      causal & valid[:, None, :]], dim=2).unsqueeze(1)  # (B, 1, S, P + S)
    positions = torch.cat([torch.arange(prefix, device=device), (prefix + steps).expand(rows, -1)[valid]])
    ids = torch.cat([input_ids[0, :prefix], input_ids[:, prefix:][:, :longest][valid]])
    layout = Layout(prefix=prefix, index=index, valid=valid, mask=mask, offsets=prefix + starts,
                    tokens=int(ids.numel()))
    return {"input_ids": ids[None], "position_ids": positions[None]}, layout


NAME = "lancy_shared_prefix"
MODEL_TYPES = ("llama", "qwen2", "qwen3")  # attention, positions and masks checked by tests against the plain batch
# what these models' attention layers pass besides the layout; anything else with a value stops the run
KNOWN_KWARGS = {"sliding_window", "position_ids", "cache_position", "use_cache", "output_attentions", "is_causal",
                "past_key_values", "position_embeddings"}


def supported(model: Any) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in MODEL_TYPES


def install(model: Any) -> None:
    """Register lancy's attention under its own name in transformers' attention and mask registries and point the
    model at it: transformers' SDPA function everywhere else stays as it is. Unchanged unless a layout is passed."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from lancy_trl.errors import LancyError

    if not supported(model):
        kind = getattr(getattr(model, "config", None), "model_type", None)
        raise LancyError(f"shared-prefix batches are written for {', '.join(MODEL_TYPES)} models, not {kind}; "
                         "pass --no-shared-prefix")
    if model.config._attn_implementation not in ("sdpa", NAME):
        raise LancyError(f"shared-prefix batches extend SDPA attention (this model uses "
                         f"{model.config._attn_implementation}); pass --no-shared-prefix or --attn-implementation sdpa")
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.config._attn_implementation = NAME


def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
              dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layout = kwargs.pop(KEY, None)
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in KNOWN_KWARGS)
    if unknown:
        from lancy_trl.errors import LancyError

        raise LancyError(f"this model's attention takes {', '.join(unknown)}, which shared-prefix batches do not "
                         "compute; pass --no-shared-prefix")
    return layout.attend(query, key, value, dropout, scaling, kwargs.get("sliding_window")), None
