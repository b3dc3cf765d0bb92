"""Trainers whose runs resume to the uninterrupted result: checkpoints a crash cannot leave looking whole, a save the
disk refuses turned into a resumable stop, and a data order that a resume reproduces.

    class LancySFTTrainer(Resumable, SFTTrainer): ...

The Trainer writes a checkpoint's weights, optimizer, scheduler and RNG state (the run's last one without the
optimizer and scheduler: `last_checkpoint`), then trainer_state.json: that last file is what makes a checkpoint
whole (runs.checkpoint_complete). Saving over an existing folder (a resumed run reaching the step of a checkpoint cut
off earlier) first deletes its old trainer_state.json, so a second cut-off cannot leave new weights under an old
state. A save that fails for room or permission removes its partial folder,
leaves the last whole checkpoint as it was, and stops the run `interrupted` with the space it needs.

Data order: the Trainer resumes mid-epoch by skipping the batches already trained, but the samplers TRL and
transformers use (length-grouped, GRPO's repeat sampler, opacus' Poisson sampler) draw each epoch's order from a
generator that ran through the epochs before, or from the global RNG: a run resumed in its third epoch trained other
batches than the uninterrupted one. Here each later epoch's order comes from a generator seeded with (seed, epoch).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lancy_trl import faults, files, runs
from lancy_trl.errors import SaveFailed
from lancy_trl.scale import distributed
from lancy_trl.scale.engines import sharded_engine


class Resumable:
    """Mixed in before a TRL trainer class; also where the fault points of a step and an evaluation sit."""

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        trainer: Any = self
        return by_epoch(super()._get_train_sampler(*args, **kwargs), trainer.args.data_seed or trainer.args.seed)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        trainer: Any = self
        folder = Path(trainer._get_output_dir(trial=trial)) / f"checkpoint-{trainer.state.global_step}"
        if distributed.is_main():
            (folder / "trainer_state.json").unlink(missing_ok=True)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        except OSError as e:
            if e.errno not in files.NO_ROOM:
                raise
            needed = checkpoint_bytes(folder, trainer.model)
            if distributed.is_main():
                shutil.rmtree(folder, ignore_errors=True)
            raise SaveFailed(files.refused(e, folder, needed)) from None

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        faults.point("checkpoint.weights", output_dir)
        if not last_checkpoint(self):
            super()._save_optimizer_and_scheduler(output_dir)  # type: ignore[misc]

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)  # type: ignore[misc]
        faults.point("checkpoint.state", output_dir)  # the next file written is trainer_state.json

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        loss = super().training_step(*args, **kwargs)  # type: ignore[misc]
        faults.point("step")  # gradients computed, the optimizer not yet stepped
        return loss

    def prediction_step(self, *args: Any, **kwargs: Any) -> Any:
        faults.point("eval")  # inside an evaluation, at one of its batches
        return super().prediction_step(*args, **kwargs)  # type: ignore[misc]


def last_checkpoint(trainer: Any) -> bool:
    """Whether a checkpoint is the run's last (its planned steps all taken), which is saved without the optimizer's
    moments and the schedule (for full fine-tuning, two thirds of it). No step trains from it: a complete run is not
    resumed (a longer one starts from its weights), and a run killed while saving its model resumes from it straight
    to the save; the Trainer resumes without the files when they are absent. DeepSpeed and FSDP keep theirs (their
    engine's checkpoint holds the sharded weights)."""
    return trainer.state.global_step >= trainer.state.max_steps > 0 and not sharded_engine(trainer)


def by_epoch(sampler: Any, seed: int) -> Any:
    """`sampler`, drawing each epoch after the first from a generator seeded with (seed, epoch) alone when the
    Trainer (or EpochLoader) sets the epoch. The first epoch draws as the library does (TRL's own order, which the
    equivalence tests pin): a resumed process starts from the same seeded state there. A sampler without a
    generator of its own is returned as it is."""
    if sampler is None or not hasattr(sampler, "generator"):
        return sampler
    import torch

    first = sampler.generator

    def set_epoch(epoch: int) -> None:
        sampler.generator = first if epoch == 0 else torch.Generator().manual_seed(seed * 1_000_003 + epoch)

    sampler.set_epoch = set_epoch
    return sampler


def checkpoint_bytes(folder: Path, model: Any) -> int:
    """What a checkpoint of this run takes: the size of its newest whole one, else an estimate from the model."""
    done = runs.complete_checkpoints(folder.parent.parent)
    return files.size_of(done[-1]) if done else saved_bytes(model, whole=False)


def saved_bytes(model: Any, whole: bool) -> int:
    """About what saving the model takes: its trained weights (every weight for full fine-tuning), and for a
    checkpoint (`whole` False) their AdamW moments too."""
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    everything = sum(p.numel() * p.element_size() for p in model.parameters())
    weights = trained if hasattr(model, "peft_config") else everything
    return weights if whole else weights + 2 * trained
