"""lancy's memory estimate (printed before a model loads) against the peak memory each run then measures.

    python bench/memory_estimate.py                   # SmolLM2-135M on CPU, a few methods, 2 steps each
    python bench/memory_estimate.py --model tiny      # a tiny random model: checks the script in seconds

Each configuration runs `lancy sft` (or `lancy pretrain`) in its own process for --steps steps on finsent; the
estimate is read from the run summary and the peak from the kernel (the child's maximum resident memory), so this
bench is for CPU runs: on a GPU the resident memory is not the GPU's. Prints estimate, measured peak and their ratio.
The estimate is for the longest batch (every row --max-length tokens); finsent's rows are shorter (about 80 tokens),
so where activations dominate the peak lands under the estimate.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "lora": ["sft"],
    "lora-len128-bs16": ["sft", "--max-length", "128", "--batch-size", "16"],
    "full": ["sft", "--no-use-lora"],
    "full-checkpointed": ["sft", "--no-use-lora", "--gradient-checkpointing"],
    "qlora-4bit": ["sft", "--load-in-4bit"],
    "pretrain-lora": ["pretrain", "--dataset", "finsent", "--max-length", "256"],
    "pretrain-full": ["pretrain", "--dataset", "finsent", "--max-length", "256", "--no-use-lora"],
}
PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def run(name: str, flags: list[str], opts: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(estimated GB, measured peak GB) for one configuration, in a fresh process."""
    cmd = [sys.executable, "-c", PEAK, sys.executable, "-m", "lancy_trl", *flags, "--model", opts.model,
           "--max-steps", str(opts.steps), "--eval-steps", "1000", "--save-steps", "1000", "--output-dir", str(out),
           "--run-name", name]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    estimate = float(re.search(r"memory estimate.*?: about ([\d.]+) GB", result.stdout).group(1))  # type: ignore[union-attr]
    peak = int(re.search(r"PEAK_KB (\d+)", result.stdout).group(1)) / 1024**2  # type: ignore[union-attr]
    return estimate, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="a subset of the configurations")
    opts = parser.parse_args()
    if opts.model == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.conftest import build_tiny_model

        opts.model = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    print(f"{'configuration':20} {'estimate GB':>12} {'peak GB':>9} {'peak/estimate':>14}")
    with tempfile.TemporaryDirectory() as out:
        for name in opts.only or CONFIGS:
            estimate, peak = run(name, CONFIGS[name], opts, Path(out))
            print(f"{name:20} {estimate:12.2f} {peak:9.2f} {peak / estimate:14.2f}", flush=True)


if __name__ == "__main__":
    main()
