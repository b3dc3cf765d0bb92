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
from trl.trainer.utils import RepeatSampler

from lancy_trl.evaluation.classify import output_cache
from lancy_trl.scale.engines import one_plain_process
from lancy_trl.train.resumable import Resumable
from lancy_trl.train.speed.prefix import KEY, MODEL_TYPES, plan


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


def balanced_order(classes: list[str], generator: torch.Generator) -> list[int]:
    """Row indexes, as many as rows, in rounds of one row of each class (classes in a random order each round, each
    class's rows shuffled and drawn again from the start when used up): every stretch of prompts holds the classes
    alike, whatever their shares in the data."""
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        by_class.setdefault(c, []).append(i)
    pools = list(by_class.values())
    queues: list[list[int]] = [[] for _ in pools]
    order: list[int] = []
    while len(order) < len(classes):
        for k in torch.randperm(len(pools), generator=generator).tolist():
            if not queues[k]:
                queues[k] = [pools[k][j] for j in torch.randperm(len(pools[k]), generator=generator).tolist()]
            order.append(queues[k].pop())
    return order[: len(classes)]


class BalancedRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler (each prompt --num-generations times, steps_per_generation batches reused) over a
    class-balanced order of the prompts rather than a uniform shuffle."""

    def __init__(self, classes: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classes = classes

    def __iter__(self):  # RepeatSampler.__iter__ with the order drawn by balanced_order
        order = balanced_order(self.classes, self.generator)
        chunks = [order[i: i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]
        for chunk in chunks:
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.mini_repeat_count


class LancyGRPOTrainer(Resumable, GRPOTrainer):
    def __init__(self, *args: Any, checkpoint_layers: float = 0.0, lean_activations: bool = False,
                 shared_prefix: bool = False, balance_by: str | None = None, **kwargs: Any) -> None:
        from lancy_trl.train.trainer import memory_paths

        self.balance_by = balance_by  # a column of the prompts whose values the sampler keeps balanced
        super().__init__(*args, **kwargs)
        self.lean_logps = self._lean_logps_apply()
        self.shared_prefix = shared_prefix and self.lean_logps
        if self.ref_model is not None and self.lean_logps:
            # TRL loads the reference from the policy's config path: the base model for a policy merged from a LoRA
            # run. The KL anchor is the model training starts from, so it gets the policy's weights as they are now.
            self.ref_model.load_state_dict(self._base().state_dict())
        if self.shared_prefix:
            from lancy_trl.train.speed.prefix import install

            install(self._base())
            if self.ref_model is not None:
                install(self.ref_model)
        self.checkpointed_layers, self.lean_modules = memory_paths(self, checkpoint_layers, lean_activations)

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        dataset = dataset if dataset is not None else self.train_dataset
        if self.balance_by is None or not self.shuffle_dataset:
            return super()._get_train_sampler(dataset)
        from lancy_trl.train.resumable import by_epoch

        args: Any = self.args
        sampler = BalancedRepeatSampler(
            list(dataset[self.balance_by]), data_source=dataset, mini_repeat_count=self.num_generations,
            batch_size=args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * args.steps_per_generation, shuffle=True, seed=args.seed)
        return by_epoch(sampler, args.data_seed or args.seed)

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        """The Trainer's save without TRL's frozen copy of a continued adapter (the KL anchor, adapter "ref"): it is
        made again from --model when the run resumes, and the run's model is its trained adapter alone."""
        import shutil
        from pathlib import Path

        super()._save(output_dir, state_dict)
        shutil.rmtree(Path(output_dir or self.args.output_dir or ".") / "ref", ignore_errors=True)

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
            cache = output_cache(head)
            cache.batch_select_indices(copy_of)  # each row gets its prompt's keys and values
            out = unwrapped.generate(input_ids=ids, attention_mask=mask, cache=cache,
                                     generation_config=self.generation_config)
        completion_ids = out[:, ids.size(1):]
        is_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=device))
        ends = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.size(1))
        keep = torch.arange(completion_ids.size(1), device=device) <= ends[:, None]  # up to and with the first EOS
        return [c[k].tolist() for c, k in zip(completion_ids.cpu(), keep.cpu())]
