"""A whole `lancy sft` process against a whole TRL script with SFTConfig's defaults: process start to exit, same
model, same rows, one epoch, the same parameters trained, each phase timed.

    python bench/sft_process.py                      # SmolLM2-135M, full fine-tuning, finsent's 225 training rows
    python bench/sft_process.py --lora --repeats 3
    python bench/sft_process.py --model tiny         # checks the script in seconds

Both run as child processes of this script, interleaved (the order reversed every other round), one at a time.
The rows are finsent's training split as `lancy sft` builds it (template, system prompt, no held-out rows), written
once as conversational prompt/completion JSON lines that the TRL script reads with `datasets`.

  lancy  `python -m lancy_trl sft --model M --dataset finsent --eval-fraction 0 --num-train-epochs 1 --offline`
         (+ `--no-use-lora` unless --lora); its phases come from the run's run.json `phase_seconds`
  trl    the TRL quick-start: AutoModelForCausalLM, load_dataset("json"), SFTTrainer(SFTConfig(num_train_epochs=1,
         the rest default but bf16 only where the GPU has it, as lancy's fp32 on CPU; LoRA r16 on every linear
         layer with --lora)), train(), save_model(); it prints its phases

Phases: startup (process start to the first line of the script or command: interpreter and imports), data, model,
build (the trainer, with its tokenization), train, save, and `other` (whatever the process did outside those, exit
included). Prints each variant's median seconds per phase, whole-process ratios run by run, for full fine-tuning the
matmul work per step each computes (counted from the rows' tokens) and the rate each reached, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import model_path  # noqa: E402

PHASES = ("startup", "data", "model", "build", "train", "save")

TRL_SCRIPT = r'''
import json, sys, time
from process_age import age
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
marks, t0 = {"startup": age()}, time.time()
def mark(name):
    global t0
    now = time.time(); marks[name] = marks.get(name, 0) + now - t0; t0 = now
model_path, rows, out, lora = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
dataset = load_dataset("json", data_files=rows, split="train")
mark("data")
tokenizer = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
mark("model")
peft_config = None
if lora:
    from peft import LoraConfig
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
gpu = torch.cuda.is_available()
config = SFTConfig(output_dir=out, num_train_epochs=1, report_to="none", use_cpu=not gpu,
                   bf16=gpu and torch.cuda.is_bf16_supported())
trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
mark("build")
trainer.train()
mark("train")
trainer.save_model(out + "/model")
mark("save")
print("PHASES " + json.dumps({**marks, "steps": trainer.state.global_step}))
'''

AGE = '''
import os, time
from pathlib import Path
def age():
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
'''


def write_rows(folder: Path) -> Path:
    """finsent's training rows as `lancy sft` builds them, as conversational prompt/completion JSON lines."""
    from lancy_trl.config import resolve
    from lancy_trl.data.build import build_data
    from lancy_trl.train.methods.sft import SFTArgs

    data = build_data(resolve(SFTArgs, flags={"dataset": ["finsent"], "eval_fraction": 0.0}))
    path = folder / "rows.jsonl"
    with path.open("w") as fh:
        for row in data.train:
            fh.write(json.dumps({"prompt": row["prompt"], "completion": row["completion"]}) + "\n")
    return path


