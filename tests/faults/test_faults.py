"""Kill -9 at chosen points of sft, pretrain and grpo runs on the tiny model, recover as the README says, and get
the uninterrupted run's weights back; a full or read-only disk stops a run resumable; two processes never share a
run. The longer seeded sweep: `nox -s faults` (tests/faults/sweep.py)."""

import json
import os
import signal
import subprocess

import pytest

from tests import procs
from tests.conftest import sft
from tests.faults.harness import CASES, Trial, reference, runs_in, weights


@pytest.fixture(scope="module")
def references(tiny_model, tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("references"), {}

    def get(command):
        if command not in cache:
            cache[command] = reference(CASES[command], tiny_model, root)
        return cache[command]

    return get


POINTS = [
    ("sft", "step@3"),              # mid-step after checkpoint-2: the resume outlives checkpoint-2 (rotated away)
    ("sft", "step@10"),             # resumed from checkpoint-8, inside the second epoch: its batches as they were
    ("sft", "checkpoint.state@2"),  # checkpoint-4 cut off before it was whole: named, skipped, made again
    ("sft", "eval@1"),              # inside the in-training evaluation
    ("sft", "finish.rename"),       # model/ in place, run.json not yet `complete`
    ("sft", "runjson@2"),           # run.json's new text written aside, not renamed
    ("pretrain", "checkpoint.weights@3"),
    ("grpo", "step@5"),
]


@pytest.mark.parametrize("command, fault", POINTS, ids=[f"{c}-{f}" for c, f in POINTS])
def test_a_kill_at_a_named_point_recovers_to_the_uninterrupted_weights(command, fault, tiny_model, tmp_path, references):
    trial = Trial(CASES[command], tiny_model, tmp_path, fault=fault)
    trial.run()
    assert trial.killed, f"the run never reached {fault}:\n{trial.log[0]}"
    assert trial.recover() == 0, "\n----\n".join(trial.log)
    trial.check(references(command))
    if fault.startswith("checkpoint.state"):
        assert "skipping checkpoint-4: its save was cut off" in " ".join(trial.log[-1].split())


def test_a_kill_while_saving_over_a_whole_checkpoint_leaves_it_partial(tiny_model, tmp_path, references):
    """Resumed from an older checkpoint, a run saves over a whole one of a later step; killed during that save, the
    folder must read as partial (its old trainer_state.json gone first), not as whole with half-new files."""
    trial = Trial(CASES["sft"], tiny_model, tmp_path, fault="step@7")
    trial.run()
    (run,) = runs_in(trial.out)
    older = run / "checkpoints" / "checkpoint-4"
    code, text = procs.run(["sft", "--resume", older], {"LANCY_FAULT": "checkpoint.weights@1"}, tmp_path / "over.log")
    assert code == -signal.SIGKILL, text
    from lancy_trl import runs

    assert [p.name for p in runs.partial_checkpoints(run)] == ["checkpoint-6"]
    assert trial.recover() == 0, "\n----\n".join(trial.log)
    assert "skipping checkpoint-6: its save was cut off" in " ".join(trial.log[-1].split())
    trial.check(references("sft"))


def test_a_kill_during_export_never_leaves_a_complete_looking_export(tiny_model, tmp_path, references):
    trial = Trial(CASES["sft"], tiny_model, tmp_path)
    trial.run()
    run = trial.finished()
    code, text = procs.run(["export", str(run)], {"LANCY_FAULT": "export.merged"}, log=tmp_path / "export.log")
    assert code == -signal.SIGKILL and not (run / "export" / "merged").exists(), text
    code, text = procs.run(["export", str(run)], log=tmp_path / "export-again.log")
    assert code == 0 and (run / "export" / "merged" / "model.safetensors").is_file(), text
    assert not (run / "export" / "merged.part").exists()



@pytest.mark.parametrize("fault", ["checkpoint.weights@2:enospc", "checkpoint.state@2:eacces", "finish.model:erofs"])
def test_a_save_the_disk_refuses_stops_the_run_resumable(fault, tiny_model, tmp_path, references):
    args = CASES["sft"].args(tiny_model, tmp_path / "runs")[1:]
    result = sft(*args, env={"LANCY_FAULT": fault})
    output = " ".join(result.output.split())
    error = output[output.index("error:"):]
    assert result.exit_code == 1 and error.startswith("error: could not write") and output.count("error:") == 1, output
    assert "Traceback" not in result.output and "is free there" in output and "--resume latest" in output
    (run,) = runs_in(tmp_path / "runs")
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    from lancy_trl import runs

    assert [p.name for p in runs.complete_checkpoints(run)][-1] == ("checkpoint-10" if "finish" in fault else "checkpoint-2")
    assert not runs.partial_checkpoints(run) and not (run / "model.part").exists()  # the partial save removed
    if "checkpoint" in fault:
        assert "it needs about" in output  # the size of the last whole checkpoint
    resumed = sft("--resume", "latest", "--output-dir", tmp_path / "runs")
    assert resumed.exit_code == 0, resumed.output
    from tests.faults.harness import max_difference

    assert max_difference(weights(run), references("sft")) <= 1e-5


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs (needs root, as CI runs)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root); the fault-injected test covers the rest")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_real_full_or_read_only_disk_mid_run_stops_resumable(fault, tiny_model, small_disk, references):
    """The run pauses after its first checkpoint; the disk is filled (or remounted read-only); the run goes on: its
    next write (a log line, or the next checkpoint) fails with the real ENOSPC (EROFS); once the disk is freed (made
    writable), the run resumes to the uninterrupted weights."""
    out = small_disk / "runs"
    proc = procs.start(CASES["sft"].args(tiny_model, out), {"LANCY_FAULT": "step@3:stop"}, small_disk.parent / "o.log")
    proc.wait_stopped()
    filler = small_disk / "filler"
    if fault == "full":
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=100"], capture_output=True)
    else:  # the checkpoints folder made read-only in place (a remount of the whole disk waits on open log files)
        (run,) = runs_in(out)
        folder = str(run / "checkpoints")
        subprocess.run(["mount", "--bind", folder, folder], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", folder], check=True)
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait() == 1, proc.output()
    output = " ".join(proc.output().split())
    why = "no space left on the device" if fault == "full" else "read-only file system"
    assert "error: could not write" in output and why in output, output
    assert "Traceback" not in output and "--resume latest" in output
    (run,) = runs_in(out)
    from lancy_trl import runs

    assert runs.complete_checkpoints(run)[-1].name == "checkpoint-2" and not runs.partial_checkpoints(run)
    if fault == "full":
        assert runs.read(run)["status"] == "interrupted"
        filler.unlink()
    else:
        assert "checkpoint-4" in output and "it needs about" in output  # the save named, with its size
        subprocess.run(["umount", str(run / "checkpoints")], check=True)
        assert runs.read(run)["status"] == "interrupted"
    code, text = procs.run(["sft", "--resume", "latest", "--output-dir", out], log=small_disk.parent / "r.log")
    assert code == 0, text
    from tests.faults.harness import max_difference

    assert max_difference(weights(run), references("sft")) <= 1e-5


def test_two_processes_never_train_in_one_run(tiny_model, tmp_path):
    """Two runs with the same settings started at once get two directories; while one is alive (stopped mid-run)
    `--resume latest` passes it by and a resume naming it is refused with its pid."""
    args = CASES["sft"].args(tiny_model, tmp_path / "runs")
    first = procs.start(args, {"LANCY_FAULT": "step@3:stop"}, tmp_path / "first.log")
    second = procs.start(args, {}, tmp_path / "second.log")
    first.wait_stopped()
    assert second.wait() == 0, second.output()
    assert len(runs_in(tmp_path / "runs")) == 2
    (live,) = [r for r in runs_in(tmp_path / "runs") if json.loads((r / "run.json").read_text())["status"] == "running"]
    refused = sft("--resume", "latest", "--run-dir", live)
    assert refused.exit_code == 1 and f"still running (pid {first.pid} on" in refused.output, refused.output
    latest = sft("--resume", "latest", "--output-dir", tmp_path / "runs")
    assert latest.exit_code == 1 and "no resumable run" in latest.output  # the other run is complete
    os.kill(first.pid, signal.SIGCONT)
    assert first.wait() == 0, first.output()
