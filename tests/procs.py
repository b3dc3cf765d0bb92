"""`lancy` command lines as real processes that start in milliseconds, for tests that must kill one -9.

    proc = start(["sft", "--model", tiny, "--max-steps", 4], env={"LANCY_FAULT": "step@2"}, log=tmp / "out.log")
    assert proc.wait() == -signal.SIGKILL

Each process is forked from a server that imported torch, transformers, TRL, peft and lancy once
(multiprocessing's forkserver with those modules preloaded): the child is a whole process of its own, with its own
memory, files, locks and signals, that skipped the import time alone (about 10 s a process on 2 cores). The server
only imports: no tensor work happens before the fork, so each child starts its thread pools fresh.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

_started: list[Any] = []  # every process started, killed at exit if still there (a stopped one would hang it)
PRELOAD = ["torch", "transformers", "trl", "peft", "datasets", "lancy_trl.cli", "lancy_trl.train.trainer",
           "lancy_trl.train.grpo_trainer", "lancy_trl.data.build", "tests.procs"]
_context: Any = None


def context() -> Any:
    global _context
    if _context is None:
        import atexit

        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        atexit.register(kill_all)  # runs before multiprocessing's own exit handler, which joins its children
    return _context


def kill_all() -> None:
    for process in _started:
        if process.exitcode is None:
            process.kill()
            process.join()


def _run(argv: list[str], env: dict[str, str], log: str, cwd: str | None) -> None:
    """The child: the environment and working folder asked for, stdout and stderr to `log`, then `lancy ARGV` as its
    console script runs it; the process exits with the command's code."""
    os.environ.update(env)
    if cwd:
        os.chdir(cwd)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from lancy_trl.cli import run_as_script

    code = run_as_script(argv)
    os._exit(code)


class Proc:
    """A started `lancy` process: its pid, its exit code (negative: the signal that ended it), its output."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None) -> None:
        self.log = log
        self.process = context().Process(target=_run, args=(argv, env, str(log), str(cwd) if cwd else None))
        self.process.start()
        _started.append(self.process)
        self.pid = self.process.pid

    def wait(self, timeout: float = 600) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.kill()
            raise TimeoutError(f"lancy did not finish in {timeout} s; output:\n{self.output()}")
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()
        self.process.join()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def stopped(self) -> bool:
        """Whether the process is stopped (SIGSTOP: a fault point's `stop`)."""
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        except (OSError, IndexError):
            return False

    def wait_stopped(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not self.stopped():
            if self.process.exitcode is not None or time.monotonic() > deadline:
                raise AssertionError(f"lancy did not reach its stop point; output:\n{self.output()}")
            time.sleep(0.05)


def start(argv: list[Any], env: dict[str, str] | None = None, log: Path | None = None, cwd: Path | None = None) -> Proc:
    import tempfile

    log = log or Path(tempfile.mkstemp(prefix="lancy-", suffix=".log")[1])
    return Proc([str(a) for a in argv], dict(env or {}), log, cwd)


def run(argv: list[Any], env: dict[str, str] | None = None, log: Path | None = None, cwd: Path | None = None,
        timeout: float = 600) -> tuple[int, str]:
    """(exit code, output) of `lancy ARGV` run to its end in a process of its own."""
    proc = start(argv, env, log, cwd)
    code = proc.wait(timeout)
    return code, proc.output()
