"""`lancy export RUN --format ollama`: the verified GGUF and a Modelfile with the run's system prompt, its instruction
around the user's text and the end-of-turn stop.

    modelfile(run_dir, gguf, chat_template)     # Ollama's Modelfile text (ChatML templates)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError

CHATML = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
          "{{ if .Prompt }}<|im_start|>user\n%s<|im_end|>\n{{ end }}<|im_start|>assistant\n")


def modelfile(run_dir: Path, gguf: Path, chat_template: str) -> str:
    """Ollama's Modelfile for a GGUF: the run's system prompt, its instruction around the user's text, and the
    end-of-turn stop, in Ollama's template syntax. Written for ChatML templates (SmolLM2, Qwen) only: any other
    Jinja template is refused rather than guessed."""
    from lancy_trl import runs
    from lancy_trl.chat import run_prompt

    if "<|im_start|>" not in chat_template or "<|im_end|>" not in chat_template:
        raise LancyError("--format ollama writes ChatML templates (SmolLM2, Qwen) only; this model's chat template is "
                         "another: use --format gguf and write the Modelfile's TEMPLATE by hand")
    system, user = run_prompt(run_dir, runs.read(run_dir))
    prompt = user.replace("\x00", "{{ .Prompt }}") if user else "{{ .Prompt }}"
    lines = [f"FROM ./{gguf.name}", f'TEMPLATE """{CHATML % prompt}"""', 'PARAMETER stop "<|im_end|>"',
             "PARAMETER temperature 0"]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def write(run_dir: Path, out: Path, quant: str, log: Any, dtype: str = "auto") -> tuple[Path, list[str]]:
    """The exporter: the verified GGUF (lancy_trl/export/gguf.py) and its Modelfile beside it."""
    from transformers import AutoTokenizer

    from lancy_trl import files
    from lancy_trl.export import gguf

    path, lines = gguf.write(run_dir, out, quant, log, dtype)
    template = AutoTokenizer.from_pretrained(run_dir / "export" / "merged").chat_template or ""
    target = path.parent / "Modelfile"
    files.write_text(target, modelfile(run_dir, path, template))
    return target, [*lines, f"next: cd {target.parent} && ollama create {run_dir.name.lower()[:40]} -f Modelfile"]