def run_lancy(model: str, folder: Path, lora: bool) -> dict:
    out = Path(tempfile.mkdtemp(dir=folder))
    cmd = [sys.executable, "-m", "lancy_trl", "sft", "--model", model, "--dataset", "finsent", "--eval-fraction", "0",
           "--num-train-epochs", "1", "--offline", "--output-dir", str(out), *([] if lora else ["--no-use-lora"])]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode:
        sys.exit(f"lancy failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    (run,) = out.iterdir()
    record = json.loads((run / "run.json").read_text())
    phases = dict(record["phase_seconds"])
    phases["data"] = phases.get("data", 0) + phases.pop("prepare", 0)  # lancy counts tokens apart; TRL in build
    return {"wall": wall, "steps": record["steps"], **phases}


def run_trl(model: str, rows: Path, folder: Path, lora: bool) -> dict:
    out = Path(tempfile.mkdtemp(dir=folder))
    start = time.time()
    done = subprocess.run([sys.executable, str(folder / "trl_sft.py"), model, str(rows), str(out), "1" if lora else "0"],
                          capture_output=True, text=True, cwd=folder)
    wall = time.time() - start
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PHASES ")), None)
    if line is None:
        sys.exit(f"trl failed:\n{done.stderr[-3000:]}")
    return {"wall": wall, **json.loads(line[7:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="catalog name, path, or 'tiny'")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--lora", action="store_true", help="LoRA r16 on every linear layer in both, not full fine-tuning")
    opts = p.parse_args()
    model = model_path(opts.model)
    results: dict[str, list[dict]] = {"trl": [], "lancy": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "trl_sft.py").write_text(TRL_SCRIPT)
        (folder / "process_age.py").write_text(AGE)
        rows = write_rows(folder)
        for r in range(opts.repeats):
            for variant in ("trl", "lancy") if r % 2 == 0 else ("lancy", "trl"):
                one = run_trl(model, rows, folder, opts.lora) if variant == "trl" else run_lancy(model, folder, opts.lora)
                one["other"] = one["wall"] - sum(one.get(k, 0) for k in PHASES)
                results[variant].append(one)
                print(f"  {variant:6s} run {r + 1}: {one['wall']:.1f} s, {one['steps']} steps", file=sys.stderr)
        work = None if opts.lora else matmul_work(model, rows)  # LoRA's frozen weights take no weight gradients
    report(results, opts, work)


def matmul_work(model: str, rows: Path, batch: int = 8, shuffles: int = 5) -> tuple[float, float]:
    """FLOPs per step of full fine-tuning, (TRL's defaults, lancy), counted from the rows' tokens as 6 x parameters
    x tokens computed (forward and backward): TRL pads each random batch to its longest row and runs the LM head at
    every position; lancy computes the tokens a batch's rows share once, no padding, and the LM head at the answer
    tokens only. Averaged over a few random orders (both samplers shuffle)."""
    import random

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    head = net.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in net.parameters()) - head  # the embedding lookup is no matmul
    seqs = []
    for line in rows.read_text().splitlines():
        row = json.loads(line)
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        ids = tok(full, add_special_tokens=False)["input_ids"]
        seqs.append((ids, len(ids) - len(tok(prompt, add_special_tokens=False)["input_ids"])))
    trl = lancy = 0.0
    for seed in range(shuffles):
        order = random.Random(seed).sample(seqs, len(seqs))
        for i in range(0, len(order), batch):
            rows_ = order[i:i + batch]
            trl += 6 * (body + head) * max(len(ids) for ids, _ in rows_) * len(rows_)
            shared = 0
            while all(len(ids) > shared for ids, _ in rows_) and len({ids[shared] for ids, _ in rows_}) == 1:
                shared += 1
            tokens = shared + sum(len(ids) - shared for ids, _ in rows_)
            lancy += 6 * body * tokens + 6 * head * sum(answer for _, answer in rows_)
    steps = shuffles * -(-len(seqs) // batch)
    return trl / steps, lancy / steps


def report(results: dict[str, list[dict]], opts: argparse.Namespace, work: tuple[float, float] | None) -> None:
    med = {v: {k: statistics.median(run.get(k, 0) for run in runs) for k in (*PHASES, "other", "wall")}
           for v, runs in results.items()}
    runs = [t["wall"] / lan["wall"] for t, lan in zip(results["trl"], results["lancy"])]
    print(f"\nwhole `sft` process, {'LoRA r16' if opts.lora else 'full fine-tuning'}, one epoch of finsent's training "
          f"rows ({results['lancy'][0]['steps']} lancy steps, {results['trl'][0]['steps']} TRL steps), median of "
          f"{opts.repeats}")
    print(f"{'seconds':10s} {'TRL defaults':>13s} {'lancy':>8s} {'TRL / lancy':>12s}")
    for k in (*PHASES, "other", "wall"):
        a, b = med["trl"][k], med["lancy"][k]
        print(f"{k:10s} {a:13.1f} {b:8.1f} {a / b if b > 0.05 else float('nan'):11.2f}x")
    print(f"whole process: lancy {med['trl']['wall'] / med['lancy']['wall']:.2f}x TRL's defaults (runs: "
          f"{', '.join(f'{x:.2f}' for x in runs)})")
    if work:
        steps = results["lancy"][0]["steps"]
        speed = {v: work[i] * steps / med[v]["train"] / 1e9 for i, v in enumerate(("trl", "lancy"))}
        print(f"matmul work per step (6 x parameters x tokens computed): TRL defaults {work[0] / 1e9:.0f} GFLOP, lancy "
              f"{work[1] / 1e9:.0f} GFLOP, {work[0] / work[1]:.2f}x; over the train phase TRL {speed['trl']:.0f} GFLOP/s, "
              f"lancy {speed['lancy']:.0f} GFLOP/s")
    print("RESULT " + json.dumps({"median": med, "runs": results, "ratio": med["trl"]["wall"] / med["lancy"]["wall"],
                                  "flops_per_step": work}))


if __name__ == "__main__":
    main()
