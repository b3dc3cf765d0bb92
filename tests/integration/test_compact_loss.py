"""The compact loss (LM head only where an answer token is predicted) equals TRL's loss and gradients."""

import pytest

from tests.conftest import chat_rows, padded_tokenizer


@pytest.mark.parametrize("use_lora", [True, False])
def test_compact_loss_and_gradients_equal_trl(tiny_model, tmp_path, use_lora):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from lancy_trl.train.trainer import LancySFTTrainer

    rows = chat_rows("profit rose ", [(1, "positive"), (4, "negative"), (2, "neutral sentiment"), (7, "positive")])
    tok = padded_tokenizer(tiny_model)
    grads = []
    for cls in (SFTTrainer, LancySFTTrainer):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        config = SFTConfig(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=4, report_to="none",
                           bf16=False, use_cpu=True, gradient_checkpointing=False, max_length=64)
        peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False) if use_lora else None
        trainer = cls(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                      peft_config=peft)
        batch = next(iter(trainer.get_train_dataloader()))
        n = (batch["labels"][:, 1:] != -100).sum()
        trainer.model.train()
        assert cls is SFTTrainer or trainer._compact(trainer.model)  # the compact path runs
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
        loss.backward()
        grads.append((loss.item(), {k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None}))
        metrics = trainer._metrics["train"]
        assert metrics["mean_token_accuracy"] and metrics["entropy"]
    (loss_trl, g_trl), (loss_lancy, g_lancy) = grads
    assert loss_lancy == pytest.approx(loss_trl, rel=1e-5)
    assert g_trl.keys() == g_lancy.keys() and g_trl
    for k in g_trl:
        assert torch.allclose(g_trl[k], g_lancy[k], atol=1e-6, rtol=1e-4), k


@pytest.mark.parametrize("use_lora", [True, False])
def test_checkpointing_a_share_of_layers_saves_memory_and_keeps_gradients(tiny_model, tmp_path, use_lora):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from lancy_trl.train.trainer import LancySFTTrainer, checkpoint_share

    rows = chat_rows("margin fell ", [(3, "negative"), (5, "neutral"), (1, "positive")])
    tok = padded_tokenizer(tiny_model)
    results = {}
    for share in (0.0, 0.5, 1.0):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        config = SFTConfig(output_dir=str(tmp_path / str(share)), per_device_train_batch_size=3, report_to="none",
                           bf16=False, use_cpu=True, gradient_checkpointing=False, max_length=64)
        peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False) if use_lora else None
        trainer = LancySFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                                  peft_config=peft, checkpoint_layers=share)
        assert trainer.checkpointed_layers == int(2 * share)  # the tiny model has 2 decoder layers
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.train()
        saved: list[int] = []

        def pack(t, saved=saved):
            saved.append(t.numel() if not isinstance(t, torch.nn.Parameter) else 0)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = {k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None}
        results[share] = (loss.item(), grads, sum(saved))
    loss0, g0, saved0 = results[0.0]
    assert results[1.0][2] < results[0.5][2] < saved0  # each checkpointed layer keeps only its input for backward
    for share in (0.5, 1.0):
        loss, g, _ = results[share]
        assert loss == pytest.approx(loss0, rel=1e-6) and g.keys() == g0.keys() and g0
        for k in g0:
            assert torch.allclose(g[k], g0[k], atol=1e-6, rtol=1e-5), (share, k)
    assert checkpoint_share(torch.nn.Linear(2, 2), 0.5) == 0  # no decoder layers: nothing to do


def test_micro_batches_give_the_whole_batchs_update(tiny_model, tmp_path):
    """A batch of 4 run as 2 micro-batches of 2 moves every weight as the whole batch does (SGD, lr 1: -gradient)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.training_args import OptimizerNames

    from lancy_trl.config import resolve
    from lancy_trl.train.arguments import sft_config
    from lancy_trl.train.methods.sft import SFTArgs
    from lancy_trl.train.trainer import LancySFTTrainer

    rows = chat_rows("costs rose ", [(1, "negative"), (6, "neutral outlook"), (3, "positive"), (9, "negative")])
    tok = padded_tokenizer(tiny_model)
    deltas = []
    for micro in (4, 2):
        args = resolve(SFTArgs, flags={"batch_size": 4, "micro_batch_size": micro, "use_lora": False})
        config = sft_config(args, tmp_path / str(micro), {"device": "cpu", "precision": "fp32",
                                                             "attn_implementation": "sdpa"}, has_eval=False)
        assert config.gradient_accumulation_steps == 4 // micro
        config.max_steps, config.optim, config.learning_rate, config.max_grad_norm = 1, OptimizerNames.SGD, 1.0, 0.0
        config.warmup_steps, config.lr_scheduler_type, config.save_strategy = 0, "constant", "no"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        LancySFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok).train()
        deltas.append({k: p.detach() - before[k] for k, p in model.named_parameters()})
    whole, split = deltas
    assert any(d.abs().sum() > 0 for d in whole.values())
    for k in whole:
        assert torch.allclose(whole[k], split[k], atol=1e-6, rtol=1e-4), k


@pytest.mark.parametrize(("arch", "use_lora", "tie"),
                         [("llama", False, True), ("llama", True, True), ("qwen2", False, True), ("llama", False, False)])
def test_lean_activations_keep_loss_and_gradients_and_save_memory(tmp_path, arch, use_lora, tie):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lancy_trl.train.speed.lean import lean_activations
    from tests.conftest import build_tiny_model

    path = build_tiny_model(tmp_path / arch, arch, tie=tie)
    torch.manual_seed(1)
    batches = [torch.randint(0, 100, (3, 11)) for _ in range(4)]
    batches[0][0, :3] = batches[2][1, 4:] = AutoModelForCausalLM.from_pretrained(path).config.pad_token_id
    results = []
    for lean in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path)
        if use_lora:
            model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj", "up_proj"],
                                                     init_lora_weights=False))
        changed = lean_activations(model) if lean else 0
        assert changed == (9 if lean else 0)  # 2 MLPs, 2 x 2 layer norms, the final norm, embedding and head
        saved: list[int] = []

        def pack(t, saved=saved):
            saved.append(0 if isinstance(t, torch.nn.Parameter) else t.numel())
            return t

        steps = []
        # a step, a step of two accumulated backwards after zero_grad() (grads None), a step after zero_grad(False)
        for group, set_to_none in (([0], True), ([1, 2], True), ([3], False)):
            model.zero_grad(set_to_none=set_to_none)
            for b in group:
                labels = batches[b].clone()
                labels[:, :6] = -100
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = model(input_ids=batches[b], labels=labels).loss
                loss.backward()
            steps.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
        results.append((steps, sum(saved)))
    (steps0, saved0), (steps1, saved1) = results
    assert saved1 < saved0
    for (loss0, g0), (loss1, g1) in zip(steps0, steps1):
        assert loss1 == pytest.approx(loss0, rel=1e-6) and g0.keys() == g1.keys() and g0
        for k in g0:
            assert torch.allclose(g0[k], g1[k], atol=1e-6, rtol=1e-4), k
    if not use_lora:
        assert any("embed_tokens" in k for k in steps1[0][1]) and (tie or any("lm_head" in k for k in steps1[0][1]))
