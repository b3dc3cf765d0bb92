"""Shared fixtures: a tiny random Llama with a real chat template, built in-process (no network, seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lancy_trl import startup

startup.defer_bitsandbytes_compile()  # as every lancy command does, before a test imports a library
startup.keep_freed_memory()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # a worker of several: its share of the cores, before torch starts
    # (torch's default, a thread a core in every worker and in every process a test starts, oversubscribes the
    # cores: on 2 cores, back to back, the suite took 12 min 46 s with 2 workers that way, 9 min 12 s like this)
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = (
    "the a of to and in is was for on rose fell profit loss sales revenue company shares quarter year percent "
    "million euros dollars net operating margin guidance board dividend will be held report meeting bank "
    "negative neutral positive sentence sentiment answer with one word what this investor financial analyst "
    "you are classify text increased decreased record weak strong"
).split()


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker a core and one more, at most 4. Many tests wait on processes of their own, which a
    thread a worker (above) leaves room for. Workers take whole files in xdist's own order (most tests first)."""
    return max(1, min(4, (os.cpu_count() or 1) + 1))


def build_tokenizer(pad: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + ["<unk>"])}
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'-%$\n":
        vocab.setdefault(ch, len(vocab))
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix=""))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<unk>",
        pad_token="<|im_end|>" if not pad else "<|endoftext|>", additional_special_tokens=specials,
    )
    fast.chat_template = CHATML
    return fast


def build_tiny_model(path: Path, arch: str = "llama", tie: bool = True) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen2MoeConfig

    torch.manual_seed(0)
    tok = build_tokenizer()
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen2_moe": Qwen2MoeConfig}[arch]
    moe = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
           "shared_expert_intermediate_size": 32} if arch == "qwen2_moe" else {}
    config = cls(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **moe,
    )
    config.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                             "qwen2_moe": "Qwen2MoeForCausalLM"}[arch]]
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture
def pc_file(tmp_path) -> Path:
    """A prompt/completion JSONL file with a learnable pattern."""
    path = tmp_path / "pc.jsonl"
    rows = [{"prompt": f"profit {w} this quarter", "completion": "positive" if w == "rose" else "negative"}
            for w in ["rose", "fell"] * 20]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def lancy(*args, env=None):
    """`lancy ARGS` in this process (typer's CliRunner): its exit code and output, no subprocess."""
    from typer.testing import CliRunner

    from lancy_trl.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def sft(*args, env=None):
    return lancy("sft", *args, env=env)


def launched(*args, env=None, timeout=600):
    """`lancy ARGS` as a process of its own (for `--num-processes`, which starts torch's launcher)."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "lancy_trl", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    # every launch is one of several multi-process runs in a row: none may end with gloo's threads torn down
    assert "terminate called" not in done.stderr, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def only_run(folder: Path) -> Path:
    """The one run directory under `folder`."""
    (run,) = [p for p in folder.iterdir() if (p / "run.json").is_file()]
    return run


def write_sample(name: str, folder: Path, fmt: str = "jsonl") -> list[str]:
    """The registry's sample rows for `name` written as local files in the hub schema: `SPLIT=PATH` values."""
    from lancy_trl.data.registry import sample_rows

    out = []
    folder = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in sample_rows(name).items():
        path = folder / f"{split}.{fmt}"
        if fmt == "parquet":
            import pandas as pd

            pd.DataFrame(rows).to_parquet(path)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out.append(f"{split}={path}")
    return out


def kill_after_first_checkpoint(run):
    """What `kill -9` after the step-2 checkpoint leaves: no later checkpoint, no model, run.json saying running
    for a process that is gone."""
    import shutil
    import subprocess

    from lancy_trl import runs

    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    shutil.rmtree(run / "model")
    dead = subprocess.Popen(["true"])
    dead.wait()
    runs.update(run, status="running", owner={**runs.owner(), "pid": dead.pid})


def tensorboard_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def chat_rows(text: str, examples: list[tuple[int, str]]) -> list[dict]:
    """Prompt/completion rows: `text` repeated n times, answered with the word."""
    return [
        {"prompt": [{"role": "user", "content": text * n}], "completion": [{"role": "assistant", "content": w}]}
        for n, w in examples
    ]


def padded_tokenizer(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = "<|endoftext|>"
    return tok
