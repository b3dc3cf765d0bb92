"""`lancy export RUN` (--format merged): the run's model with its adapter merged, in safetensors, with its tokenizer,
chat template, a generation config that stops at the end of turn and a model card; transformers loads it alone.

    export_merged(Path("runs/<run>"), Path("runs/<run>/export/merged"))
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lancy_trl import faults


def export_merged(run_dir: Path, out: Path) -> Path:
    """The run's model with its adapter merged, in safetensors, with tokenizer, chat template, a generation config
    that stops at the end of turn, and a model card; loads with transformers alone."""
    from lancy_trl import runs
    from lancy_trl.chat import Session
    from lancy_trl.data.template import stop_ids

    info = runs.read(run_dir)
    session = Session.load(str(run_dir), raw=True)
    model, tokenizer = session.model, session.tokenizer
    model.generation_config.eos_token_id = stop_ids(tokenizer, info.get("chat_template_kwargs") or {})
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(run_dir, info))
    faults.point("export.merged", tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a folder under the export's name is always whole
    return out


def model_card(run_dir: Path, info: dict[str, Any]) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    manifest = run_dir / "manifest.json"
    digest = json.loads(manifest.read_text()).get("output", {}) if manifest.is_file() else {}
    lines = [f"# {run_dir.name}", "", "Trained and exported with lancy-trl, on the machine that holds the data.", "",
             f"- base model: {info.get('base_model_path')}", f"- command: lancy {info.get('command', 'sft')}",
             f"- dataset: {info.get('dataset')} ({info.get('task')})",
             f"- labels: {', '.join(info.get('labels') or []) or 'none'}",
             f"- metrics: {json.dumps(metrics)}", f"- run output hashes (manifest.json): {json.dumps(digest)}",
             f"- versions: {json.dumps(info.get('versions', {}))}", "",
             "Load it with transformers alone: `AutoModelForCausalLM.from_pretrained(DIR)`, "
             "`AutoTokenizer.from_pretrained(DIR)`; the chat template and the end-of-turn stop are saved with it."]
    return "\n".join(lines) + "\n"


def write(run_dir: Path, out: Path, quant: str, log: Any) -> tuple[Path, list[str]]:
    """The exporter: the merged folder (no quantisation: `quant` is not used)."""
    return export_merged(run_dir, out), []
