"""A run's manifest: sha256 of what went in (data files, base model) and what came out (adapter or model), with the
resolved config, lancy's git commit and the library versions; `lancy manifest RUN --verify` re-hashes and names any
file that changed.

    write(run_dir)            # runs/<run>/manifest.json, when a run finishes
    changed = verify(run_dir) # ["data: /data/clients.jsonl changed", ...]; empty when everything matches
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from lancy_trl import files, runs
from lancy_trl.errors import LancyError

MANIFEST = "manifest.json"
MODEL_FILES = ("*.safetensors", "*.bin", "*.gguf", "config.json", "generation_config.json", "tokenizer*", "*.model",
               "vocab.json", "merges.txt", "special_tokens_map.json", "chat_template.jinja", "adapter_config.json",
               "lancy.json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _folder(path: Path) -> dict[str, str]:
    """sha256 of the model files in a folder (weights, config, tokenizer), by name."""
    found = sorted({p for pattern in MODEL_FILES for p in path.glob(pattern) if p.is_file()})
    return {p.name: sha256(p) for p in found}


def data_files(config: dict[str, Any]) -> list[Path]:
    """The local files a run read: --dataset paths and --data-files values (split and dataset prefixes dropped)."""
    paths = [Path(d) for d in config.get("dataset", []) if Path(d).is_file()]
    for value in config.get("data_files", []):
        rest = value.split(":", 1)[-1] if ":" in value and not Path(value).exists() else value
        path = Path(rest.split("=", 1)[-1])
        if path.is_file():
            paths.append(path)
    return list(dict.fromkeys(paths))


def lancy_commit() -> str | None:
    """The git commit of lancy's own source when it runs from a checkout, else None."""
    try:
        done = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def build(run_dir: Path) -> dict[str, Any]:
    info = runs.read(run_dir)
    config = info.get("config", {})
    base = Path(info.get("base_model_path", ""))
    return {
        "run": run_dir.name,
        "data": {str(p.resolve()): sha256(p) for p in data_files(config)},
        "data_fingerprint": info.get("data", {}).get("train_fingerprint"),
        "held_out": {f.name: sha256(f) for f in sorted((run_dir / "data").glob("*.jsonl"))},
        "base_model": {"path": str(base), "files": _folder(base) if base.is_dir() else {},
                       "hub_id": None if base.is_dir() else str(base)},
        "output": {"path": str(run_dir / "model"), "files": _folder(run_dir / "model")},
        "config": config,
        "lancy_commit": lancy_commit(),
        "versions": info.get("versions", {}),
        "offline": info.get("offline", False),
    }


def write(run_dir: Path) -> Path:
    path = run_dir / MANIFEST
    files.write_json(path, build(run_dir), fault="finish.manifest")
    return path


def verify(run_dir: Path) -> list[str]:
    """What no longer matches the manifest: a changed, missing or new file, by role and path."""
    path = run_dir / MANIFEST
    if not path.is_file():
        raise LancyError(f"{run_dir} has no {MANIFEST} (it is written when a run completes); finish or resume the run")
    want, now = json.loads(path.read_text()), build(run_dir)
    problems = []
    for role, key in (("data", None), ("held-out rows", "held_out"), ("base model", "base_model"), ("output", "output")):
        before = want[key or role] if key in (None, "held_out") else want[key]["files"]
        after = now[key or role] if key in (None, "held_out") else now[key]["files"]
        base = "" if key in (None, "held_out") else want[key]["path"] + "/"
        for name in sorted(set(before) | set(after)):
            if name not in after:
                problems.append(f"{role}: {base}{name} is missing")
            elif name not in before:
                problems.append(f"{role}: {base}{name} is new")
            elif before[name] != after[name]:
                problems.append(f"{role}: {base}{name} changed")
    return problems
