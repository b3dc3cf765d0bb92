"""The DeepSpeed configs lancy ships: each parses with DeepSpeed's own DeepSpeedConfig once the Hugging Face
integration has filled its "auto" values from a run's arguments, and `lancy configs` names them."""

import json

import pytest
from typer.testing import CliRunner

from lancy_trl.cli import app
from lancy_trl.engines import SHIPPED, resolve

runner = CliRunner()
deepspeed = pytest.importorskip("deepspeed")  # a dev dependency: CI installs it


@pytest.mark.parametrize("name", list(SHIPPED))
def test_every_shipped_config_validates_with_deepspeed_and_the_hf_integration(name, tiny_model, tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import AutoModelForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    raw = json.loads(resolve(name).read_text())
    assert "optimizer" not in raw  # the Trainer's torch AdamW: DeepSpeed's fused Adam needs CUDA
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             use_cpu=True, report_to="none")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)  # before a ZeRO-3 config would make loading sharded
    hf = HfTrainerDeepSpeedConfig(str(resolve(name)))
    hf.trainer_config_process(args)
    hf.trainer_config_finalize(args, model, num_training_steps=10)
    filled = hf.config
    unset_hf_deepspeed_config()
    assert "auto" not in json.dumps(filled), filled  # every "auto" filled from the run's arguments
    config = DeepSpeedConfig(filled)
    assert config.zero_optimization_stage == raw["zero_optimization"]["stage"]
    assert config.train_micro_batch_size_per_gpu == 4 and config.gradient_accumulation_steps == 2


def test_configs_list_and_path():
    listed = runner.invoke(app, ["configs", "list"])
    assert listed.exit_code == 0 and all(name in listed.output for name in SHIPPED)
    path = runner.invoke(app, ["configs", "path", "zero2"])
    assert path.exit_code == 0 and path.output.strip().endswith("engines/zero2.json")
    unknown = runner.invoke(app, ["configs", "path", "zero9"])
    assert unknown.exit_code == 1 and "neither a shipped DeepSpeed config (zero1, zero2" in unknown.output


def test_an_unknown_deepspeed_config_is_refused_before_loading(tmp_path):
    result = runner.invoke(app, ["sft", "--model", str(tmp_path / "none"), "--deepspeed", "zero9",
                                 "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "--deepspeed: 'zero9' is neither a shipped" in result.output
    assert not (tmp_path / "runs").exists()
