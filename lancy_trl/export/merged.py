"""`lancy export RUN` (--format merged): the run's model with its adapter merged, in safetensors, with its tokenizer,
chat template, a generation config that stops at the end of turn and a model card; transformers loads it alone.

    path, report = export_merged(Path("runs/<run>"), Path("runs/<run>/export/merged"), "auto")

The adapter is merged in fp32 and the weights are written in the base model's own type (`auto`: its config's dtype,
so a bf16 base gives a bf16 export, half the bytes of fp32), or the type asked for. Rounding can swallow part of a
small LoRA update, so an export in a narrower type than fp32 is read back and checked against the fp32 merge on the
run's held-out prompts (export/check.py), with the tolerances of the same GGUF types.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lancy_trl import faults
from lancy_trl.export import check

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TOLERANCE = {"bf16": check.TOLERANCE["bf16"], "fp16": check.TOLERANCE["f16"]}  # as for GGUF's bf16 and f16


def export_merged(run_dir: Path, out: Path, dtype: str = "auto") -> tuple[Path, dict[str, Any]]:
    """The run's model with its adapter merged, in `dtype` (auto: the base's), in safetensors, with tokenizer, chat
    template, a generation config that stops at the end of turn, and a model card; loads with transformers alone."""
    import torch

    from lancy_trl import runs
    from lancy_trl.chat import Session
    from lancy_trl.data.template import stop_ids

    info = runs.read(run_dir)
    target = stored_dtype(info.get("base_model_path")) if dtype == "auto" else dtype
    session = Session.load(str(run_dir), raw=True)
    model, tokenizer = session.model, session.tokenizer
    reference = check.Outputs.of(run_dir, tokenizer, model) if target != "fp32" else None
    model.to(getattr(torch, DTYPES[target]))
    model.generation_config.eos_token_id = stop_ids(tokenizer, info.get("chat_template_kwargs") or {})
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(run_dir, info, target))
    del session, model
    report: dict[str, Any] = {"dtype": target, "bytes": sum(f.stat().st_size for f in tmp.glob("*.safetensors"))}
    if reference is not None:
        report |= read_back(run_dir, tmp, tokenizer, reference, TOLERANCE[target])
    faults.point("export.merged", tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a folder under the export's name is always whole
    return out, report


def stored_dtype(base: str | None) -> str:
    """The base model's own weight type, as its config.json says (fp32 when it says none lancy writes)."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(base) if base else ({}, None)
    except OSError:  # not readable: loading the model says why
        return "fp32"
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return {v: k for k, v in DTYPES.items()}.get(name, "fp32")


def read_back(run_dir: Path, folder: Path, tokenizer: Any, reference: check.Outputs, tolerance: float) -> dict[str, Any]:
    """The written weights, computed in fp32, against the fp32 merge."""
    import torch
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return reference.compare(check.Outputs.of(run_dir, tokenizer, exported), tolerance, str(folder))


def model_card(run_dir: Path, info: dict[str, Any], dtype: str) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    manifest = run_dir / "manifest.json"
    digest = json.loads(manifest.read_text()).get("output", {}) if manifest.is_file() else {}
    lines = [f"# {run_dir.name}", "", "Trained and exported with lancy-trl, on the machine that holds the data.", "",
             f"- base model: {info.get('base_model_path')}", f"- weights: {dtype}",
             f"- command: lancy {info.get('command', 'sft')}",
             f"- dataset: {info.get('dataset')} ({info.get('task')})",
             f"- labels: {', '.join(info.get('labels') or []) or 'none'}",
             f"- metrics: {json.dumps(metrics)}", f"- run output hashes (manifest.json): {json.dumps(digest)}",
             f"- versions: {json.dumps(info.get('versions', {}))}", "",
             "Load it with transformers alone: `AutoModelForCausalLM.from_pretrained(DIR)`, "
             "`AutoTokenizer.from_pretrained(DIR)`; the chat template and the end-of-turn stop are saved with it."]
    return "\n".join(lines) + "\n"


def write(run_dir: Path, out: Path, quant: str, log: Any, dtype: str = "auto") -> tuple[Path, list[str]]:
    """The exporter: the merged folder in `dtype` (no quantisation: `quant` is not used), and what to say of it."""
    path, report = export_merged(run_dir, out, dtype)
    if "prompts" not in report:
        return path, [f"{report['dtype']} weights, {report['bytes'] / 2**20:.0f} MB: the run's model as it computes"]
    return path, [f"{report['dtype']} weights, read back against the fp32 merge:", *check.lines(report, report["bytes"])]
