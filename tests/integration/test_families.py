"""Every model family the finance pipeline trains (GPT-2, Llama/SmolLM, Qwen2, Qwen3, Gemma-2) trains with lancy's
defaults exactly as with every speed path off: two steps of full fine-tuning on the same batches give the same losses
and the same weights as TRL's SFTTrainer on the plain model."""

import pytest

GEMMA_TEMPLATE = (  # Gemma's own template refuses a system message
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>model\n' }}{% endif %}"
)


def tiny_family(path, family):
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config, Qwen3Config

    from tests.conftest import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer(pad=True)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    common = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, **ids}
    config = {
        "gpt2": lambda: GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids),
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        "qwen3": lambda: Qwen3Config(**common, head_dim=8),
        "gemma2": lambda: Gemma2Config(**common, head_dim=8, sliding_window=16, query_pre_attn_scalar=8),
    }[family]()
    model = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(model).__name__]
    model.save_pretrained(path)
    if family == "gemma2":
        tok.chat_template = GEMMA_TEMPLATE
    tok.save_pretrained(path)
    return path


def train_two_steps(path, tmp_path, lancy: bool):
    """Two full fine-tuning steps: lancy's trainer with the options `lancy sft` picks, or TRL's on the plain model."""
    import torch
    from trl import SFTTrainer

    from lancy_trl.config import resolve
    from lancy_trl.data.build import build_data
    from lancy_trl.data.tokens import fit_to_model
    from lancy_trl.models import ModelSource, load_model
    from lancy_trl.train.arguments import sft_config, trainer_options
    from lancy_trl.train.methods.sft import SFTArgs
    from lancy_trl.train.trainer import LancySFTTrainer

    args = resolve(SFTArgs, flags={"model": str(path), "use_lora": False, "max_steps": 2, "learning_rate": 1e-3,
                                   "max_examples": 32, "eval_fraction": 0.0, "logging_steps": 1})
    torch.manual_seed(0)
    loaded = load_model(ModelSource("tiny", str(path), "local"), args, device="cpu")
    data = build_data(args)
    fit_to_model(data, loaded.tokenizer, args)
    config = sft_config(args, tmp_path / ("lancy" if lancy else "plain"), loaded.info, has_eval=False)
    config.save_strategy = "no"
    options = trainer_options(args, loaded.info) if lancy else {}
    cls = LancySFTTrainer if lancy else SFTTrainer
    trainer = cls(model=loaded.model, args=config, train_dataset=data.train, processing_class=loaded.tokenizer,
                  **options)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return losses, weights, loaded.info, options, data


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "qwen3", "gemma2"])
def test_defaults_train_each_family_as_the_plain_path(family, tmp_path):
    import torch

    from lancy_trl.train.speed.prefix import MODEL_TYPES

    path = tiny_family(tmp_path / family, family)
    fast_losses, fast, info, options, data = train_two_steps(path, tmp_path, lancy=True)
    plain_losses, plain, _, _, _ = train_two_steps(path, tmp_path, lancy=False)
    # the attention transformers supports for the family, and shared prefixes only where they are written for it
    assert info["attn_implementation"] == ("eager" if family == "gemma2" else "sdpa")
    assert options["shared_prefix"] == (family in MODEL_TYPES)
    if family == "gemma2":  # the system prompt reaches the model inside the first user turn
        assert data.train[0]["prompt"][0]["role"] == "user" and "analyst" in data.train[0]["prompt"][0]["content"]
    assert len(fast_losses) == len(plain_losses) >= 2
    assert fast_losses == pytest.approx(plain_losses, rel=1e-5)
    assert fast.keys() == plain.keys()
    for k in plain:
        assert torch.allclose(fast[k], plain[k], atol=2e-6, rtol=1e-4), k
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(path).state_dict()
    assert sum(not torch.equal(before[k], fast[k]) for k in before if k in fast) > len(before) // 2  # it trained
