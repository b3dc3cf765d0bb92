"""Several processes for one run on CPU (gloo): `--num-processes 2` through torch's launcher, a 2-node localhost
rendezvous, one run directory, resume, and the same loss as one process with the same global batch."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lancy_trl.config import flag
from lancy_trl.scale.distributed import launch_arguments
from lancy_trl.train.methods.grpo import GRPOArgs
from lancy_trl.train.methods.pretrain import PretrainArgs
from lancy_trl.train.methods.sft import SFTArgs


def lancy(*args, env=None, timeout=600):
    done = subprocess.run([sys.executable, "-m", "lancy_trl", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    # every launch here is one of several multi-process runs in a row: none may end with gloo's threads torn down
    assert "terminate called" not in done.stderr, done.stderr
    return done


def test_every_lancy_flag_passes_through_torchruns_parser():
    """torchrun's parser completes abbreviations of its own options even after the script (`--nproc` is taken for
    --nproc-per-node): no lancy flag may be one."""
    from torch.distributed.run import get_args_parser

    for cls in (SFTArgs, PretrainArgs, GRPOArgs):
        for f in dataclasses.fields(cls):
            argv = ["sft", f"--{flag(f.name)}", "1", "--seed", "3"]
            parsed = get_args_parser().parse_args(launch_arguments(2, argv))
            assert parsed.training_script_args == argv and parsed.nproc_per_node == "2", f.name


@pytest.fixture
def common(tiny_model, tmp_path):
    return ["--model", tiny_model, "--output-dir", tmp_path / "runs", "--max-steps", 4, "--save-steps", 2,
            "--eval-steps", 2, "--learning-rate", 1e-2, "--max-examples", 64]


def test_two_processes_under_zero2_make_one_run_that_matches_one_process_and_resumes(common, tmp_path):
    """DeepSpeed ZeRO-2 on gloo, 2 processes x 4 examples, against 1 plain process x 8 (plain DDP: the pretrain and
    grpo tests below)."""
    pytest.importorskip("deepspeed")  # CI installs it (`pip install --no-build-isolation deepspeed`)
    from tests.conftest import kill_after_first_checkpoint, sft

    one = sft(*common, "--batch-size", 8, "--run-name", "one")  # the one-process reference, in this process
    assert one.exit_code == 0, one.output
    two = lancy("sft", *common, "--batch-size", 4, "--num-processes", 2, "--deepspeed", "zero2", "--run-name", "two")
    assert two.returncode == 0, two.stdout + two.stderr
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
    resumed = lancy("sft", "--resume", "latest", "--run-dir", run)  # the run's saved config: 2 processes, zero2
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

    result = lancy("sft", *common, "--batch-size", 4, "--num-processes", 2, "--deepspeed", "zero3", "--load-in-4bit",
                   "--run-name", "z3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "under DeepSpeed zero3" in result.stdout
    adapter = load_file(tmp_path / "runs" / "z3" / "model" / "adapter_model.safetensors")
    assert len(adapter) == 28 and all(t.numel() > 0 for t in adapter.values())  # every LoRA matrix, at full shape
    assert {tuple(t.shape) for t in adapter.values()} >= {(16, 32), (32, 16)}
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # trained, not the zero init


def test_a_bad_flag_under_the_launcher_is_one_line_per_process(common, tmp_path):
    result = lancy("sft", *common, "--num-processes", 2, "--lora-target-modules", "nonexistent")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all("no such module" in line for line in lines) and "Traceback" not in result.stderr, lines
    assert not (tmp_path / "runs").exists()  # no output folder made on bad input


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_train_one_run(common, tmp_path):
    """What a 2-node launch runs, on one machine: two torchrun invocations meeting at one rendezvous endpoint."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                               "-m", "lancy_trl", "sft", *map(str, common), "--batch-size", "4", "--run-name", "nodes"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for rank in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["nodes"]
    info = json.loads((tmp_path / "runs" / "nodes" / "run.json").read_text())
    assert info["status"] == "complete" and info["processes"] == 2 and info["global_batch_size"] == 8


@pytest.mark.parametrize("command, extra", [
    ("pretrain", ["--dataset", "finsent", "--max-length", 64, "--batch-size", 2]),
    ("grpo", ["--dataset", "finsent", "--batch-size", 4, "--num-generations", 2]),
])
def test_pretrain_and_grpo_run_with_two_processes(tiny_model, tmp_path, command, extra):
    result = lancy(command, "--model", tiny_model, "--output-dir", tmp_path / "runs", "--max-steps", 2,
                   "--save-steps", 2, "--max-examples", 32, "--num-processes", 2, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["processes"] == 2 and (run / "model").is_dir()
    assert "2 processes: global batch" in result.stdout and result.stdout.count("Done in") == 1


def test_ctrl_c_under_the_launcher_stops_every_process_at_a_step_and_saves(common, tmp_path):
    """torch's launcher runs the workers in sessions of their own: Ctrl-C reaches the launcher alone, which passes it
    on and waits while they agree on a step, save and exit (torch's own handling kills them 30 s into a save)."""
    run = tmp_path / "runs" / "stop"
    cmd = [sys.executable, "-m", "lancy_trl", "sft", *map(str, common), "--max-steps", "5000", "--num-processes", "2",
           "--run-name", "stop"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint-2").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert "Interrupted at step" in out and "Traceback" not in err, out + err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and 2 < info["steps"] < 5000
    assert (run / "checkpoints" / f"checkpoint-{info['steps']}").is_dir()  # the step they stopped at, saved
