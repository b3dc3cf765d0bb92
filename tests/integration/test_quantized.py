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
    model = AutoPeftModelForCausalLM.from_pretrained(run / "model")
    assert any(torch.count_nonzero(p) for n, p in model.named_parameters() if "lora_B" in n)  # the adapter moved
    scored = runner.invoke(app, ["eval", "--model", str(run), "--method", "score", "--limit", "8", "--json"])
    assert scored.exit_code == 0, scored.output  # the adapter evaluates on the full-precision base


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
