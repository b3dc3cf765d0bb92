"""What every bench shares: the model paths, the interleaved runner (each variant in its own process), the CPU/GPU
matmul peak for MFU, a heap watcher, and the three SFT trainers every SFT bench compares: one padded baseline,
TRL's defaults, and lancy's options.

    results = interleaved(__file__, ["padded", "trl_default", "lancy"], model_path("tiny"), repeats=3, shown="step_s")
    trainer = sft_trainer("padded", model, tokenizer, rows, common, peft_config, bf16=False, max_length=256)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SFT_VARIANTS = ("padded", "trl_default", "lancy")


def matmul_peak(device: str, dtype_name: str) -> float:
    """GFLOP/s of a 2048^2 (CPU) or 8192^2 (GPU) matmul, measured here: the best of three timings."""
    import torch

    dtype = getattr(torch, dtype_name)
    n = 8192 if device == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    reps = 20 if device == "cuda" else 5
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = 0.0
    for _ in range(3):
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


class HeapWatch:
    """The most memory glibc's malloc had handed out (in use, not freed) while training, sampled every 20 ms.

    Peak RSS also counts freed heap memory that the allocator keeps resident (fragmentation); the difference between
    the two says how much of a variant's peak is its tensors and how much the allocator's layout. Linux + glibc only.
    """

    def __init__(self) -> None:
        import ctypes
        import threading

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]

        self.libc = ctypes.CDLL("libc.so.6")
        self.libc.mallinfo2.restype = Info
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.02):
            info = self.libc.mallinfo2()
            self.peak = max(self.peak, info.uordblks + info.hblkhd)

    def __enter__(self) -> HeapWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def model_path(name: str) -> str:
    if name == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.conftest import build_tiny_model

        out = Path(os.environ.get("TMPDIR", "/tmp")) / "lancy-bench-tiny"
        if not (out / "config.json").exists():
            build_tiny_model(out)
        return str(out)
    from lancy_trl.models import resolve_model

    return resolve_model(name, log=lambda m: print(m, file=sys.stderr)).path


def interleaved(script: str, variants: list[str], path: str, repeats: int, shown: str) -> dict[str, list[dict]]:
    """Each variant of a bench script in its own process (clean peak memory), A/B interleaved, the order reversed
    every other round; each child prints one `RESULT {json}` line, and `shown` of it goes to stderr as it comes."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(repeats):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            cmd = [sys.executable, script, "--variant", variant, "--model-path", path, *sys.argv[1:]]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            results[variant].append(json.loads(line[7:]))
            print(f"  {variant:12s} run {r + 1}: {shown} {results[variant][-1][shown]:.2f}", file=sys.stderr)
    return results


def sft_trainer(variant: str, model: Any, tok: Any, rows: Any, common: dict[str, Any], peft_config: Any, bf16: bool,
                max_length: int, lancy: tuple[Any, dict[str, Any], Path] | None = None,
                trl_set: dict[str, Any] | None = None) -> Any:
    """The trainer of one SFT variant on the same chat rows: `padded` (transformers.Trainer, prompt+answer text
    padded to max_length, loss on every token), `trl_default` (TRL's SFTTrainer with SFTConfig's defaults) or
    `lancy` (LancySFTTrainer with the config and speed paths `lancy sft` picks; `lancy` = (args, model info, dir))."""
    if variant == "padded":
        from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

        def render(row: dict[str, Any]) -> Any:
            text = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
            return tok(text, truncation=True, max_length=max_length, padding="max_length")

        train = rows.map(render, remove_columns=rows.column_names)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        return Trainer(model=model, args=TrainingArguments(**common, bf16=bf16), train_dataset=train,
                       data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    from trl import SFTConfig, SFTTrainer

    if variant == "trl_default":
        config = SFTConfig(**common, max_length=max_length, bf16=bf16)
        return SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tok, peft_config=peft_config)
    from lancy_trl.train.arguments import sft_config, trainer_options
    from lancy_trl.train.trainer import LancySFTTrainer

    assert lancy is not None, "the lancy variant needs (args, model info, output dir)"
    args, info, out = lancy
    config = sft_config(args, out, info, has_eval=False)
    config.save_strategy, config.output_dir = "no", str(out)
    for key, value in (trl_set or {}).items():
        if not hasattr(config, key):
            sys.exit(f"--lancy-set {key}: neither a lancy option nor an SFTConfig field")
        setattr(config, key, value)
    return LancySFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tok, peft_config=peft_config,
                           **trainer_options(args, info))
