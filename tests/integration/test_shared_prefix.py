"""Shared-prefix batches: the common prefix computed once gives the batch's loss and gradients."""

import pytest


def rows_with_header(words: list[tuple[str, str]]) -> list[dict]:
    system = {"role": "system", "content": "you are a financial analyst classify the sentiment"}
    return [
        {"prompt": [system, {"role": "user", "content": f"sentence: {text}"}],
         "completion": [{"role": "assistant", "content": answer}]}
        for text, answer in words
    ]


ROWS = rows_with_header([
    ("profit rose", "positive"), ("sales fell for the quarter", "negative"),
    ("the board will meet", "neutral sentiment"), ("net margin increased to a record", "positive"),
])


def test_plan_packs_the_common_prefix_once():
    import torch

    from lancy_trl.train.speed.prefix import plan

    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 3, 0, 0], [5, 6, 4, 4, 4, 4]])
    mask = (ids != 0).long()
    labels = torch.full_like(ids, -100)
    labels[:, 4:] = ids[:, 4:]  # rows 0 and 2 learn from position 4 on: hidden position 3 predicts it
    batch, layout = plan(ids, mask, labels)
    assert layout.prefix == 2  # rows share [5, 6]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 7, 3, 4, 4, 4, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3, 2, 3, 4, 5]]
    assert layout.tokens == 11 and layout.packed_position(torch.tensor([2]), torch.tensor([3])).tolist() == [8]
    assert layout.mask.shape == (3, 1, 4, 6) and layout.mask[1, 0, 1].tolist() == [True, True, True, True, False, False]
    labels[:, 2:] = ids[:, 2:]  # position 1 predicts a label now: the prefix stops before it
    assert plan(ids, mask, labels)[1].prefix == 1
    labels[:, 1:] = ids[:, 1:]
    assert plan(ids, mask, labels) is None  # nothing left to share
    assert plan(ids[:1], mask[:1], labels[:1]) is None  # one row
    left = torch.tensor([[0, 5, 6, 7], [5, 6, 7, 8]])
    assert plan(left, (left != 0).long(), torch.full_like(left, -100)) is None  # left padding: batch runs as it is
    other = torch.tensor([[1, 6, 7, 8], [5, 6, 7, 8]])
    assert plan(other, None, torch.full_like(other, -100)) is None  # first tokens differ


WINDOW = {"sliding_window": 9, "layer_types": ["full_attention", "sliding_attention"]}  # shorter than the rows


@pytest.mark.parametrize(("arch", "use_lora", "lean", "checkpoint", "window"),
                         [("llama", False, False, 0.0, False), ("llama", True, True, 0.0, False),
                          ("qwen2", False, True, 0.0, False), ("llama", False, True, 1.0, False),
                          ("qwen2", False, True, 0.0, True)])
def test_shared_prefix_keeps_loss_and_gradients(tmp_path, arch, use_lora, lean, checkpoint, window):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from lancy_trl.train.trainer import LancySFTTrainer
    from tests.conftest import build_tiny_model

    path = build_tiny_model(tmp_path / arch, arch)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = "<|endoftext|>"
    results = []
    for shared in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **(WINDOW if window else {}))
        config = SFTConfig(output_dir=str(tmp_path / str(shared)), per_device_train_batch_size=4, report_to="none",
                           bf16=False, use_cpu=True, gradient_checkpointing=False, max_length=256)
        peft = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                          init_lora_weights=False) if use_lora else None
        trainer = LancySFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(ROWS), processing_class=tok,
                                  peft_config=peft, shared_prefix=shared, lean_activations=lean,
                                  checkpoint_layers=checkpoint)
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.train()
        planned = trainer._plan_shared_prefix({k: v for k, v in batch.items() if k != "labels"}, batch["labels"])
        assert (planned is not None) is shared
        if shared:
            assert planned[1].prefix >= 10 and planned[1].tokens < batch["attention_mask"].sum()  # header shared
        n = (batch["labels"][:, 1:] != -100).sum()
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, trainer.body_tokens))
    (loss0, g0, body0), (loss1, g1, body1) = results
    assert loss1 == pytest.approx(loss0, rel=1e-5) and g0.keys() == g1.keys() and g0
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-6, rtol=1e-4), k
    assert body1 < body0
    if window:  # the window was in force: the same batch with full attention gives another loss
        with torch.no_grad():
            losses = [AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **kw)(**batch).loss.item()
                      for kw in ({}, WINDOW)]
        assert abs(losses[0] - losses[1]) > 1e-4


