"""Packed, padding-free batches (`lancy sft --packing`, and every `lancy pretrain` batch): lancy's trainer gives each
example the loss it has alone, so no example attends to another."""

import pytest


@pytest.mark.parametrize("command", ["sft", "pretrain"])
def test_lancy_packed_batch_loss_equals_each_example_alone(tiny_model, tmp_path, command):
    """sft --packing: one padding-free row; pretrain: each block a row, its documents apart by position only."""
    import torch
    from datasets import Dataset

    from lancy_trl.config import resolve
    from lancy_trl.data.text import as_text
    from lancy_trl.models import ModelSource, load_model
    from lancy_trl.train.arguments import sft_config, trainer_options
    from lancy_trl.train.methods.pretrain import DocumentRows, PretrainArgs, pretrain_config
    from lancy_trl.train.methods.sft import SFTArgs
    from lancy_trl.train.trainer import LancySFTTrainer
    from tests.conftest import chat_rows

    flags = {"model": str(tiny_model), "packing": True, "use_lora": False, "batch_size": 1, "max_length": 128}
    args = resolve(SFTArgs if command == "sft" else PretrainArgs, flags=flags)
    loaded = load_model(ModelSource("tiny", str(tiny_model), "local"), args, device="cpu")
    rows = chat_rows("profit rose ", [(2, "positive"), (5, "negative"), (3, "neutral sentiment")])
    if command == "pretrain":
        rows = list(as_text(Dataset.from_list(rows)))
        config = pretrain_config(args, tmp_path, loaded.info, has_eval=False)
    else:
        config = sft_config(args, tmp_path, loaded.info, has_eval=False)
    trainer = LancySFTTrainer(model=loaded.model, args=config, train_dataset=Dataset.from_list(rows),
                              processing_class=loaded.tokenizer, **trainer_options(args, loaded.info))
    if command == "pretrain":  # as lancy pretrain sets it on CPU (sdpa)
        trainer.data_collator = DocumentRows(loaded.tokenizer.pad_token_id)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    assert ids.shape[0] == 1 and int((positions[0] == 0).sum()) == 3  # three examples packed into one row
    assert "attention_mask" not in batch or command == "sft"
    model = trainer.model.eval()
    with torch.no_grad():
        packed = trainer.compute_loss(model, dict(batch)).item()
        starts = torch.nonzero(positions[0] == 0)[:, 0].tolist() + [ids.shape[1]]
        total, count = 0.0, 0
        for a, b in zip(starts, starts[1:]):  # each example alone, as an unpacked batch of one
            logits = model(input_ids=ids[:, a:b]).logits[0, :-1]
            target = labels[0, a + 1:b]
            keep = target != -100
            total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
        leaky = trainer.compute_loss(model, {k: v for k, v in batch.items() if k != "position_ids"}).item()
    assert abs(packed - total / count) < 1e-5
    assert abs(leaky - total / count) > 1e-4  # without the position resets the examples would see each other


@pytest.mark.parametrize("path", ["whole", "fused", "fused-lean", "checkpointed"])
def test_pretrain_blocks_are_rows_whose_documents_never_meet(tiny_model, tmp_path, path, monkeypatch):
    """Also the chunked loss (the LM head a few positions at a time) against each document alone, and its
    gradients against the loss in one piece: with gradients taken in forward (a plain head, also the lean one that
    adds into W.grad in place) and checkpointed (a head with a hook)."""
    from lancy_trl.train import trainer as trainer_module
    from lancy_trl.train.speed import head_loss

    chunk = 10**6 if path == "whole" else 7
    monkeypatch.setattr(trainer_module, "LOSS_CHUNK", chunk)
    import torch
    from datasets import Dataset

    from lancy_trl.config import resolve
    from lancy_trl.models import ModelSource, load_model
    from lancy_trl.train.methods.pretrain import DocumentRows, PretrainArgs, pretrain_config
    from lancy_trl.train.trainer import LancySFTTrainer

    args = resolve(PretrainArgs, flags={"model": str(tiny_model), "use_lora": False, "batch_size": 2, "max_length": 24})
    loaded = load_model(ModelSource("tiny", str(tiny_model), "local"), args, device="cpu")
    docs = [{"text": " ".join(["profit rose"] * n)} for n in (3, 7, 2, 5)]
    config = pretrain_config(args, tmp_path, loaded.info, has_eval=False)
    trainer = LancySFTTrainer(model=loaded.model, args=config, train_dataset=Dataset.from_list(docs),
                              processing_class=loaded.tokenizer, lean_activations=path == "fused-lean")
    trainer.data_collator = DocumentRows(loaded.tokenizer.pad_token_id)
    head = loaded.model.get_output_embeddings()
    if path == "checkpointed":
        head.register_forward_hook(lambda *a: None)
    assert head_loss.applies(head, "cpu") == (path != "checkpointed")
    batch = next(iter(trainer.get_train_dataloader()))
    ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    assert ids.shape[0] == 2 and "attention_mask" not in batch
    model = trainer.model.eval()
    with torch.no_grad():
        rows = trainer.compute_loss(model, dict(batch)).item()
        total, count = 0.0, 0
        for r in range(2):
            starts = torch.nonzero(positions[r] == 0)[:, 0].tolist() + [ids.shape[1]]
            for a, b in zip(starts, starts[1:]):
                target = labels[r, a + 1:b]
                keep = target != -100
                if keep.any():
                    logits = model(input_ids=ids[r:r + 1, a:b]).logits[0, :-1]
                    total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
                    count += int(keep.sum())
    assert count > 20 and abs(rows - total / count) < 1e-5
    grads = {}
    for size in (chunk, 10**6, chunk):  # the chunked loss's gradients are the whole loss's; again onto kept buffers
        monkeypatch.setattr(trainer_module, "LOSS_CHUNK", size)
        for reset in (True, False):  # gradients from None, and added to the ones there (accumulation)
            if reset:
                model.zero_grad(set_to_none=True)
            (trainer.compute_loss(model, dict(batch)) * (0.5 if reset else 2)).backward()
        grads.setdefault(size, []).append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    reference = grads[10**6][0]
    assert "model.embed_tokens.weight" in reference and len(reference) > 10
    for got in grads[chunk] if chunk != 10**6 else []:  # "whole" is the reference: its loss is checked above
        assert got.keys() == reference.keys()
        for name, grad in reference.items():
            assert torch.allclose(got[name], grad, atol=1e-6, rtol=1e-4), name


