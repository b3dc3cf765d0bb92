"""TRL's GRPOTrainer with a leaner policy pass: each row's real tokens only, the shared prefix once, the LM head only
where a completion token is scored.

GRPO's loss reads the log-probability (and entropy) of every completion token. TRL builds each row as its left-padded
prompt and right-padded completion and, on CPUs (no Triton), projects every position of that row onto the vocabulary
(49k for SmolLM2) in its chunked log-prob kernel. With --num-generations G every prompt is repeated G times in the
batch, so the same prompt tokens, and the chat header and instruction every prompt starts with, are computed G times
and more. Here each row is rewritten as its real tokens, right-padded (positions then start at 0 for every row; RoPE
attention depends on position differences only, so the left-padded layout computes the same values), the rows'
common prefix runs once (lancy_trl/train/speed/prefix.py), and the LM head runs at the positions that predict a completion
token only. Log-probs, entropies and so the loss and gradients are TRL's; tests compare them.

Only for the model families shared-prefix batches cover (no logit softcap or scale), a single process, text-only rows
and no MoE auxiliary loss; anything else takes TRL's own pass.

Generation repeats the prompts as well: TRL's transformers path left-pads the batch, each prompt --num-generations
times, and the prefill computes every copy. Here each distinct prompt's prefill runs once and its key/value cache is
copied to the rows that repeat it; sampling then runs on every row as in TRL (same positions, same masks, the same
random draws), and the end-of-sequence masking is TRL's. A test compares the completions with TRL's.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer

from lancy_trl.train.resumable import Resumable
from lancy_trl.train.speed.prefix import KEY, MODEL_TYPES, plan
from lancy_trl.train.trainer import one_plain_process


def realign(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion: int,
            pad_id: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(ids, mask, (rows, steps), cols): each row's real tokens, right-padded; completion token `steps` of row `rows`
    (the positions of TRL's (B, completion) output that count) is predicted at hidden position `cols` of the new row."""
    width = input_ids.shape[1]
    lengths = attention_mask.sum(1)
    prompt_lengths = attention_mask[:, : width - completion].sum(1)
    order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
    ids = torch.gather(input_ids, 1, order)[:, : int(lengths.max())]
    mask = torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]
    ids = ids.masked_fill(~mask, pad_id)
    rows, steps = torch.nonzero(attention_mask[:, width - completion:].bool(), as_tuple=True)
    return ids, mask.long(), (rows, steps), prompt_lengths[rows] + steps - 1


