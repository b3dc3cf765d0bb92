"""TRL's SFTTrainer with a compact loss: the LM head runs only where an answer token is predicted.

With completion-only loss, a classification example of ~80 tokens learns from ~3 (the label word and the end of
turn). TRL's fused LM head still projects every position onto the vocabulary (49k for SmolLM2) and computes entropy
over all of them on devices without Triton; here the logits are computed at the positions that carry a label only
(`logits_to_keep` with those indices), so the LM head's forward and backward shrink by the same factor. The loss is
the same sum over answer tokens divided by the same token count as TRL's, and TRL's entropy and token-accuracy
metrics are kept, computed on those positions. With shared-prefix batches (lancy_trl/train/speed/prefix.py) the batch
runs as one packed row and the same positions are read from it. Anything unusual (several processes, DeepSpeed,
FSDP, MoE auxiliary loss, custom loss functions, label smoothing, DFT loss, a model without `logits_to_keep`) goes
through TRL's path. The loss on most tokens (pretraining) runs in chunks (`_chunked_loss`): gradients taken in forward for a plain
head (lancy_trl/train/speed/head_loss.py), else each chunk checkpointed.
"""

from __future__ import annotations

import inspect
from typing import Any

from trl import SFTTrainer

from lancy_trl.scale.engines import one_plain_process, sharded_engine
from lancy_trl.scale.memory import LOSS_CHUNK
from lancy_trl.train.resumable import Resumable