def test_pretrain_across_documents_is_run_clms_recipe(tiny_model, tmp_path):
    """--attend-across-documents: the joined text cut into full blocks, each a row under a plain causal mask, so a
    document's tokens read the one before it (the loss is the row's loss as one sequence)."""
    import torch
    from datasets import Dataset

    from lancy_trl.config import resolve
    from lancy_trl.models import ModelSource, load_model
    from lancy_trl.train.methods.pretrain import DocumentRows, PretrainArgs, pretrain_config, use_document_rows
    from lancy_trl.train.trainer import LancySFTTrainer

    args = resolve(PretrainArgs, flags={"model": str(tiny_model), "use_lora": False, "batch_size": 2, "max_length": 24,
                                        "attend_across_documents": True})
    loaded = load_model(ModelSource("tiny", str(tiny_model), "local"), args, device="cpu")
    docs = [{"text": " ".join(["profit rose"] * n)} for n in (3, 7, 2, 5, 9, 4)]
    config = pretrain_config(args, tmp_path, loaded.info, has_eval=False)
    trainer = LancySFTTrainer(model=loaded.model, args=config, train_dataset=Dataset.from_list(docs),
                              processing_class=loaded.tokenizer)
    use_document_rows(trainer, loaded.info, loaded.tokenizer)
    assert not isinstance(trainer.data_collator, DocumentRows)
    lengths = sorted(len(r["input_ids"]) for r in trainer.train_dataset)
    total = sum(len(loaded.tokenizer(d["text"])["input_ids"]) + 1 for d in docs)  # EOS after each document
    assert sum(lengths) == total and set(lengths[1:]) == {24}  # every token kept, full blocks but one remainder
    batch = next(iter(trainer.get_train_dataloader()))
    full = [r for r in range(batch["input_ids"].shape[0]) if int(batch["attention_mask"][r].sum()) == 24]
    assert full, "a batch holds a full block"
    row = batch["input_ids"][full[0]:full[0] + 1]
    eos = loaded.tokenizer.eos_token_id
    assert eos in row[0, :-1].tolist()  # a document ends inside the block and the next one goes on in the same row
    model = trainer.model.eval()
    with torch.no_grad():
        one = {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()}
        ours = trainer.compute_loss(model, one).item()
        plain = model(input_ids=row, labels=row).loss.item()  # one causal sequence: documents see each other
        positions = torch.cat([torch.arange(len(p)) for p in _split_at(row[0].tolist(), eos)])[None]
        apart = (model(input_ids=row).logits - model(input_ids=row, position_ids=positions).logits).abs().max()
    assert "position_ids" not in batch  # nothing restarts at a document: the model's plain causal mask
    assert abs(ours - plain) < 1e-4 and apart > 1e-4  # and documents kept apart would have read otherwise


def _split_at(ids, eos):
    parts, start = [], 0
    for i, t in enumerate(ids):
        if t == eos:
            parts.append(ids[start:i + 1])
            start = i + 1
    return parts + ([ids[start:]] if start < len(ids) else [])
