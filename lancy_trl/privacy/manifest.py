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


def hashed(paths: list[Path]) -> list[str]:
    """sha256 of each path, in order, a thread a core (hashlib lets go of the GIL: a base model and a fully
    fine-tuned output, the bulk of a manifest, hash side by side)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        return list(pool.map(sha256, paths))


def _model_files(path: Path) -> list[Path]:
    """The model files in a folder (weights, config, tokenizer), by name."""
    return sorted({p for pattern in MODEL_FILES for p in path.glob(pattern) if p.is_file()})


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
    groups = {"data": data_files(config), "held_out": sorted((run_dir / "data").glob("*.jsonl")),
              "base": _model_files(base) if base.is_dir() else [], "output": _model_files(run_dir / "model")}
    every = [p for found in groups.values() for p in found]
    digest = dict(zip(every, hashed(every), strict=True))
    by_name = {group: {p.name: digest[p] for p in found} for group, found in groups.items()}
    return {
        "run": run_dir.name,
        "data": {str(p.resolve()): digest[p] for p in groups["data"]},
        "data_fingerprint": info.get("data", {}).get("train_fingerprint"),
        "held_out": by_name["held_out"],
        "base_model": {"path": str(base), "files": by_name["base"], "hub_id": None if base.is_dir() else str(base)},
        "output": {"path": str(run_dir / "model"), "files": by_name["output"]},
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