def supports_compact_loss(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def checkpoint_share(model: Any, share: float) -> int:
    """Recompute the activations of an evenly spread `share` of the decoder layers in backward; returns how many.

    Whole-model gradient checkpointing (TRL's default) trades a third more compute for activation memory; a share of
    the layers buys part of the memory for the same part of the cost. It uses the per-layer switch transformers'
    `GradientCheckpointingLayer` reads, with non-reentrant checkpointing (no inputs need gradients, LoRA included).
    """
    from functools import partial

    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers: list[Any] = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    chosen = [m for i, m in enumerate(layers) if int((i + 1) * share) > int(i * share)]
    for layer in chosen:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    return len(chosen)


def memory_paths(trainer: Any, checkpoint_layers: float, lean_activations: bool) -> tuple[int, int]:
    """--checkpoint-layers and lean activations on a trainer's model: (layers checkpointed, modules made lean)."""
    checkpointed = lean = 0
    if checkpoint_layers and not trainer.args.gradient_checkpointing:
        checkpointed = checkpoint_share(trainer.model, checkpoint_layers)
    if lean_activations and not sharded_engine(trainer):  # fp32 only: the lean backward formulas do not follow autocast
        from lancy_trl.train.speed.lean import lean_activations as make_lean

        # the in-place vocabulary gradients bypass autograd, and with it DDP's gradient hooks: one process only
        lean = make_lean(trainer.model, vocab=one_plain_process(trainer))
    return checkpointed, lean


class LancySFTTrainer(Resumable, SFTTrainer):
    def __init__(self, *args: Any, checkpoint_layers: float = 0.0, lean_activations: bool = False,
                 shared_prefix: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared_prefix = shared_prefix and one_plain_process(self)  # a path of the compact loss only
        self.body_tokens = 0  # training tokens the decoder layers computed, padding aside (a shared prefix once a batch)
        if self.shared_prefix:
            from lancy_trl.train.speed.prefix import install

            model: Any = self.model
            install(model.get_base_model() if hasattr(model, "get_base_model") else model)
        self.checkpointed_layers, self.lean_modules = memory_paths(self, checkpoint_layers, lean_activations)

    def _compact(self, model: Any) -> bool:
        """Whether the compact loss applies: one process, no auxiliary or custom loss."""
        args = self.args
        return (
            one_plain_process(self) and not self.aux_loss_enabled and self.compute_loss_func is None
            and self.label_smoother is None and getattr(args, "loss_type", "nll") == "nll" and supports_compact_loss(model)
        )

    def _plan_shared_prefix(self, forward: dict[str, Any], labels: Any) -> Any:
        """(packed inputs, layout) when this batch's rows share a prefix (lancy_trl/train/speed/prefix.py), else None."""
        if not self.shared_prefix or set(forward) - {"input_ids", "attention_mask"} or "input_ids" not in forward:
            return None
        from lancy_trl.train.speed.prefix import plan

        return plan(forward["input_ids"], forward.get("attention_mask"), labels)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs or not self._compact(model):
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        import torch

        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)  # hidden position cols predicts cols + 1
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        packed = self._plan_shared_prefix(forward, labels) if len(cols) else None
        if packed is None and len(cols) > LOSS_CHUNK:  # the loss on most tokens (pretraining): in chunks
            return self._chunked_loss(model, forward, labels, (rows, cols), num_items_in_batch, mode, return_outputs)
        if packed is None:
            outputs, logits = self._answer_logits(model, forward, rows, cols)
            body = int(forward["attention_mask"].sum()) if "attention_mask" in forward else labels.numel()
        else:
            from lancy_trl.train.speed.prefix import KEY

            batch, layout = packed
            positions = layout.packed_position(rows, cols)
            keep = torch.unique(positions)
            outputs = model(**batch, **{KEY: layout}, use_cache=False, logits_to_keep=keep)
            layout.check(model)
            logits = outputs.logits[0, torch.searchsorted(keep, positions)].float()
            body = layout.tokens
        targets = labels[rows, cols + 1]
        logp = torch.log_softmax(logits, dim=-1)
        per_token = -logp.gather(1, targets[:, None]).squeeze(1)
        num_tokens = per_token.numel() if num_items_in_batch is None else num_items_in_batch
        loss = per_token.sum() / torch.as_tensor(num_tokens, device=per_token.device).clamp(min=1)
        self._record(mode, inputs, labels, body, *self._token_metrics(logp, logits, targets))
        return (loss, {"logits": outputs.logits}) if return_outputs else loss

    @staticmethod
    def _answer_logits(model: Any, forward: dict[str, Any], rows: Any, cols: Any) -> tuple[Any, Any]:
        """(outputs, fp32 logits at the answer positions): the LM head runs at the columns that predict a label only."""
        import torch

        keep = torch.unique(cols) if len(cols) else torch.zeros(1, dtype=torch.long, device=cols.device)
        outputs = model(**forward, use_cache=False, logits_to_keep=keep)
        return outputs, outputs.logits[rows, torch.searchsorted(keep, cols)].float()  # (answer tokens, vocab)

    @staticmethod
    def _token_metrics(logp: Any, logits: Any, targets: Any) -> tuple[float, float]:
        """TRL's entropy and token accuracy over the positions the loss is taken at."""
        import torch

        with torch.no_grad():
            n = max(len(targets), 1)
            return (-(logp.exp() * logp).sum(-1).sum().item() / n, (logits.argmax(-1) == targets).sum().item() / n)

    def _record(self, mode: str, inputs: dict[str, Any], labels: Any, body: int, entropy: float, accuracy: float) -> None:
        """TRL's metrics for a batch: entropy and token accuracy where the loss is taken, tokens seen."""
        self._metrics[mode]["entropy"].append(entropy)
        self._metrics[mode]["mean_token_accuracy"].append(accuracy)
        if mode == "train":
            self.body_tokens += body
            if "attention_mask" in inputs:
                self._total_train_tokens += int(inputs["attention_mask"].sum().item())
            else:
                self._total_train_tokens += int(inputs["position_ids"].numel())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def _chunked_loss(self, model: Any, forward: dict[str, Any], labels: Any, where: tuple[Any, Any],
                      num_items_in_batch: Any, mode: str, return_outputs: bool) -> Any:
        """The loss on most positions (pretraining): the decoder's last hidden states, then the LM head and the
        cross-entropy LOSS_CHUNK positions at a time, so a batch's logits (2,048 positions x 49k for SmolLM2: 400 MB,
        and as much again for their gradient) never exist at once. A plain head takes each chunk's gradients in
        forward (lancy_trl/train/speed/head_loss.py); any other is checkpointed chunk by chunk (recomputed in
        backward). The same sum over the same tokens divided by the same count as TRL's; entropy and accuracy from
        the same logits."""
        import torch

        from lancy_trl.train.speed.head_loss import applies, head_loss

        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = causal_lm.base_model(**forward, use_cache=False).last_hidden_state
        rows, cols = where
        targets = labels[rows, cols + 1]
        head = causal_lm.get_output_embeddings()
        states = hidden[rows, cols]
        if applies(head, states.device.type):
            total, entropy, correct = head_loss(head, states, targets, LOSS_CHUNK)
        else:
            total, entropy, correct = _checkpointed_head_loss(head, states, targets)
        n = len(targets)
        loss = total / torch.as_tensor(n if num_items_in_batch is None else num_items_in_batch).clamp(min=1)
        body = int(forward["attention_mask"].sum()) if "attention_mask" in forward else labels.numel()
        self._record(mode, {**forward, "labels": labels}, labels, body, entropy / n, correct / n)
        return (loss, {"logits": None}) if return_outputs else loss


def _checkpointed_head_loss(head: Any, states: Any, targets: Any) -> tuple[Any, float, int]:
    """(summed cross-entropy, summed entropy, correct predictions), each chunk recomputed in backward."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    seen: dict[int, tuple[float, int]] = {}

    def chunk(h: Any, t: Any, i: int) -> Any:
        logits = head(h).float()
        if i not in seen:  # the first pass (checkpoint runs it again in backward)
            with torch.no_grad():
                logp = torch.log_softmax(logits, -1)
                seen[i] = (-(logp.exp() * logp).sum().item(), int((logits.argmax(-1) == t).sum()))
        return F.cross_entropy(logits, t, reduction="sum")

    total = sum(checkpoint(chunk, states[a:a + LOSS_CHUNK], targets[a:a + LOSS_CHUNK], a, use_reentrant=False)
                for a in range(0, len(targets), LOSS_CHUNK))
    return total, sum(e for e, _ in seen.values()), sum(c for _, c in seen.values())
