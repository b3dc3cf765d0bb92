"""Kill a training run -9 at a named or a seeded random moment, recover it as the README says, check nothing was lost.

    ref = reference(CASES["sft"], root)                       # the uninterrupted run's final weights
    trial = Trial(CASES["sft"], root / "t1", fault="step@3")  # or delay=2.4 (seconds after the process starts)
    trial.run(); trial.recover(); trial.check(ref)            # complete, weights equal, nothing half-written read

Recovery is what the README tells a user: `lancy COMMAND --resume latest --output-dir OUT`; when that says there is
nothing to resume, the same command again. Used by tests/faults/test_faults.py (a few points, in CI) and
tests/faults/sweep.py (`nox -s faults`: a seeded sweep over sft, pretrain and grpo).
"""

from __future__ import annotations

import json
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import procs


@dataclass(frozen=True)
class Case:
    command: str
    argv: tuple[str, ...]  # besides --model and --output-dir
    steps: int
    points: tuple[str, ...]  # fault points its runs pass through

    def args(self, model: Path, out: Path) -> list[str]:
        return [self.command, "--model", str(model), "--output-dir", str(out), *self.argv]


TRAINING = ("step", "checkpoint.weights", "checkpoint.state", "runjson", "finish.model", "finish.rename",
            "finish.metrics", "finish.manifest")
# ten steps (43 rows: two epochs for sft), a checkpoint every two, two kept: a resume from checkpoint-2 outlives it
# (the rotation deletes it), and one from checkpoint-8 resumes inside the second epoch
COMMON = ("--max-steps", "10", "--save-steps", "2", "--save-total-limit", "2", "--seed", "3", "--max-examples", "48")
CASES = {
    "sft": Case("sft", (*COMMON, "--eval-steps", "4", "--learning-rate", "1e-2"), 10, (*TRAINING, "eval")),
    "pretrain": Case("pretrain", (*COMMON, "--dataset", "finsent", "--max-length", "64", "--batch-size", "4",
                                  "--eval-steps", "4", "--learning-rate", "1e-2"), 10, (*TRAINING, "eval")),
    "grpo": Case("grpo", (*COMMON, "--batch-size", "8", "--num-generations", "4", "--learning-rate", "1e-2"), 10,
                 TRAINING),
    # checkpoints by the clock alone (every 0.6 s of training): what a kill costs is measured in seconds
    "sft-minutes": Case("sft", ("--max-steps", "240", "--save-steps", "1000", "--save-minutes", "0.01", "--seed", "3",
                                "--max-examples", "48", "--eval-steps", "1000", "--learning-rate", "1e-2",
                                "--batch-size", "4"), 240, TRAINING),
}


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    (path,) = [p for p in (run / "model").glob("*.safetensors")]
    return load_file(path)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), "the models hold different tensors"
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def reference(case: Case, model: Path, root: Path, name: str | None = None) -> dict:
    """The final weights of the case's run, trained without a fault."""
    out = root / f"reference-{name or case.command}"
    code, text = procs.run(case.args(model, out), log=root / f"reference-{name or case.command}.log")
    assert code == 0, text
    (run,) = runs_in(out)
    return weights(run)


def runs_in(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/run.json")) if out.is_dir() else []


@dataclass
class Trial:
    """One run of a case killed once (at `fault`, a LANCY_FAULT value, or `delay` seconds in), then recovered."""

    case: Case
    model: Path
    folder: Path
    fault: str | None = None
    delay: float | None = None
    killed: bool = False
    killed_at: float = 0.0  # time.time() of a kill by delay
    log: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.folder / "runs"

    def run(self) -> None:
        """The faulty run; True in `killed` when SIGKILL ended it (a delay past the run's end kills nothing)."""
        env = {"LANCY_FAULT": self.fault} if self.fault else {}
        self.folder.mkdir(parents=True, exist_ok=True)
        proc = procs.start(self.case.args(self.model, self.out), env, self.folder / "killed.log")
        if self.delay is not None:
            proc.process.join(self.delay)
            if proc.process.exitcode is None:
                proc.kill()
                self.killed_at = time.time()
        code = proc.wait()
        self.log.append(proc.output())
        assert code in (0, -signal.SIGKILL), f"{self.fault or self.delay}: exit {code}\n{proc.output()}"
        self.killed = code == -signal.SIGKILL
        for run in runs_in(self.out):  # what a kill leaves is always readable
            json.loads((run / "run.json").read_text())

    def lost_seconds(self) -> float | None:
        """Training a kill by delay threw away: from the newest whole checkpoint's writing to the kill; None for a
        kill before the first checkpoint (the run then starts again)."""
        from lancy_trl import runs

        if not self.killed_at or not runs_in(self.out):
            return None
        (run,) = runs_in(self.out)
        done = runs.complete_checkpoints(run)
        return self.killed_at - (done[-1] / "trainer_state.json").stat().st_mtime if done else None

    def recover(self, fault: str | None = None) -> int:
        """`--resume latest`, else the command again (README, reliability); `fault` kills the recovery too."""
        if self.finished() is not None:  # a recovery the fault never reached finished the run
            return 0
        env = {"LANCY_FAULT": fault} if fault else {}
        resume = [self.case.command, "--resume", "latest", "--output-dir", str(self.out)]
        code, text = procs.run(resume, env, self.folder / f"resume-{len(self.log)}.log")
        self.log.append(text)
        if code == 1 and ("nothing to resume" in text or "no resumable run" in text):
            code, text = procs.run(self.case.args(self.model, self.out), env, self.folder / f"again-{len(self.log)}.log")
            self.log.append(text)
        return code

    def finished(self) -> Path | None:
        """The run that ended complete, if one did."""
        done = [r for r in runs_in(self.out) if json.loads((r / "run.json").read_text()).get("status") == "complete"]
        return done[0] if len(done) == 1 else None

    def check(self, want: dict, tolerance: float = 1e-5) -> float:
        """The recovered run is complete, whole, and trained the reference's weights; their largest difference."""
        run = self.finished()
        assert run is not None, f"{self.fault or self.delay}: no complete run\n" + "\n----\n".join(self.log)
        assert not (run / "model.part").exists() and (run / "metrics.json").is_file() and (run / "manifest.json").is_file()
        from lancy_trl import runs

        assert not runs.partial_checkpoints(run), "a partial checkpoint was left in a complete run"
        diff = max_difference(weights(run), want)
        assert diff <= tolerance, f"{self.fault or self.delay}: weights differ by {diff} from the uninterrupted run"
        return diff


def seeded_faults(case: Case, rng: random.Random) -> str:
    """A named point of the case and which of its passes: `checkpoint.state@3` is the third checkpoint's."""
    point = rng.choice(case.points)
    most = {"step": case.steps, "checkpoint.weights": case.steps // 2, "checkpoint.state": case.steps // 2,
            "runjson": 3, "eval": 2}.get(point, 1)  # a pretrain run writes run.json 3 times
    return f"{point}@{rng.randint(1, most)}"
