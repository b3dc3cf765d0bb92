"""DeepSpeed ZeRO on CPU (gloo), two processes through torch's launcher: one run directory, resume from DeepSpeed's
own state, the same loss as one process with the same global batch, and a whole adapter saved from ZeRO-3's
partitioned weights."""

import json

import pytest

from tests.conftest import launched


@pytest.fixture
def common(tiny_model, tmp_path):
    return ["--model", tiny_model, "--output-dir", tmp_path / "runs", "--max-steps", 4, "--save-steps", 2,
            "--eval-steps", 2, "--learning-rate", 1e-2, "--max-examples", 64]


def test_two_processes_under_zero2_make_one_run_that_matches_one_process_and_resumes(common, tmp_path):
    """DeepSpeed ZeRO-2 on gloo, 2 processes x 4 examples, against 1 plain process x 8 (plain DDP: pretraining's and
    GRPO's tests in test_distributed.py)."""
    pytest.importorskip("deepspeed")  # CI installs it (`pip install --no-build-isolation deepspeed`)
    from tests.conftest import kill_after_first_checkpoint, sft

    one = sft(*common, "--batch-size", 8, "--run-name", "one")  # the one-process reference, in this process
    assert one.exit_code == 0, one.output
    extensions = tmp_path / "torch_extensions"  # where DeepSpeed compiles its kernels: a fresh environment's
    two = launched("sft", *common, "--batch-size", 4, "--num-processes", 2, "--deepspeed", "zero2", "--run-name", "two",
                   env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    assert two.returncode == 0, two.stdout + two.stderr
    assert not extensions.exists() and "built successfully" not in two.stdout  # no kernel compiled for training
    assert "Launching 2 processes" in two.stdout
    assert "2 processes under DeepSpeed zero2: global batch 8 (4 per process x 2 x 1" in two.stdout
    assert two.stdout.count("Done in") == 1  # one process speaks
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]  # one run directory per run
    run = tmp_path / "runs" / "two"
    info, alone = json.loads((run / "run.json").read_text()), json.loads((tmp_path / "runs" / "one" / "run.json").read_text())
    assert info["status"] == "complete" and info["processes"] == 2 and info["global_batch_size"] == 8
    assert len(list((run / "tensorboard").iterdir())) == 1
    engine, plain = info["model_info"], alone["model_info"]  # lancy's speed paths: off under DeepSpeed, on alone
    assert (engine["loss_path"], engine["lean_modules"], engine["shared_prefix"]) == ("trl", 0, False)
    assert plain["loss_path"] == "compact" and plain["lean_modules"] > 0 and plain["shared_prefix"]
    from safetensors.torch import load_file

    adapter = load_file(run / "model" / "adapter_model.safetensors")  # complete, not the empty-adapter trap
    assert len(adapter) == 28 and any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)
    assert (run / "checkpoints" / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own resumable state
    # the same global batch of the same rows (in another order): the same loss within a few percent
    assert info["train_loss"] == pytest.approx(alone["train_loss"], rel=0.05), (info["train_loss"], alone["train_loss"])

    kill_after_first_checkpoint(run)
    resumed = launched("sft", "--resume", "latest", "--run-dir", run)  # the run's saved config: 2 processes, zero2
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming {run} from checkpoint-2" in resumed.stdout
    again = json.loads((run / "run.json").read_text())
    assert again["status"] == "complete" and again["steps"] == 4
    assert again["train_loss"] == pytest.approx(info["train_loss"], rel=1e-3)


def test_qlora_under_zero3_with_two_processes_saves_a_complete_adapter(common, tmp_path):
    """ZeRO-3 partitions every weight across the processes: the saved adapter must be gathered whole (the well-known
    empty-adapter trap), here on a 4-bit base."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file

    result = launched("sft", *common, "--batch-size", 4, "--num-processes", 2, "--deepspeed", "zero3", "--load-in-4bit",
                   "--run-name", "z3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "under DeepSpeed zero3" in result.stdout
    adapter = load_file(tmp_path / "runs" / "z3" / "model" / "adapter_model.safetensors")
    assert len(adapter) == 28 and all(t.numel() > 0 for t in adapter.values())  # every LoRA matrix, at full shape
    assert {tuple(t.shape) for t in adapter.values()} >= {(16, 32), (32, 16)}
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # trained, not the zero init
