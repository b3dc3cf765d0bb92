"""Several processes for one run on CPU (gloo): `--num-processes 2` through torch's launcher, a 2-node localhost
rendezvous, one run directory, and Ctrl-C. Each launch costs seconds of start-up per process, so each test covers a
method too: pretraining across two nodes, GRPO stopped by Ctrl-C (sft: DeepSpeed's tests, test_deepspeed.py)."""

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
from tests.conftest import launched


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


def test_a_bad_flag_under_the_launcher_is_one_line_per_process(common, tmp_path):
    result = launched("sft", *common, "--num-processes", 2, "--lora-target-modules", "nonexistent")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all("no such module" in line for line in lines) and "Traceback" not in result.stderr, lines
    assert not (tmp_path / "runs").exists()  # no output folder made on bad input


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_pretrain_one_run(tiny_model, tmp_path):
    """What a 2-node launch runs, on one machine: two torchrun invocations meeting at one rendezvous endpoint; the
    run is a pretraining one (plain DDP over packed blocks)."""
    port = _free_port()
    argv = ["pretrain", "--model", tiny_model, "--output-dir", tmp_path / "runs", "--max-steps", 2, "--save-steps", 2,
            "--max-examples", 32, "--dataset", "finsent", "--max-length", 64, "--batch-size", 2, "--run-name", "nodes"]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                               "-m", "lancy_trl", *map(str, argv)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for rank in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["nodes"]
    run = tmp_path / "runs" / "nodes"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["processes"] == 2 and info["global_batch_size"] == 4
    assert (run / "model").is_dir()
    assert sum(out.count("Done in") for out, _ in outputs) == 1  # the main process alone speaks


def test_ctrl_c_under_the_launcher_stops_every_grpo_process_at_a_step_and_saves(tiny_model, tmp_path):
    """torch's launcher runs the workers in sessions of their own: Ctrl-C reaches the launcher alone, which passes it
    on and waits while they agree on a step, save and exit (torch's own handling kills them 30 s into a save). The
    run is GRPO's (generation, then plain DDP)."""
    run = tmp_path / "runs" / "stop"
    cmd = [sys.executable, "-m", "lancy_trl", "grpo", "--model", str(tiny_model), "--output-dir", str(tmp_path / "runs"),
           "--max-steps", "5000", "--save-steps", "2", "--max-examples", "32", "--dataset", "finsent",
           "--batch-size", "4", "--num-generations", "2", "--num-processes", "2", "--run-name", "stop"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300  # any checkpoint: checkpoint-2 alone can be rotated away between two looks
    while not any((run / "checkpoints").glob("checkpoint-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err and "terminate called" not in err, out + err
    assert "2 processes: global batch" in out and out.count("Interrupted at step") == 1, out + err  # one speaks
    assert out.count("Stopping at step") == 1, out
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and 2 < info["steps"] < 5000 and info["processes"] == 2
    assert (run / "checkpoints" / f"checkpoint-{info['steps']}").is_dir()  # the step they stopped at, saved
