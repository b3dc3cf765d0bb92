"""The DeepSpeed configs lancy ships (package data under templates/engines/) and how a run names one.

    engines.resolve("zero2")          # the shipped file's path; a path to your own JSON passes through, checked
    engines.SHIPPED                   # name -> what it is for (`lancy configs list`)

Every value the Hugging Face integration can fill is left "auto" (batch sizes, accumulation, clipping, precision,
bucket sizes), so one file serves any --batch-size, --num-processes and --precision. No "optimizer" section: the
Trainer's torch AdamW is used (DeepSpeed's fused Adam needs CUDA), which `zero_allow_untested_optimizer` permits.
"""

from __future__ import annotations

from pathlib import Path

from lancy_trl.errors import LancyError
from lancy_trl.templates import TEMPLATES_DIR

FOLDER = TEMPLATES_DIR / "engines"
SHIPPED = {
    "zero1": "ZeRO stage 1: optimizer state sharded across processes; weights and gradients whole in each",
    "zero2": "ZeRO stage 2: optimizer state and gradients sharded; the usual choice for LoRA on several GPUs",
    "zero3": "ZeRO stage 3: weights sharded too, gathered layer by layer; for models that do not fit one device",
    "zero3_offload": "ZeRO stage 3 with optimizer state and weights kept in CPU memory: largest models, slowest",
}


def resolve(name_or_path: str) -> Path:
    """A shipped config's path by name, or the user's JSON file; one line naming the shipped ones otherwise."""
    if name_or_path in SHIPPED:
        return FOLDER / f"{name_or_path}.json"
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return path
    raise LancyError(f"{name_or_path!r} is neither a shipped DeepSpeed config ({', '.join(SHIPPED)}) nor an existing "
                     ".json file; `lancy configs list` shows what each is for")


def zero_stage(name_or_path: str | None) -> int:
    """The ZeRO stage a run's DeepSpeed config sets (0 without DeepSpeed)."""
    if not name_or_path:
        return 0
    import json

    return int(json.loads(resolve(name_or_path).read_text()).get("zero_optimization", {}).get("stage", 0))
