"""`lancy pretrain`: continued pretraining on plain text, on the same run lifecycle as `lancy sft`.

    result = run_pretrain(resolve(PretrainArgs, flags={"dataset": ["filings.txt"], "max_steps": 200}), console)

Causal LM loss on every token. Documents are joined with EOS (TRL appends it) and packed into blocks of
`--max-length` tokens by TRL's best-fit packing, a document longer than a block continuing in the next
(`bfd_split`). Positions restart at each document and no token attends to another: with flash-attention a batch
runs padding-free (varlen), otherwise each block is a row whose block-diagonal mask transformers builds from the
positions (DocumentRows). Chat and
classification datasets contribute their text: the user message and the answer. Evaluation is the loss and its
perplexity on the held-out slice, which `lancy eval` on the run scores again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lancy_trl.config import PretrainArgs
from lancy_trl.errors import LancyError
from lancy_trl.train import lifecycle
from lancy_trl.train.lifecycle import RunResult


def as_text(ds: Any) -> Any:
    """Plain-text rows: `text` kept, a chat row's user message and answer joined by a blank line."""
    if ds is None or "text" in ds.column_names:
        return ds

    def text(row: dict[str, Any]) -> dict[str, str]:
        user = next((m["content"] for m in reversed(row["prompt"]) if m["role"] == "user"), "")
        answer = " ".join(m["content"] for m in row["completion"])
        return {"text": f"{user}\n\n{answer}".strip()}

    return ds.map(text, remove_columns=ds.column_names)


def streams(args: PretrainArgs) -> bool:
    """--streaming, or by default a registry corpus too large to download when no --max-examples cuts it."""
    if args.streaming is not None:
        return args.streaming
    from lancy_trl.data.registry import lookup

    specs = [lookup(name) for name in args.dataset]
    return not args.max_examples and any(s is not None and s.loader == "stream" for s in specs)


def text_data(args: PretrainArgs) -> Any:
    """The run's data as text rows (train, held-out slice, test), mixtures included; streamed where asked."""
    from lancy_trl.data.build import build_data, files_as_dataset

    if not args.dataset:
        if not args.data_files:
            raise LancyError("no text to train on: pass --dataset NAME|FILE or --data-files 'PATH' (globs work)")
        first, args.data_files = files_as_dataset(args.data_files)
        args.dataset = [first]
    if streams(args):
        from lancy_trl.data.stream import streamed_text

        return streamed_text(args)
    from_files = len(args.dataset) == 1 and any(v.startswith("train=") for v in args.data_files)
    data = build_data(args, transform=as_text)
    data.kind, data.label_words = "pretraining", ()
    if from_files:  # several files of one folder: the run is named after the folder, not its first file
        data.name = Path(args.dataset[0]).resolve().parent.name or data.name
    return data


def run_pretrain(args: PretrainArgs, console: Any, flags: dict[str, Any] | None = None) -> RunResult:
    from lancy_trl.train.sft import fit_to_model

    args, run_dir, checkpoint = lifecycle.prepare(args, flags or {}, console, PretrainArgs, "pretrain")
    data, source, loaded = lifecycle.setup(args, console, run_dir, checkpoint, text_data, "pretrain")
    if data.stats.get("streamed"):
        report: dict[str, Any] = {"train_tokens": "streamed"}
    else:
        with console.status("Counting tokens..."):
            report = fit_to_model(data, loaded.tokenizer, args)
    run_dir = lifecycle.open_run(args, "pretrain", run_dir, checkpoint, source, loaded, data,
                                 {"data": {**data.stats, **report}})
    with lifecycle.recorded(run_dir, "pretrain"):
        return _train(args, run_dir, checkpoint, data, loaded, console)


def pretrain_config(args: PretrainArgs, run_dir: Any, info: dict[str, Any], has_eval: bool) -> Any:
    """`lancy sft`'s TRL config, with text packed into blocks (`bfd_split`: a long document continues in the next
    block), padding-free batches (which TRL's best-fit packing implies; without a varlen kernel the trainer's
    collator is then DocumentRows) and the loss on every token."""
    from lancy_trl.train.sft import to_trl_config

    config = to_trl_config(args, run_dir, info, has_eval)
    config.packing, config.packing_strategy, config.padding_free = True, "bfd_split", True
    config.completion_only_loss, config.train_sampling_strategy = False, "random"
    config.eval_packing = True  # held-out documents in blocks too: the perplexity covers every held-out token
    return config


def use_document_rows(trainer: Any, info: dict[str, Any], tokenizer: Any) -> None:
    """DocumentRows as the trainer's collator, unless the attention is varlen (flash), which takes the flat row."""
    if not info["attn_implementation"].startswith("flash_attention"):
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


def _train(args: PretrainArgs, run_dir: Any, checkpoint: str | None, data: Any, loaded: Any, console: Any) -> RunResult:
    from transformers import PrinterCallback

    from lancy_trl.train.callbacks import Perplexity
    from lancy_trl.train.sft import trainer_options
    from lancy_trl.train.trainer import LancySFTTrainer

    config = pretrain_config(args, run_dir, loaded.info, data.eval is not None)
    eval_ds = data.eval
    if eval_ds is not None and len(eval_ds) > args.eval_max_batches * args.batch_size:
        eval_ds = eval_ds.shuffle(seed=args.seed).select(range(args.eval_max_batches * args.batch_size))
    writer, interrupt, callbacks = lifecycle.observers(args, run_dir, console)
    with console.status("Tokenizing and packing..."):
        trainer = LancySFTTrainer(
            model=loaded.model, args=config, train_dataset=data.train, eval_dataset=eval_ds,
            processing_class=loaded.tokenizer, peft_config=lifecycle.lora_config(args, loaded.model, loaded.info),
            **trainer_options(args, loaded.info),
            callbacks=[*callbacks, Perplexity(writer)],
        )
    trainer.remove_callback(PrinterCallback)
    use_document_rows(trainer, loaded.info, loaded.tokenizer)
    lifecycle.print_notes(data, console)
    if data.stats.get("streamed"):
        what = (f"documents streamed, tokenized and packed on the fly into blocks of up to {args.max_length} tokens "
                f"({len(data.eval):,} held out)")
    else:
        blocks = len(trainer.train_dataset)  # type: ignore[arg-type]
        what = f"{len(data.train):,} documents packed into {blocks:,} blocks of up to {args.max_length} tokens"
    console.print(f"[bold]{run_dir}[/]\n  {loaded.info['architecture']} on {loaded.info['device']} "
                  f"({loaded.info['precision']}, {loaded.info['attn_implementation']}): {what}, no attention across "
                  "documents" + lifecycle.notes(args, loaded.info, trainer))
    result = lifecycle.train(trainer, run_dir, checkpoint, interrupt, console, "pretrain")
    if result.eval_loss is not None:
        result.final_eval["eval_perplexity"] = math.exp(result.eval_loss)
    if result.status == "complete":
        lifecycle.finish(trainer, result, {"dataset": data.name, "task": "pretraining", "use_lora": args.use_lora})
    writer.close()
    return result
