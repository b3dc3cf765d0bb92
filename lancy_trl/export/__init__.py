"""Exporters: a finished run's model as files other tools load, each verified after writing. One module an exporter
(merged.py, gguf.py, ollama.py), each with `write(run_dir, out, quant, log, dtype) -> (path, lines to show)`, and its line
below; `lancy export RUN --format NAME` (lancy_trl/cli/export.py) runs it.

    path, lines = get("gguf").write(Path("runs/<run>"), Path("runs/<run>/export/gguf"), "q8_0", print, "auto")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError


@dataclass(frozen=True)
class Exporter:
    name: str
    module: str
    help: str
    quantized: bool  # takes --quant

    @property
    def write(self) -> Callable[[Path, Path, str, Any, str], tuple[Path, list[str]]]:
        return import_module(self.module).write


EXPORTERS = {e.name: e for e in (
    Exporter("merged", "lancy_trl.export.merged", "merged safetensors that transformers loads alone", False),
    Exporter("gguf", "lancy_trl.export.gguf", "a GGUF file for llama.cpp and LM Studio, checked against the run", True),
    Exporter("ollama", "lancy_trl.export.ollama", "the GGUF and an Ollama Modelfile with the run's prompt", True),
)}


def get(name: str) -> Exporter:
    if name not in EXPORTERS:
        raise LancyError(f"--format {name}: lancy exports {', '.join(EXPORTERS)}")
    return EXPORTERS[name]
