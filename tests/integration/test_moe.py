"""Mixture-of-experts models: a tiny random Qwen2-MoE (4 experts, 2 per token, a shared expert) trains LoRA with the
router's load-balancing loss added, weighted and logged; routers get no adapters; families are recognised from their
configs; encoder-decoders (Switch Transformers) are refused up front."""

import json

import pytest
from typer.testing import CliRunner

from lancy_trl.cli import app
from tests.conftest import build_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-moe"), "qwen2_moe")


def _first_step(run):
    return next(json.loads(line) for line in (run / "logs" / "training.log").read_text().splitlines()
                if line.startswith("{") and json.loads(line).get("step") == 1 and "loss" in json.loads(line))


def test_a_tiny_moe_trains_lora_with_its_router_loss_and_no_router_adapters(tiny_moe, tmp_path):
    from safetensors.torch import load_file

    result = runner.invoke(app, ["sft", "--model", str(tiny_moe), "--max-steps", "3", "--eval-steps", "3",
                                 "--learning-rate", "1e-2", "--output-dir", str(tmp_path / "runs"), "--run-name", "moe"])
    assert result.exit_code == 0, result.output
    assert "mixture of experts: 4 experts, 2 per token" in result.output and "routers without LoRA" in result.output
    run = tmp_path / "runs" / "moe"
    info = json.loads((run / "run.json").read_text())
    facts = info["model_info"]
    assert (facts["experts"], facts["experts_per_token"]) == (4, 2)
    assert facts["active_params"] == facts["total_params"] - facts["expert_params"] // 2  # 2 of 4 experts' weights
    assert info["router_aux_loss_coef"] == pytest.approx(0.001)  # the config's own weight
    assert "aux_loss" in _first_step(run)  # logged every time the loss is
    assert "shared_expert_gate" not in facts["lora_target_modules"] and "q_proj" in facts["lora_target_modules"]
    adapter = load_file(run / "model" / "adapter_model.safetensors")
    assert adapter and not any("gate." in k and "gate_proj" not in k for k in adapter)  # no router weight adapted
    assert "score accuracy" in (run / "logs" / "training.log").read_text()  # the in-training score ran on the MoE


def test_the_router_loss_weight_is_the_flag(tiny_moe, tmp_path):
    """--router-aux-loss-coef 1 adds the whole auxiliary loss to the first step's loss; 0 adds nothing."""
    losses, aux = {}, None
    for coef in ("0", "1"):
        result = runner.invoke(app, ["sft", "--model", str(tiny_moe), "--max-steps", "1", "--router-aux-loss-coef", coef,
                                     "--output-dir", str(tmp_path / "runs"), "--run-name", coef])
        assert result.exit_code == 0, result.output
        first = _first_step(tmp_path / "runs" / coef)
        losses[coef], aux = first["loss"], first.get("aux_loss", aux)
    assert aux and losses["1"] - losses["0"] == pytest.approx(aux, rel=1e-3)


def test_router_loss_on_a_dense_model_is_one_line_before_a_run(tiny_model, tmp_path):
    result = runner.invoke(app, ["sft", "--model", str(tiny_model), "--router-aux-loss-coef", "0.01",
                                 "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "is a dense model: drop --router-aux-loss-coef" in result.output
    assert not any((tmp_path / "runs").glob("*"))


@pytest.mark.parametrize("family, settings, expected", [
    ("MixtralConfig", {}, (8, 2)),
    ("Qwen3MoeConfig", {}, (128, 8)),
    ("DeepseekV3Config", {}, (256, 8)),
    ("DbrxConfig", {}, (4, 1)),  # in its ffn_config
    ("OlmoeConfig", {}, (64, 8)),
    ("LlamaConfig", {}, (0, 0)),
])
def test_expert_counts_are_read_across_families(family, settings, expected):
    import transformers

    from lancy_trl.scale.moe import experts

    assert experts(getattr(transformers, family)(**settings)) == expected


@pytest.mark.parametrize("family", ["MixtralConfig", "PhimoeConfig", "Qwen2MoeConfig"])
def test_routers_are_found_and_left_out_of_the_default_lora_targets(family):
    import transformers
    from transformers import AutoModelForCausalLM

    from lancy_trl.models import lora_targets
    from lancy_trl.scale.moe import routers

    config = getattr(transformers, family)(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, moe_intermediate_size=16,
                                           shared_expert_intermediate_size=16)
    model = AutoModelForCausalLM.from_config(config)
    found = routers(model)
    assert found and all(".mlp." in name or ".block_sparse_moe." in name for name in found), found
    targets = lora_targets(model)
    leaves = {name.rsplit(".", 1)[-1] for name in found}
    assert "q_proj" in targets and not leaves & set(targets), (leaves, targets)


def test_an_encoder_decoder_is_refused_with_what_lancy_trains(tmp_path):
    from transformers import SwitchTransformersConfig

    SwitchTransformersConfig(num_layers=1, num_decoder_layers=1, d_model=16, num_heads=2, d_kv=8, d_ff=32,
                             num_experts=2).save_pretrained(tmp_path / "switch")
    result = runner.invoke(app, ["sft", "--model", str(tmp_path / "switch"), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "is an encoder-decoder model (switch_transformers)" in result.output
    assert "mixture-of-experts ones included" in result.output and "Traceback" not in result.output
    assert not any((tmp_path / "runs").glob("*"))


def test_active_parameters_of_mixtral_8x7b_from_its_config():
    """The README's figure: a weightless Mixtral-8x7B (transformers' default MixtralConfig) uses 2 of 8 experts."""
    import torch
    from transformers import AutoModelForCausalLM, MixtralConfig

    from lancy_trl.scale.moe import describe

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(MixtralConfig())
    facts = describe(model)
    assert sum(p.numel() for p in model.parameters()) == 46_702_792_704
    assert (facts["experts"], facts["experts_per_token"], facts["active_params"]) == (8, 2, 12_879_925_248)
