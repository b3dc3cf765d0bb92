"""QLoRA on CPU: the frozen base in 4-bit NF4 (or 8-bit) through bitsandbytes 0.50+, LoRA adapters trained on it."""

import json

import pytest
from typer.testing import CliRunner

from lancy_trl.cli import app

runner = CliRunner()
bnb = pytest.importorskip("bitsandbytes")  # a dev dependency: CI installs it; a user without it gets the one-line error


@pytest.mark.parametrize("flag, key, layer", [("--load-in-4bit", "load_in_4bit", "Linear4bit"),
                                              ("--moe_load_in_8bit", "load_in_8bit", "Linear8bitLt")])
def test_a_quantized_base_trains_its_lora_adapter_on_cpu(tiny_model, tmp_path, flag, key, layer, monkeypatch):
    import torch
    from peft import AutoPeftModelForCausalLM

    from lancy_trl.train import trainer as lancy_trainer

    seen = {}
    original = lancy_trainer.LancySFTTrainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["layers"] = {type(m).__name__ for m in self.model.modules()}

    monkeypatch.setattr(lancy_trainer.LancySFTTrainer, "__init__", spy)
    result = runner.invoke(app, ["sft", "--model", str(tiny_model), flag, "--max-steps", "3", "--learning-rate", "1e-2",
                                 "--eval-steps", "3", "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert layer in seen["layers"]  # the base really is quantized while training
    (run,) = (tmp_path / "runs").iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["config"][key]
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model).num_parameters()
    assert info["model_info"]["total_params"] == plain  # the quantized base's parameters counted, not its bytes
    model = AutoPeftModelForCausalLM.from_pretrained(run / "model")
    assert any(torch.count_nonzero(p) for n, p in model.named_parameters() if "lora_B" in n)  # the adapter moved
    scored = runner.invoke(app, ["eval", "--model", str(run), "--method", "score", "--limit", "8", "--json"])
    assert scored.exit_code == 0, scored.output  # the adapter evaluates on the full-precision base


def test_a_4bit_layer_passes_gradients_after_an_evaluation(tiny_model):
    """bitsandbytes 0.50 repacks a 4-bit weight for a bf16 inference kernel, without a backward, the first time the
    layer runs in eval mode on an AVX512-BF16 CPU: a run that evaluated once would stop passing gradients through its
    frozen base. lancy's training model keeps the differentiable path (elsewhere the two paths are the same)."""
    import torch

    from lancy_trl.config import resolve
    from lancy_trl.models import ModelSource, load_model
    from lancy_trl.train.methods.sft import SFTArgs

    args = resolve(SFTArgs, flags={"model": str(tiny_model), "load_in_4bit": True})
    model = load_model(ModelSource("tiny", str(tiny_model), "local"), args, device="cpu").model
    layer = model.model.layers[0].mlp.down_proj  # 64 inputs: at least one quantization block
    assert type(layer).__name__ == "Linear4bit"
    x = torch.randn(3, layer.in_features, requires_grad=True)

    def grad_and_output():
        x.grad = None
        y = layer(x)
        y.square().sum().backward()
        return x.grad.clone(), y.detach()

    before = grad_and_output()
    model.eval()
    with torch.no_grad():
        evaluated = layer(x.detach())
    model.train()
    after = grad_and_output()
    torch.testing.assert_close(evaluated, before[1])  # evaluation computes as training does
    torch.testing.assert_close(after[0], before[0])  # and gradients still flow afterwards


def test_missing_or_old_bitsandbytes_is_one_line(monkeypatch):
    import importlib.metadata
    import importlib.util

    from lancy_trl.errors import LancyError
    from lancy_trl.models import _bnb_config

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.45.0")
    with pytest.raises(LancyError, match="on CPU needs bitsandbytes 0.50 or later"):
        _bnb_config("cpu", 4, "fp32")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LancyError, match=r"needs bitsandbytes: pip install 'bitsandbytes>=0.50'"):
        _bnb_config("cpu", 4, "fp32")