def test_shared_prefix_refuses_other_attention_and_leaves_transformers_sdpa_alone(tiny_model, tmp_path):
    """lancy's attention is registered under its own name: asked for with eager attention it stops, and after a
    shared-prefix step transformers' global SDPA function is still its own."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from trl import SFTConfig

    from lancy_trl.errors import LancyError
    from lancy_trl.train.speed.prefix import NAME, Layout
    from lancy_trl.train.trainer import LancySFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.pad_token = "<|endoftext|>"
    config = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none", bf16=False,
                       use_cpu=True, gradient_checkpointing=False, max_length=64)

    def trainer(attn):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn)
        return LancySFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(ROWS), processing_class=tok,
                               shared_prefix=True)

    with pytest.raises(LancyError, match="--no-shared-prefix"):
        trainer("eager")
    sdpa = trainer("sdpa")
    assert sdpa.model.config._attn_implementation == NAME
    sdpa.compute_loss(sdpa.model, dict(next(iter(sdpa.get_train_dataloader()))))
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward
    layout = Layout(prefix=1, index=None, valid=None, mask=None, offsets=None, tokens=3, calls=1)
    with pytest.raises(LancyError, match="reached 1 of this model's 2 attention layers"):
        layout.check(sdpa.model)  # a layer whose attention bypassed the registry


def test_shared_prefix_default_follows_attention():
    from lancy_trl.config import resolve
    from lancy_trl.errors import LancyError
    from lancy_trl.train.arguments import use_shared_prefix
    from lancy_trl.train.methods.sft import SFTArgs

    args, cuda = resolve(SFTArgs), {"device": "cuda"}
    cpu = {"attn_implementation": "sdpa", "device": "cpu", "model_type": "llama"}
    assert use_shared_prefix(args, cpu) is True
    assert use_shared_prefix(args, {**cpu, "attn_implementation": "flash_attention_2"}) is False
    assert use_shared_prefix(args, {**cpu, **cuda}) is False  # not measured on a GPU: opt-in there
    assert use_shared_prefix(resolve(SFTArgs, flags={"shared_prefix": True}), {**cpu, **cuda}) is True
    assert use_shared_prefix(resolve(SFTArgs, flags={"shared_prefix": False}), cpu) is False
    with pytest.raises(LancyError, match="--shared-prefix needs SDPA"):
        use_shared_prefix(resolve(SFTArgs, flags={"shared_prefix": True}), {**cpu, "attn_implementation": "eager"})
    gpt2 = {**cpu, "model_type": "gpt2"}  # a family it is not written for: off by default, refused when asked for
    assert use_shared_prefix(args, gpt2) is False
    with pytest.raises(LancyError, match="written for llama, qwen2, qwen3 models \\(this is gpt2\\)"):
        use_shared_prefix(resolve(SFTArgs, flags={"shared_prefix": True}), gpt2)


def test_shared_prefix_refuses_a_softcap():
    import torch

    from lancy_trl.errors import LancyError
    from lancy_trl.train.speed.prefix import attention, plan

    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 9]])
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    _, layout = plan(ids, None, labels)
    q = torch.randn(1, 2, layout.tokens, 4)
    with pytest.raises(LancyError, match="--no-shared-prefix"):
        attention(None, q, q, q, None, softcap=30.0, **{"lancy_prefix_layout": layout})
