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
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from lancy_trl import faults
from lancy_trl.errors import LancyError
from lancy_trl.export import check
from lancy_trl.export.merged import export_merged
from lancy_trl.models import gguf_read_once

CONVERTER = ("llama-cpp-python", "0.3.36")
QUANTS = check.TOLERANCE  # the types the converter writes, with their tolerances


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


def export_gguf(run_dir: Path, out: Path, quant: str, log: Any = print,
                dtype: str = "auto") -> tuple[Path, dict[str, Any]]:
    """One GGUF file of the run's merged model, converted by llama.cpp's converter, then verified."""
    import importlib.util
    import os

    if quant not in QUANTS:
        raise LancyError(f"--quant {quant}: GGUF export writes {', '.join(QUANTS)} (K-quants need llama.cpp's "
                         "compiled llama-quantize, run on the f16 file)")
    if importlib.util.find_spec("sentencepiece") is None:
        raise LancyError("GGUF export needs sentencepiece, which llama.cpp's converter imports: pip install sentencepiece")
    home = converter(log)
    merged, made = export_merged(run_dir, run_dir / "export" / "merged", dtype)  # the GGUF converts from it
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
    against = "the run's model" if made["dtype"] == "fp32" else f"the {made['dtype']} merged export"
    report = verify(run_dir, merged, part, quant, against)
    part.replace(target)
    return target, report


def verify(run_dir: Path, merged: Path, gguf: Path, quant: str, against: str) -> dict[str, Any]:
    """Next-token logits of the GGUF (read back by transformers) against the merged model's, on prompts the run held
    out, and label accuracies for a classification run; above the type's tolerance, an error."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    reference = check.Outputs.of(run_dir, tokenizer, AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval())
    # transformers' own progress bar while it reads the GGUF back; the file parsed once for its config and weights
    with contextlib.redirect_stderr(io.StringIO()), gguf_read_once():
        reread = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    report = reference.compare(check.Outputs.of(run_dir, tokenizer, reread), QUANTS[quant], str(gguf), against)
    return {**report, "quant": quant, "bytes": gguf.stat().st_size}


def write(run_dir: Path, out: Path, quant: str, log: Any, dtype: str = "auto") -> tuple[Path, list[str]]:
    """The exporter: the verified GGUF (converted from the merged export in `dtype`), and what to say of it."""
    path, report = export_gguf(run_dir, out, quant, log=log, dtype=dtype)
    return path, check.lines(report, report["bytes"])
