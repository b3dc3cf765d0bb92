"""`lancy dpo`: direct preference optimisation (TRL's DPOTrainer) on prompt / chosen / rejected pairs.

    lancy dpo                                                  # finsent's pairs: the right label over a wrong one
    lancy dpo --model runs/<sft-run>                           # SFT then DPO: the run's adapter trains on
    lancy dpo --dataset prefs.jsonl --beta 0.1 --max-steps 200 # your pairs (prompt/chosen/rejected, hh-rlhf, ...)

Pairs come from a preference dataset (lancy_trl/data/preferences.py reads the usual schemas), or from a
classification dataset, whose right label is chosen over another drawn with the run's seed. With LoRA the reference
model is the model without the adapter being trained: no second copy in memory. From a LoRA run (`--model
runs/<sft-run>`) that adapter trains on and TRL keeps a frozen copy of it as the reference, so DPO pulls away from the
SFT model, not from the bare base. The run holds out pairs as every run does; `lancy eval` on it scores how often the
chosen answer is the likelier, and the label accuracy when the pairs are a classification task's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lancy_trl.config import DataArgs, ModelArgs, RunArgs, TrainArgs, opt
from lancy_trl.errors import LancyError
from lancy_trl.train import arguments, driver
from lancy_trl.train.methods import Method

LORA_LEARNING_RATE = 2e-4  # measured on finsent (README, DPO): 5e-5 barely moved in two epochs


@dataclass
class DPOArgs(ModelArgs, DataArgs, TrainArgs, RunArgs):
    """`lancy dpo`: direct preference optimisation on prompt / chosen / rejected pairs."""

    dataset: list[str] = opt(["finsent-preferences"], "Preference pairs: a registry name, hub id or local file "
                             "(prompt/chosen/rejected and the other schemas the README lists), or a classification "
                             "dataset, whose right label is chosen over a seeded wrong one.", group="Data")
    beta: float = opt(0.1, "How far the model may move from the reference: the DPO loss's temperature (TRL's beta); "
                      "smaller lets it move further.", group="DPO")
    sft_weight: float = opt(1.0, "Weight of the chosen answer's own log-likelihood loss added to DPO's (RPO; TRL's "
                            "`sft` loss type): keeps the chosen answer likely while the pair's margin grows, where DPO "
                            "alone lowers both and generation drifts off the answers; 0 for DPO alone.", group="DPO")
    learning_rate: float | None = opt(None, f"Peak learning rate; default {LORA_LEARNING_RATE:g} with LoRA, 5e-7 for "
                                      "full fine-tuning (TRL's DPO guidance).")

    def problems(self) -> list[str]:
        return ([] if self.beta > 0 else [f"--beta must be positive (got {self.beta})"]) + (
            [] if self.sft_weight >= 0 else [f"--sft-weight must be 0 or positive (got {self.sft_weight})"])


def load_data(args: DPOArgs) -> Any:
    """The pairs: a preference dataset's, or made from a classification dataset's rows."""
    from lancy_trl.data.build import build_data
    from lancy_trl.data.preferences import from_labels

    data = build_data(args, pairs=True)
    if data.kind == "classification" and len(data.labels) >= 2:
        data.train, data.eval, data.test = (from_labels(ds, data.labels, args.seed) if ds is not None else None
                                            for ds in (data.train, data.eval, data.test))
        data.notes.append(f"{data.name}: pairs made from its labels, the right one chosen over another drawn with seed "
                          f"{args.seed}")
        data.kind = "preference"
    if data.kind != "preference":
        raise LancyError(f"{data.name} is a {data.kind} dataset, with one answer a row: lancy dpo needs pairs (prompt, "
                         "chosen, rejected), or a classification dataset to make them from; train it with lancy sft")
    return data


def prepare(r: Any) -> dict[str, Any]:
    from lancy_trl.data.tokens import fit_to_model

    with r.console.status("Counting tokens..."):
        r.report = fit_to_model(r.data, r.loaded.tokenizer, r.args)
    return {"data": {**r.data.stats, **r.report}, "chat_template_kwargs": r.report["chat_template_kwargs"],
            "template": r.data.spec.template if r.data.spec else None}


def dpo_config(args: DPOArgs, r: Any) -> Any:
    """The shared trainer arguments with DPO's own: beta, the length of a prompt and its answer, eval on held-out
    pairs."""
    from trl import DPOConfig

    shared = arguments.trainer_arguments(args, r.run_dir, r.info)
    shared.update(learning_rate=args.learning_rate or (LORA_LEARNING_RATE if args.use_lora else 5e-7))
    losses: dict[str, Any] = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, args.sft_weight]} if args.sft_weight else {}
    return DPOConfig(**shared, **losses, beta=args.beta, max_length=args.max_length, per_device_eval_batch_size=args.batch_size,
                     eval_strategy="steps" if r.data.eval is not None else "no", eval_steps=args.eval_steps,
                     pad_to_multiple_of=args.pad_to_multiple_of)


def build(r: Any) -> Any:
    from trl import DPOTrainer

    from lancy_trl.train.resumable import Resumable

    class LancyDPOTrainer(Resumable, DPOTrainer):
        """TRL's DPOTrainer with lancy's crash-safe checkpoints and resumable data order."""

    args, data, info = r.args, r.data, r.info
    pairs = ["prompt", "chosen", "rejected", "chat_template_kwargs"]
    train, eval_ = (ds.select_columns([c for c in pairs if c in ds.column_names]) if ds is not None else None
                    for ds in (data.train, arguments.eval_subset(args, data.eval)))
    with r.console.status("Tokenizing..."):
        trainer = LancyDPOTrainer(model=r.loaded.model, args=dpo_config(args, r), train_dataset=train,
                                  eval_dataset=eval_, processing_class=r.loaded.tokenizer,
                                  peft_config=arguments.lora_config(args, r.loaded.model, info), callbacks=r.callbacks)
    info.update(reference="a frozen copy of the run's adapter" if info.get("lora_continued_from") else
                ("the model without its adapter" if args.use_lora else "a second copy of the model"))
    return trainer


def describe(r: Any, trainer: Any) -> str:
    args, info = r.args, r.info
    return (f"{info['architecture']} on {info['device']} ({info['precision']}), {info['trainable_params']:,} of "
            f"{info['total_params']:,} parameters trained: {len(r.data.train):,} pairs, beta {args.beta:g}, reference "
            f"{info['reference']}")


def after(r: Any, trainer: Any, result: Any) -> None:
    """The frozen reference copy of a continued adapter is not part of the model the run hands over."""
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def meta(r: Any) -> dict[str, Any]:
    args, data = r.args, r.data
    return {"dataset": data.name, "labels": list(data.labels), "template": data.spec.template if data.spec else None,
            "system_prompt": args.system_prompt, "use_lora": args.use_lora, "method": "dpo"}


def done(result: Any) -> str:
    accuracy = result.final_eval.get("eval_rewards/accuracies")
    return driver.done(result, f", train loss {result.train_loss:.4f}" + (
        f", held-out pairs ranked right {accuracy:.3f}" if accuracy is not None else ""),
        f"  score it: lancy eval --model {result.run_dir}\n")


METHOD = Method(name="dpo", args=DPOArgs, load_data=load_data, prepare=prepare, build=build, describe=describe,
                after=after, meta=meta, done=done,
                help="Direct preference optimisation: learn to prefer the chosen answer over the rejected one.")
