"""lancy's GRPO trainer against TRL's: the policy pass (real tokens only, shared prefix once, LM head at completion
positions) gives the same log-probs, entropies and gradients; generation with one prefill per distinct prompt gives
the same completions."""

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from lancy_trl.train.grpo_trainer import LancyGRPOTrainer, realign


def _trainer(model_dir, tmp_path, shared_prefix, use_lora, temperature=0.7):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "sales rose"}]}] * 4)
    config = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, use_cpu=True,
                        temperature=temperature, report_to="none", gradient_checkpointing=False, bf16=False,
                        max_completion_length=12)
    peft = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False) if use_lora else None
    return LancyGRPOTrainer(model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                            args=config, train_dataset=data, processing_class=tok, peft_config=peft,
                            shared_prefix=shared_prefix)


def _batch(vocab):
    """Four rows as TRL lays them out: left-padded prompts sharing a start, right-padded completions of which one
    ends early and one is empty."""
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(5, vocab, (4, 9), generator=g)
    prompt[:, :3] = prompt[0, :3]  # a shared chat header
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[1, :2] = 0  # shorter prompts, left padding
    prompt_mask[3, :4] = 0
    prompt[1, 2:5] = prompt[0, :3]  # each row's header sits after its padding
    prompt[3, 4:7] = prompt[0, :3]
    completion = torch.randint(5, vocab, (4, 6), generator=g)
    completion_mask = torch.ones_like(completion)
    completion_mask[1, 4:] = 0
    completion_mask[2, 2:] = 0
    return torch.cat([prompt, completion], 1), torch.cat([prompt_mask, completion_mask], 1), 6


def test_realign_keeps_each_rows_real_tokens_in_order():
    ids = torch.tensor([[0, 0, 7, 8, 9, 0], [5, 6, 7, 8, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    new, new_mask, (rows, steps), cols = realign(ids, mask, 2, pad_id=0)
    assert new.tolist() == [[7, 8, 9, 0, 0, 0], [5, 6, 7, 8, 3, 4]] and new_mask.sum(1).tolist() == [3, 6]
    assert list(zip(rows.tolist(), steps.tolist(), cols.tolist())) == [(0, 0, 1), (1, 0, 3), (1, 1, 4)]


@pytest.mark.parametrize("shared_prefix", [False, True])
@pytest.mark.parametrize("use_lora", [False, True])
def test_policy_pass_equals_trls(tiny_model, tmp_path, shared_prefix, use_lora, monkeypatch):
    from lancy_trl.train import grpo_trainer
    from lancy_trl.train.speed import prefix

    plans = []
    monkeypatch.setattr(grpo_trainer, "plan", lambda *a: plans.append(prefix.plan(*a)) or plans[-1])
    trainer = _trainer(tiny_model, tmp_path, shared_prefix, use_lora)
    assert trainer.lean_logps
    model = trainer.model
    ids, mask, completion = _batch(model.config.vocab_size if not use_lora else model.get_base_model().config.vocab_size)
    counted = mask[:, -completion:].bool()
    weights = torch.randn(4, completion, generator=torch.Generator().manual_seed(2))

    def run(fn):
        model.zero_grad(set_to_none=True)
        logps, entropy, _ = fn(trainer, model, ids, mask, completion, compute_entropy=True)
        ((logps * weights)[counted].sum() + entropy[counted].sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logps.detach(), entropy.detach(), grads

    lancy = run(LancyGRPOTrainer._get_per_token_logps_and_entropies)
    trl = run(GRPOTrainer._get_per_token_logps_and_entropies)
    assert [p is not None and p[1].prefix for p in plans] == ([3] if shared_prefix else [])  # the header, once
    assert torch.allclose(lancy[0][counted], trl[0][counted], atol=1e-5)
    assert torch.allclose(lancy[1][counted], trl[1][counted], atol=1e-5)
    assert (lancy[0][~counted] == 0).all()
    assert lancy[2].keys() == trl[2].keys() and lancy[2]
    for name, grad in trl[2].items():
        assert torch.allclose(lancy[2][name], grad, atol=1e-5, rtol=1e-4), name


def test_other_families_take_trls_pass(tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tests.conftest import build_tokenizer

    tok = build_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    assert AutoTokenizer.from_pretrained(tmp_path / "gpt2")
    trainer = _trainer(tmp_path / "gpt2", tmp_path / "out", shared_prefix=False, use_lora=False)
    assert not trainer.lean_logps


@pytest.mark.parametrize("sample", [False, True])
def test_generation_with_one_prefill_per_prompt_equals_trls(tiny_model, tmp_path, sample, monkeypatch):
    trainer = _trainer(tiny_model, tmp_path, shared_prefix=True, use_lora=True, temperature=1.0)
    trainer.generation_config.do_sample = sample
    tok = trainer.processing_class
    texts = [tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
             for text in ("sales rose", "sales rose", "the bank fell on weak sales", "the bank fell on weak sales")]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    calls = []
    once = LancyGRPOTrainer._generate_prefill_once
    monkeypatch.setattr(LancyGRPOTrainer, "_generate_prefill_once", lambda self, p: calls.append(1) or once(self, p))
    torch.manual_seed(3)
    lancy, _ = trainer._generate_single_turn(prompts, None, {}, 2)
    torch.manual_seed(3)
    trl, _ = GRPOTrainer._generate_single_turn(trainer, prompts, None, {}, 2)
    assert len(prompts[0]) < len(prompts[2])  # left padding too
    assert calls == [1] and lancy == trl
    assert any(len(c) > 1 for c in lancy)
