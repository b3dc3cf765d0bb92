"""The seeded fault sweep (`nox -s faults`): kill sft, pretrain and grpo runs of the tiny model -9 at seeded named
points and at seeded random moments, sometimes kill the recovery too, recover as the README says, and print what
was lost.

    python -m tests.faults.sweep --kills 60 --seed 0

Prints each trial, then: kills made, runs completed, runs lost, the largest weight difference from the
uninterrupted run, and for kills at random moments of a run that checkpoints by the clock (--save-minutes 0.01,
0.6 s), the training each kill after the first checkpoint threw away, against that interval.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=60, help="runs killed (a trial whose moment came after its run "
                        "ended kills nothing and is not counted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tests import procs
    from tests.conftest import build_tiny_model
    from tests.faults.harness import CASES, Trial, reference, seeded_faults

    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="lancy-faults-"))
    model = build_tiny_model(root / "tiny")
    procs.run(["--help"], log=root / "warm.log")  # the fork server's imports, outside every timing
    refs, durations = {}, {}
    for name, case in CASES.items():
        start = time.monotonic()
        refs[name] = reference(case, model, root, name)
        durations[name] = time.monotonic() - start
    figures: dict = {"kills": 0, "trials": 0, "completed": 0, "lost": 0, "max_weight_difference": 0.0,
                     "by_command": {}, "lost_seconds": [], "save_seconds": 0.6}
    order = ["sft", "pretrain", "grpo", "sft-minutes"]
    i = 0
    while figures["kills"] < args.kills and i < 3 * args.kills:
        name = order[i % len(order)]
        case = CASES[name]
        named = name != "sft-minutes" and rng.random() < 0.6
        trial = Trial(case, model, root / f"trial-{i}", fault=seeded_faults(case, rng) if named else None,
                      delay=None if named else rng.uniform(0.2, durations[name]))
        trial.run()
        i += 1
        if not trial.killed:
            what = f"{trial.delay:.2f} s in" if trial.fault is None else trial.fault
            print(f"{i - 1:3d} {name:11s} {what}: the run ended first, no kill", flush=True)
            continue
        figures["kills"] += 1
        lost = trial.lost_seconds() if name == "sft-minutes" else None
        if lost is not None:
            figures["lost_seconds"].append(lost)
        again = seeded_faults(case, rng) if rng.random() < 0.25 else None  # the recovery killed as well
        outcome, diff = "completed", float("nan")
        try:
            if again and trial.recover(again) == -9:
                figures["kills"] += 1
            code = trial.recover()
            assert code == 0, f"recovery exited {code}:\n" + trial.log[-1][-2000:]
            diff = trial.check(refs[name])
            figures["max_weight_difference"] = max(figures["max_weight_difference"], diff)
            figures["completed"] += 1
        except AssertionError as e:
            outcome = f"LOST: {str(e).splitlines()[0]}"
            figures["lost"] += 1
        figures["trials"] += 1
        per = figures["by_command"].setdefault(name, {"kills": 0, "lost": 0})
        per["kills"] += 1
        per["lost"] += outcome != "completed"
        what = trial.fault or f"{trial.delay:.2f} s in"
        print(f"{i - 1:3d} {name:11s} {what:22s} then {again or '-':22s} {outcome} (max |dw| {diff:.1e})"
              + (f", {lost:.2f} s of training lost" if lost is not None else ""), flush=True)
    report(figures, args.seed, root)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def report(figures: dict, seed: int, root: Path) -> None:
    print(f"\nkills made {figures['kills']}, runs completed {figures['completed']} of {figures['trials']}, runs lost "
          f"{figures['lost']}, max weight difference {figures['max_weight_difference']:.1e} (seed {seed}; {root})")
    for name, per in figures["by_command"].items():
        print(f"  {name}: {per['kills']} killed runs, {per['lost']} lost")
    lost = figures["lost_seconds"]
    if lost:
        print(f"  training thrown away by a kill, checkpoints every {figures['save_seconds']} s: at most "
              f"{max(lost):.2f} s ({max(lost) / figures['save_seconds']:.2f}x the interval), median "
              f"{sorted(lost)[len(lost) // 2]:.2f} s, over {len(lost)} kills")


if __name__ == "__main__":
    main()
