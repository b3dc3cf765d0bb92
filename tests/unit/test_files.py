"""Writes a crash cannot tear, locks two processes cannot both hold, and cache work done once by two processes."""

import json
import multiprocessing
import time

import pytest

from lancy_trl import files


def test_a_write_that_fails_midway_leaves_the_old_file_whole_and_nothing_beside_it(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    files.write_json(path, {"status": "running"})
    monkeypatch.setenv("LANCY_FAULT", "runjson:enospc")
    with pytest.raises(OSError, match="No space left"):
        files.write_json(path, {"status": "complete"}, fault="runjson")
    assert json.loads(path.read_text()) == {"status": "running"} and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_fault_spec_names_a_known_point_and_action():
    from lancy_trl import faults

    assert faults.parse("checkpoint.state@3:enospc") == ("checkpoint.state", 3, "enospc")
    assert faults.parse("step") == ("step", 1, "kill")
    with pytest.raises(ValueError, match="expected POINT"):
        faults.parse("chekpoint@2")


def _hold_then_report(path, ready, done):
    lock = files.hold(path, "pid here\n")
    ready.set()
    done.wait(10)
    if lock:
        lock.release()


def test_a_lock_is_held_by_one_process_and_freed_when_it_ends(tmp_path):
    path = tmp_path / "run.lock"
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_then_report, args=(path, ready, done))
    other.start()
    ready.wait(10)
    assert files.held_elsewhere(path) and files.hold(path) is None and path.read_text() == "pid here\n"
    other.kill()  # what kill -9 does to a lock: the kernel lets it go
    other.join()
    assert not files.held_elsewhere(path)
    mine = files.hold(path, "me\n")
    assert mine is not None and files.held_elsewhere(path)  # another descriptor, even of this process, is refused
    mine.release()


def _convert_once(folder, log):
    with files.exclusive(folder / ".lock"):
        if not (folder / "done").is_file():
            with open(log, "a") as fh:
                fh.write("converted\n")
            time.sleep(0.3)  # the second process arrives while the first converts
            (folder / "done").write_text("x")


def test_two_processes_filling_the_cache_at_once_do_the_work_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_convert_once, args=(tmp_path, tmp_path / "log")) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    assert (tmp_path / "log").read_text() == "converted\n"
