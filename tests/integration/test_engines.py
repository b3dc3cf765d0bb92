"""The DeepSpeed configs lancy ships: each parses with DeepSpeed's own DeepSpeedConfig once the Hugging Face
integration has filled its "auto" values from a run's arguments, and `lancy configs` names them."""

import json

import pytest
from typer.testing import CliRunner

from lancy_trl.cli import app
from lancy_trl.scale.engines import DEEPSPEED, SHIPPED, resolve

runner = CliRunner()
deepspeed = pytest.importorskip("deepspeed")  # a dev dependency: CI installs it


@pytest.mark.parametrize("name", list(DEEPSPEED))
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
    assert unknown.exit_code == 1 and "neither a shipped DeepSpeed or FSDP config (zero1, zero2" in unknown.output


def test_an_unknown_deepspeed_config_is_refused_before_loading(tmp_path):
    result = runner.invoke(app, ["sft", "--model", str(tmp_path / "none"), "--deepspeed", "zero9",
                                 "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "--deepspeed: 'zero9' is neither a shipped" in result.output
    assert not (tmp_path / "runs").exists()


def test_the_shipped_fsdp_file_is_an_accelerate_config_and_the_trainers_fsdp_settings(tmp_path):
    """One file for `accelerate launch --config_file` and for `--fsdp`: accelerate reads it as a launch config, and
    its fsdp_config section becomes the Trainer's FSDP plugin (FSDP2, full shard, decoder layers wrapped)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin
    from trl import SFTConfig

    from lancy_trl.scale.engines import fsdp_config
    from lancy_trl.train.arguments import engine_arguments

    launch = load_config_from_file(str(resolve("fsdp", "FSDP")))
    assert str(launch.distributed_type).endswith("FSDP") and launch.fsdp_config["fsdp_version"] == 2
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **engine_arguments(type("A", (), {"fsdp": "fsdp"})()))
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert str(plugin.state_dict_type).endswith("FULL_STATE_DICT")  # the final model saved whole, loadable anywhere
    assert plugin.auto_wrap_policy is not None  # transformer-based: the model's _no_split_modules (its decoder layer)
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"fsdp_version": 2, "fsdp_offload_params": True}))
    assert fsdp_config(str(own)) == {"version": 2, "cpu_offload": True}


@pytest.mark.parametrize("flags, message", [
    (["--fsdp"], "FSDP runs on GPUs (accelerate does not shard over CPU processes"),
    (["--fsdp", "zero2"], "--fsdp: 'zero2' is neither a shipped FSDP config (fsdp)"),
    (["--fsdp", "--deepspeed", "zero2"], "--deepspeed and --fsdp are two sharding engines: keep one"),
    (["--fsdp", "--load-in-4bit"], "--fsdp does not shard a 4-bit or 8-bit base in lancy: use --deepspeed zero2"),
])
def test_fsdp_mistakes_are_one_line_before_anything_loads(tiny_model, tmp_path, flags, message):
    result = runner.invoke(app, ["sft", "--model", str(tiny_model), *flags, "--device", "cpu",
                                 "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not any((tmp_path / "runs").glob("*"))


def test_lancys_speed_paths_are_off_under_sharding_engines_and_several_processes(tiny_model):
    """Decided by what runs, not by the process count: DeepSpeed or FSDP (even one process) get no lean activations,
    no shared prefixes and no compact loss; several plain processes keep lean activations but not the in-place
    vocabulary gradients, which bypass DDP's hooks."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from lancy_trl.scale.engines import one_plain_process
    from lancy_trl.train.trainer import memory_paths

    def trainer(processes, **engine):
        return SimpleNamespace(model=AutoModelForCausalLM.from_pretrained(tiny_model), accelerator=SimpleNamespace(
            num_processes=processes), args=SimpleNamespace(gradient_checkpointing=False), **engine)

    for engine in ({"is_fsdp_enabled": True}, {"is_deepspeed_enabled": True}):
        sharded = trainer(1, **engine)
        assert not one_plain_process(sharded) and memory_paths(sharded, 0.0, True) == (0, 0)
    ddp = trainer(2)
    _, lean = memory_paths(ddp, 0.0, True)
    alone = trainer(1)
    assert not one_plain_process(ddp) and one_plain_process(alone)
    assert 0 < lean < memory_paths(alone, 0.0, True)[1]  # the embedding and LM head stay plain under DDP


def test_multi_gpu_without_a_gpu_is_one_line_before_anything_launches(tiny_model, tmp_path):
    """--multi-gpu (and the pipeline's --multi_gpu) asks for one process per CUDA GPU: with none, one line."""
    result = runner.invoke(app, ["sft", "--model", str(tiny_model), "--multi_gpu", "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "--multi-gpu uses every CUDA GPU and torch sees none" in result.output
    assert "Traceback" not in result.output and not any((tmp_path / "runs").glob("*"))
