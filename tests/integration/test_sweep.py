"""`lancy sweep`: a 2x2 grid on the tiny model, killed -9 inside its second run, continued with `--resume`: the
finished run is skipped, the killed one resumes from its checkpoint, the rest start, and the compare table ends it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lancy_trl import runs
from tests.conftest import lancy

GRID = ["--grid", "learning_rate=1e-3,1e-2", "max_steps=6,12"]


def _state(pid: int) -> str | None:
    """A process's state letter (R, S, T stopped, Z zombie...) from /proc, None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _stopped_descendant(pid: int) -> int | None:
    """A stopped process under `pid` (the sweep's run that reached its fault point, forked by the sweep's server)."""
    parents, states = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)], states[int(entry)] = int(fields[1]), fields[0]
    for proc, state in states.items():
        up = proc
        while up in parents and up != pid:
            up = parents[up]
        if up == pid and proc != pid and state == "T":
            return proc
    return None


def test_a_killed_sweep_continues_with_the_run_it_was_in(tiny_model, tmp_path):
    out = tmp_path / "runs"
    argv = ["sweep", "sft", *GRID, "--model", str(tiny_model), "--max-examples", "32", "--save-steps", "10",
            "--eval-steps", "1000", "--output-dir", str(out), "--name", "grid"]
    # every run of the sweep stops itself (SIGSTOP) at its 11th step: only the second run (12 steps) gets there, past
    # its checkpoint at step 10; then the sweep is killed -9 and the stopped run dies with it
    sweep = subprocess.Popen([sys.executable, "-m", "lancy_trl", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "LANCY_FAULT": "step@11:stop"})
    second = out / "grid" / "learning_rate=1e-3+max_steps=12"
    deadline = time.time() + 240
    while (stopped := _stopped_descendant(sweep.pid)) is None:
        assert sweep.poll() is None and time.time() < deadline, "the sweep ended before its second run stopped"
        time.sleep(0.05)
    assert (second / "checkpoints" / "checkpoint-10" / "trainer_state.json").is_file()
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    deadline = time.time() + 10
    # it dies with the sweep: its parent, the sweep's fork server, exits with the sweep (PR_SET_PDEATHSIG)
    while _state(stopped) not in (None, "Z") and time.time() < deadline:
        time.sleep(0.05)
    assert _state(stopped) in (None, "Z"), "the sweep's run outlived it"
    # the kernel lets go of a killed process's file lock a moment after it is a zombie (a quarter second, here)
    while runs.read(second)["status"] == "running" and time.time() < deadline:
        time.sleep(0.05)
    assert runs.read(second)["status"] == "interrupted" and "model" not in os.listdir(second)

    resumed = lancy("sweep", "--resume", out / "grid")
    text = " ".join(resumed.output.split())
    assert resumed.exit_code == 0, resumed.output
    assert "[1/4] learning_rate=1e-3+max_steps=6: complete, skipped" in text
    assert "[2/4] learning_rate=1e-3+max_steps=12: resuming" in text
    assert "[3/4] learning_rate=1e-2+max_steps=6: starting" in text
    assert "settings that differ" in text
    for run in (out / "grid").iterdir():
        if run.is_dir():
            info = json.loads((run / "run.json").read_text())
            assert info["status"] == "complete" and info["steps"] == info["config"]["max_steps"], run.name
    again = lancy("sweep", "sft", *GRID, "--model", tiny_model, "--output-dir", out, "--name", "grid")
    assert again.exit_code == 1 and "holds another sweep" in again.output  # its shared flags differ


def test_sweep_mistakes_are_one_line_before_any_run(tiny_model, tmp_path):
    cases = [
        (["sft", "--grid", "learning_rat=1e-3"], "has no such setting; did you mean 'learning_rate'"),
        (["sft", "--grid", "learning_rate"], "write KEY=VALUE1,VALUE2"),
        (["sft", "--grid", "lora_r=four"], "lora_r"),
        (["sft", "--grid", "learning_rate=-1"], "--learning-rate must be positive"),
        (["sft", "--grid", "lora_r=4", "--no-such-flag"], "No such option"),
        (["sft"], "a sweep needs a grid"),
        (["--resume", tmp_path], "is not a sweep"),
    ]
    for args, words in cases:
        result = lancy("sweep", *args, "--output-dir", tmp_path / "runs")
        output = " ".join(result.output.split())
        assert result.exit_code == 1 and output.startswith("error:") and words in output, (args, output)
    assert not (tmp_path / "runs").exists()