class LancyGRPOTrainer(Resumable, GRPOTrainer):
    def __init__(self, *args: Any, checkpoint_layers: float = 0.0, lean_activations: bool = False,
                 shared_prefix: bool = False, **kwargs: Any) -> None:
        from lancy_trl.train.trainer import memory_paths

        super().__init__(*args, **kwargs)
        self.lean_logps = self._lean_logps_apply()
        self.shared_prefix = shared_prefix and self.lean_logps
        if self.shared_prefix:
            from lancy_trl.train.speed.prefix import install

            install(self._base())
        self.checkpointed_layers, self.lean_modules = memory_paths(self, checkpoint_layers, lean_activations)

    def _base(self) -> Any:
        model: Any = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _lean_logps_apply(self) -> bool:
        config = self._base().config
        return (one_plain_process(self) and config.model_type in MODEL_TYPES and not self.aux_loss_enabled
                and getattr(config, "final_logit_softcapping", None) is None and getattr(config, "logit_scale", None) is None
                and not getattr(self.args, "cast_lm_head_to_fp32", False) and not self._is_vlm and not self.tools)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):
        if not self.lean_logps or compute_aux_loss or any(v is not None for v in extra.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra)
        batch_size = batch_size or input_ids.size(0)
        parts = [self._logps(model, input_ids[s: s + batch_size], attention_mask[s: s + batch_size], logits_to_keep,
                             compute_entropy) for s in range(0, input_ids.size(0), batch_size)]
        logps = torch.cat([p[0] for p in parts])
        return logps, torch.cat([p[1] for p in parts]) if compute_entropy else None, None

    def _logps(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion: int,
               compute_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids, mask, (rows, steps), cols = realign(input_ids, attention_mask, completion, self._tokenizer.pad_token_id)
        targets = ids[rows, cols + 1]
        packed = None
        if self.shared_prefix:
            labels = torch.full_like(ids, -100)
            labels[rows, cols + 1] = targets
            packed = plan(ids, mask, labels)
        with self.accelerator.autocast():
            if packed is None:
                keep = torch.unique(cols)
                out = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep)
                logits = out.logits[rows, torch.searchsorted(keep, cols)]
            else:
                batch, layout = packed
                positions = layout.packed_position(rows, cols)
                keep = torch.unique(positions)
                out = model(**batch, **{KEY: layout}, use_cache=False, logits_to_keep=keep)
                layout.check(self._base())
                logits = out.logits[0, torch.searchsorted(keep, positions)]
        logp = torch.log_softmax(logits.float() / self.temperature, dim=-1)
        shape = (input_ids.shape[0], completion)
        logps = logp.new_zeros(shape).index_put((rows, steps), logp.gather(1, targets[:, None]).squeeze(1))
        if not compute_entropy:
            return logps, None
        return logps, logp.new_zeros(shape).index_put((rows, steps), -(logp.exp() * logp).sum(-1))

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        plain = (self.lean_logps and images is None and not multimodal_fields and not self.use_vllm
                 and not self.use_transformers_continuous_batching and len(set(map(tuple, prompt_ids))) < len(prompt_ids))
        if not plain:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        return self._generate_prefill_once(prompt_ids), None

    def _generate_prefill_once(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """TRL's transformers generation with each distinct prompt's prefill computed once (module docstring)."""
        from trl.models import unwrap_model_for_generation
        from trl.trainer.utils import pad

        device = self.accelerator.device
        group: dict[tuple[int, ...], int] = {}  # each distinct prompt -> its index among the distinct ones
        first_rows: list[int] = []  # the first row holding each distinct prompt
        for row, p in enumerate(prompt_ids):
            if tuple(p) not in group:
                group[tuple(p)] = len(first_rows)
                first_rows.append(row)
        distinct = torch.tensor(first_rows, device=device)
        copy_of = torch.tensor([group[tuple(p)] for p in prompt_ids], device=device)
        rows = [torch.tensor(p, device=device) for p in prompt_ids]
        multiple = self.pad_to_multiple_of if isinstance(self.pad_to_multiple_of, int) else None  # "auto" is resolved
        ids = pad(rows, padding_value=self._tokenizer.pad_token_id, padding_side="left", pad_to_multiple_of=multiple)
        mask = pad([torch.ones_like(r) for r in rows], padding_value=0, padding_side="left", pad_to_multiple_of=multiple)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # as generate() derives them from the mask
        with (unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                          generation_kwargs=self.generation_kwargs,
                                          gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)  # type: ignore[arg-type]
              as unwrapped, torch.no_grad()):
            head = unwrapped(input_ids=ids[distinct, :-1], attention_mask=mask[distinct, :-1],
                             position_ids=positions[distinct, :-1], use_cache=True)
            cache = head.past_key_values
            cache.batch_select_indices(copy_of)  # each row gets its prompt's keys and values
            out = unwrapped.generate(input_ids=ids, attention_mask=mask, cache=cache,
                                     generation_config=self.generation_config)
        completion_ids = out[:, ids.size(1):]
        is_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=device))
        ends = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.size(1))
        keep = torch.arange(completion_ids.size(1), device=device) <= ends[:, None]  # up to and with the first EOS
        return [c[k].tolist() for c, k in zip(completion_ids.cpu(), keep.cpu())]
