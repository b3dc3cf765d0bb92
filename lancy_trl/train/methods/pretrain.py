"""`lancy pretrain`: continued pretraining on plain text, causal LM loss on every token, documents packed into blocks.

    lancy pretrain --dataset my_filings.txt --max-steps 200
    lancy pretrain --data-files "reports/*.txt" --max-length 1024
    lancy pretrain --model smollm2-135m-instruct --dataset wikitext --dataset-config wikitext-2-raw-v1 --max-steps 200

Documents are joined with EOS (TRL appends it) and packed into blocks of `--max-length` tokens by TRL's best-fit
packing, a document longer than a block continuing in the next (`bfd_split`). Positions restart at each document and
no token attends to another: with flash-attention a batch runs padding-free (varlen), otherwise each block is a row
whose block-diagonal mask transformers builds from the positions (DocumentRows). `--attend-across-documents` is the
classic run_clm recipe instead: documents joined and cut into full blocks, a token attending to the earlier documents
of its block (a plain causal mask). Chat and classification datasets
contribute their text: the user message and the answer. Evaluation is the loss and its perplexity on the held-out
slice, which `lancy eval` on the run scores again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lancy_trl.config import CanaryArgs, DataArgs, ModelArgs, RunArgs, TrainArgs, opt
from lancy_trl.train import arguments, driver
from lancy_trl.train.methods import Method


@dataclass
class PretrainArgs(ModelArgs, DataArgs, TrainArgs, RunArgs, CanaryArgs):
    """`lancy pretrain`: causal LM loss on every token of plain text, documents packed into blocks of --max-length."""

    dataset: list[str] = opt(
        [], "Registry name, hub id or local file (.txt/.jsonl/.json/.csv/.parquet); repeat for a mixture. Default: the "
        "--data-files.", group="Data",
    )
    max_length: int = opt(1024, "Block length: documents are joined with EOS and packed into blocks of this many "
                          "tokens (a longer document continues in the next block).")
    streaming: bool | None = opt(
        None, "Read the corpus as training goes, tokenized and packed on the fly: memory stays flat however large it "
        "is; needs --max-steps, and holds out the first --eval-max-batches x --batch-size documents. Default: on for "
        "registry corpora too large to download (openwebtext, common-corpus) unless --max-examples is given.",
        group="Data",
    )
    attend_across_documents: bool = opt(
        False, "The classic run_clm recipe: documents joined with EOS and cut into full blocks, each token attending "
        "to the earlier documents in its block (a plain causal mask, no padding). Default: documents packed whole by "
        "best fit, positions restarting at each, no token attending to another document.",
    )


def load_data(args: PretrainArgs) -> Any:
    from lancy_trl.data.text import text_data

    return text_data(args)


def prepare(r: Any) -> dict[str, Any]:
    if r.data.stats.get("streamed"):
        r.report = {"train_tokens": "streamed"}
    else:
        from lancy_trl.data.tokens import fit_to_model

        with r.console.status("Counting tokens..."):
            r.report = fit_to_model(r.data, r.loaded.tokenizer, r.args)
    return {"data": {**r.data.stats, **r.report}}


def pretrain_config(args: PretrainArgs, run_dir: Path, info: dict[str, Any], has_eval: bool) -> Any:
    """`lancy sft`'s TRL config, with text packed into blocks (`bfd_split`: a long document continues in the next
    block), padding-free batches (which TRL's best-fit packing implies; without a varlen kernel the trainer's
    collator is then DocumentRows) and the loss on every token; or, across documents, blocks cut from the joined
    text as rows."""
    config = arguments.sft_config(args, run_dir, info, has_eval)
    config.packing, config.packing_strategy, config.padding_free = True, "bfd_split", True
    if args.attend_across_documents:  # TRL's "wrapped" packing is run_clm's group_texts: full blocks, plain causal
        config.packing_strategy, config.padding_free = "wrapped", False
    config.completion_only_loss, config.train_sampling_strategy = False, "random"
    config.eval_packing = True  # held-out documents in blocks too: the perplexity covers every held-out token
    return config


def use_document_rows(trainer: Any, info: dict[str, Any], tokenizer: Any) -> None:
    """DocumentRows as the trainer's collator, unless the attention is varlen (flash), which takes the flat row, or
    the blocks are not padding-free (--attend-across-documents: TRL's collator, rows with a causal mask)."""
    if trainer.args.padding_free and not info["attn_implementation"].startswith("flash_attention"):
        trainer.data_collator = DocumentRows(tokenizer.pad_token_id)


class DocumentRows:
    """Blocks as rows, each block's documents kept apart by their positions alone.

    A padding-free batch is one row of --batch-size x --max-length tokens; without a varlen kernel, SDPA attends over
    that whole row under a block-diagonal mask, a batch's attention squared (bench/pretrain_throughput.py measured
    it at half the classic recipe's speed, with 4x its activation memory). Here each block stays a row with
    positions restarting at every document and no attention mask, from which transformers builds each row's
    block-diagonal causal mask: attention costs what unpacked blocks cost, and no token attends to another document.
    The first token of each document is not a target (as padding-free batches have it): nothing before it in its
    own document predicts it.
    """

    def __init__(self, pad_token_id: int) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.collate = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=True)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        batch.pop("attention_mask")  # padding sits at position 0, a document of its own, and is never a target
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch


def build(r: Any) -> Any:
    from lancy_trl.train.callbacks import Perplexity
    from lancy_trl.train.trainer import LancySFTTrainer

    args, info = r.args, r.info
    config = pretrain_config(args, r.run_dir, info, r.data.eval is not None)
    with r.console.status("Tokenizing and packing..."):
        trainer = LancySFTTrainer(
            model=r.loaded.model, args=config, train_dataset=r.data.train,
            eval_dataset=arguments.eval_subset(args, r.data.eval), processing_class=r.loaded.tokenizer,
            peft_config=arguments.lora_config(args, r.loaded.model, info), **arguments.trainer_options(args, info),
            callbacks=[*r.callbacks, Perplexity(r.writer)],
        )
    use_document_rows(trainer, info, r.loaded.tokenizer)
    info.update(checkpointed_layers=trainer.checkpointed_layers, lean_modules=trainer.lean_modules)
    return trainer


def describe(r: Any, trainer: Any) -> str:
    args, data, info = r.args, r.data, r.info
    if data.stats.get("streamed"):
        what = (f"documents streamed, tokenized and packed on the fly into blocks of up to {args.max_length} tokens "
                f"({len(data.eval):,} held out)")
    else:
        blocks = len(trainer.train_dataset)
        how = "joined and cut into" if args.attend_across_documents else "packed into"
        what = f"{len(data.train):,} documents {how} {blocks:,} blocks of up to {args.max_length} tokens"
    across = ("tokens attend to earlier documents in their block" if args.attend_across_documents
              else "no attention across documents")
    return f"{info['architecture']} on {info['device']} ({info['precision']}, {info['attn_implementation']}): {what}, {across}"


def after(r: Any, trainer: Any, result: Any) -> None:
    if result.eval_loss is not None:
        result.final_eval["eval_perplexity"] = math.exp(result.eval_loss)


def meta(r: Any) -> dict[str, Any]:
    return {"dataset": r.data.name, "task": "pretraining", "use_lora": r.args.use_lora}


def done(result: Any) -> str:
    held = result.final_eval.get("eval_perplexity")
    return driver.done(result, f", train loss {result.train_loss:.4f}" + (f", held-out perplexity {held:.2f}" if held else ""))


METHOD = Method(name="pretrain", args=PretrainArgs, load_data=load_data, prepare=prepare, build=build,
                describe=describe, after=after, meta=meta, done=done, memory_rows="blocks",
                model_as_checkpointed=True,
                help="Continue pretraining on plain text: every token learned, documents packed into blocks, "
                     "perplexity held out.")
