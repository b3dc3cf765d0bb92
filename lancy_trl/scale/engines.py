"""The DeepSpeed and FSDP configs lancy ships (package data under templates/engines/) and how a run names one.

    engines.resolve("zero2")                  # a shipped DeepSpeed JSON's path; your own .json passes through, checked
    engines.resolve("fsdp", "FSDP")            # the shipped FSDP file (an accelerate config); your own .yaml/.json too
    engines.fsdp_config("fsdp")               # its fsdp_config section, as the Trainer's `fsdp_config` takes it
    engines.SHIPPED                           # name -> what it is for (`lancy configs list`)

DeepSpeed: every value the Hugging Face integration can fill is left "auto" (batch sizes, accumulation, clipping,
precision, bucket sizes), so one file serves any --batch-size, --num-processes and --precision. No "optimizer"
section: the Trainer's torch AdamW is used (DeepSpeed's fused Adam needs CUDA), which `zero_allow_untested_optimizer`
permits. FSDP: one accelerate config file, for `accelerate launch --config_file` and for `--fsdp` alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError
from lancy_trl.templates import TEMPLATES_DIR

FOLDER = TEMPLATES_DIR / "engines"
DEEPSPEED = {
    "zero1": "ZeRO stage 1: optimizer state sharded across processes; weights and gradients whole in each",
    "zero2": "ZeRO stage 2: optimizer state and gradients sharded; the usual choice for LoRA on several GPUs",
    "zero3": "ZeRO stage 3: weights sharded too, gathered layer by layer; for models that do not fit one device",
    "zero3_offload": "ZeRO stage 3 with optimizer state and weights kept in CPU memory: largest models, slowest",
}
FSDP = {
    "fsdp": "FSDP2 full shard, one unit per decoder layer (--fsdp, or an accelerate config for accelerate launch)",
}
SHIPPED = {**DEEPSPEED, **FSDP}
KINDS = {"DeepSpeed": (DEEPSPEED, (".json",)), "FSDP": (FSDP, (".yaml", ".yml", ".json")),
         "DeepSpeed or FSDP": (SHIPPED, (".json", ".yaml", ".yml"))}


def resolve(name_or_path: str, kind: str = "DeepSpeed") -> Path:
    """A shipped config's path by name, or the user's file; one line naming the shipped ones otherwise."""
    shipped, suffixes = KINDS[kind]
    if name_or_path in shipped:
        return next(FOLDER.glob(f"{name_or_path}.*"))
    path = Path(name_or_path)
    if path.suffix in suffixes and path.is_file():
        return path
    raise LancyError(f"{name_or_path!r} is neither a shipped {kind} config ({', '.join(shipped)}) nor an existing "
                     f"{' or '.join(suffixes)} file; `lancy configs list` shows what each is for")


def skip_inference_comm_build() -> None:
    """DeepSpeed's communication backend compiles a shared-memory all-reduce kernel as it starts on CPU (about 45 s
    with a C++ compiler, once per environment, cached under ~/.cache/torch_extensions). Only its inference engine
    calls that kernel (`inference_all_reduce`, which falls back to torch's all-reduce without it); ZeRO training never
    does, so a run skips the build. Only the function of the DeepSpeed this was written against is replaced; another
    version builds as before."""
    import importlib

    backend = importlib.import_module("deepspeed.comm.torch")  # not `from deepspeed.comm import torch`: that is torch
    if callable(getattr(backend, "build_shm_op", None)) and hasattr(backend.TorchBackend, "inference_all_reduce"):
        backend.build_shm_op = lambda: None  # type: ignore[attr-defined]


def zero_stage(name_or_path: str | None) -> int:
    """The ZeRO stage a run's DeepSpeed config sets (0 without DeepSpeed)."""
    if not name_or_path:
        return 0
    import json

    return int(json.loads(resolve(name_or_path).read_text()).get("zero_optimization", {}).get("stage", 0))


def fsdp_config(name_or_path: str) -> dict[str, Any]:
    """The Trainer's `fsdp_config` from a shipped or user FSDP file: an accelerate config's `fsdp_config` section
    (its `fsdp_` prefixes are what the Trainer strips too), or a JSON of the Trainer's own keys."""
    import json

    import yaml

    path = resolve(name_or_path, "FSDP")
    try:
        raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise LancyError(f"--fsdp: cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise LancyError(f"--fsdp: {path} holds no mapping of settings")
    config = {k.removeprefix("fsdp_"): v for k, v in raw.get("fsdp_config", raw).items()}
    if "offload_params" in config:  # accelerate's config names it so, the Trainer's fsdp_config `cpu_offload`
        config["cpu_offload"] = config.pop("offload_params")
    return config


def sharded_weights(args: Any) -> bool:
    """Whether each process holds a shard of the weights only (ZeRO-3, FSDP): a forward needs every process."""
    return zero_stage(getattr(args, "deepspeed", None)) >= 3 or fsdp_wanted(args)


def fsdp_wanted(args: Any) -> bool:
    """--fsdp, or a launch by `accelerate launch` with an FSDP config (its environment says so)."""
    import os

    return bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def check_device(args: Any, device: str) -> None:
    """FSDP where accelerate runs it: on GPUs and other accelerators. On CPU accelerate would quietly train plain
    data-parallel copies instead, so the run is refused before a model loads."""
    if fsdp_wanted(args) and device == "cpu":
        given = "drop --fsdp" if getattr(args, "fsdp", None) else "launch without the FSDP accelerate config"
        raise LancyError(f"FSDP runs on GPUs (accelerate does not shard over CPU processes; it would train whole "
                         f"copies): on CPU {given} and use --deepspeed zero3 to shard the weights, or --num-processes "
                         "N alone for data parallelism")


def describe(args: Any) -> str | None:
    """The engine a run trains under, in words (None for none)."""
    if getattr(args, "deepspeed", None):
        return f"DeepSpeed {args.deepspeed}"
    return f"FSDP {getattr(args, 'fsdp', None) or '(accelerate config)'}" if fsdp_wanted(args) else None


def sharded_engine(trainer: Any) -> bool:
    """Whether DeepSpeed or FSDP runs the model: they partition weights and hook their gradients."""
    return getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False)


def one_plain_process(trainer: Any) -> bool:
    """Whether the trainer runs as one process with no sharding engine: where lancy's speed paths apply. Several
    processes (DDP's gradient hooks), DeepSpeed and FSDP get TRL's own path instead."""
    return trainer.accelerator.num_processes == 1 and not sharded_engine(trainer)


def import_deepspeed_only_when_used() -> None:
    """accelerate unwraps every model by testing it against DeepSpeedEngine, which imports DeepSpeed (about a second
    and a half with the mlflow it pulls in) in each run wherever it is installed. No model can be a DeepSpeedEngine
    before DeepSpeed is imported, so the test is asked only once it is: the same answer, without the import."""
    import sys

    from accelerate.utils import other

    installed = other.is_deepspeed_available
    if getattr(installed, "lancy_lazy", False):
        return

    def imported() -> bool:
        return "deepspeed" in sys.modules and installed()

    imported.lancy_lazy = True  # type: ignore[attr-defined]
    other.is_deepspeed_available = imported
