"""DP-SGD on lancy's SFT trainer (`lancy sft --dp-epsilon E`; the plan and its checks: lancy_trl/privacy/dp.py).

    trainer = DPTrainer(..., dp=plan)   # Poisson batches, per-example loss and clipping, noise, epsilon logged
"""

from __future__ import annotations

from typing import Any

from lancy_trl.errors import LancyError
from lancy_trl.privacy.dp import Plan
from lancy_trl.scale.engines import one_plain_process
from lancy_trl.train.resumable import by_epoch
from lancy_trl.train.trainer import LancySFTTrainer, supports_compact_loss


class DPTrainer(LancySFTTrainer):
    """LancySFTTrainer with Poisson-sampled batches, a per-example loss, opacus' per-sample hooks and DPOptimizer."""

    def __init__(self, *args: Any, dp: Plan, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.shared_prefix or self.lean_modules or self.checkpointed_layers or getattr(self.args, "packing", False):
            raise LancyError("a speed path that mixes examples is on under --dp-epsilon; drop it")  # check_args' promise
        if not one_plain_process(self):
            raise LancyError("--dp-epsilon runs in one process without DeepSpeed or FSDP: drop --num-processes")
        self.dp = dp
        self.dp_hooks: Any = None
        if not dp.train_lora_a:  # FFA-LoRA (Sun et al. 2024): A stays at its random start, so noise cannot move it
            model: Any = self.model
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.requires_grad_(False)

    def get_train_dataloader(self) -> Any:
        """Each batch a Poisson sample of the rows (opacus' sampler, seeded); an empty draw is an empty batch, which
        still takes a noisy step, as the accounting assumes."""
        import torch
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler
        from torch.utils.data import DataLoader

        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        sampler = by_epoch(UniformWithReplacementSampler(num_samples=len(dataset), sample_rate=self.dp.sample_rate,
                                                         generator=torch.Generator().manual_seed(self.args.seed)),
                           self.args.seed)
        collate = self.data_collator
        empty = {k: v[:0] for k, v in collate([dataset[0]]).items()}

        class EpochLoader(DataLoader):
            def set_epoch(self, epoch: int) -> None:  # the Trainer calls it before each epoch
                sampler.set_epoch(epoch)

        return EpochLoader(dataset, batch_sampler=sampler, collate_fn=lambda rows: collate(rows) if rows else dict(empty))

    def create_optimizer(self, model: Any = None) -> Any:
        """The Trainer's optimizer inside opacus' DPOptimizer, per-sample hooks on the trainable (LoRA) layers."""
        from opacus.grad_sample.utils import prepare_module
        from opacus.optimizers import DPOptimizer

        optimizer = super().create_optimizer(model)
        dataset: Any = self.train_dataset
        if not isinstance(optimizer, DPOptimizer):
            self.dp_hooks = prepare_module(self.model, "hooks", wrap_model=False, batch_first=True,
                                           loss_reduction="mean")
            self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.dp.noise_multiplier,
                                         max_grad_norm=self.dp.max_grad_norm,
                                         expected_batch_size=self.dp.sample_rate * len(dataset),
                                         loss_reduction="mean")
        return self.optimizer

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        import torch

        optimizer: Any = self.optimizer
        optimizer.zero_grad(set_to_none=True)  # the per-sample gradients too (the Trainer clears .grad only)
        if len(inputs["input_ids"]) == 0:  # an empty Poisson draw: no example's gradient, the step adds noise only
            for p in model.parameters():
                if p.requires_grad:
                    p.grad_sample = p.new_zeros((0, *p.shape))
            return torch.zeros((), device=self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The mean over examples of each example's mean answer-token loss: an example's gradient depends on it alone
        (TRL's loss divides by the batch's token count, which other examples change)."""
        import torch

        if not self.model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)
        if supports_compact_loss(model):
            outputs, logits = self._answer_logits(model, forward, rows, cols)
        else:  # a model without `logits_to_keep`: every position's logits, read at the same places
            outputs = model(**forward, use_cache=False)
            logits = outputs.logits[rows, cols].float()
        targets = labels[rows, cols + 1]
        logp = torch.log_softmax(logits, dim=-1)
        per_token = -logp.gather(1, targets[:, None]).squeeze(1)
        counts = torch.bincount(rows, minlength=len(labels)).clamp(min=1)
        loss = (per_token / counts[rows]).sum() / max(len(labels), 1)
        body = int(forward["attention_mask"].sum()) if "attention_mask" in forward else labels.numel()
        self._record("train", inputs, labels, body, *self._token_metrics(logp, logits, targets))
        return (loss, {"logits": outputs.logits}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # training records: the epsilon spent so far beside the loss
            logs["dp_epsilon"] = round(self.dp.spent(self.state.global_step), 4)
        super().log(logs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Training, then a check that the adapter moved (LoRA updates that silently stop are a known opacus/peft
        failure) and the hooks removed, so the saved model is a plain peft model."""
        import torch

        model: Any = self.model
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        try:
            output = super().train(*args, **kwargs)
        finally:
            if self.dp_hooks is not None:
                self.dp_hooks.cleanup()
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        if self.state.global_step and all(torch.equal(a, b) for a, b in zip(before, after)):
            raise LancyError("the LoRA weights did not change under --dp-epsilon: opacus computed no per-example "
                             "gradients for them; report this with `pip list` (opacus, peft, torch versions)")
        return output
