"""`lancy export` writes a merged model that transformers loads without lancy; `lancy chat` answers with the run's
prompt, the same text as transformers' generate on the export, and label probabilities for classification runs."""

import json
import subprocess
import sys

import pytest

from tests.conftest import lancy


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = lancy("sft", "--model", tiny_model, "--max-steps", 3, "--learning-rate", "1e-2", "--max-examples", 40,
                    "--run-name", "r", "--output-dir", out)
    assert result.exit_code == 0, result.output
    return out / "r"


WITHOUT_LANCY = """
import json, sys
sys.modules["lancy_trl"] = None  # transformers alone
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt",
                              return_dict=True)
out = model.generate(**ids, max_new_tokens=12, do_sample=False)
print(json.dumps({"reply": tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip(),
                  "eos": model.generation_config.eos_token_id}))
"""


def test_export_loads_without_lancy_and_chat_answers_the_same(run):
    exported = lancy("export", run)
    assert exported.exit_code == 0, exported.output
    folder = exported.output.strip().splitlines()[-1]  # the last line is the path written
    assert folder.endswith("export/merged")
    files = {p.split("/")[-1] for p in map(str, __import__("pathlib").Path(folder).iterdir())}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= files and not any(
        f.endswith(".bin") for f in files)
    text = "profit rose strong"
    plain = subprocess.run([sys.executable, "-c", WITHOUT_LANCY, folder, text], capture_output=True, text=True,
                           timeout=300)
    assert plain.returncode == 0, plain.stderr
    expected = json.loads(plain.stdout.strip().splitlines()[-1])
    assert expected["eos"]  # the end-of-turn stop travels with the export
    said = lancy("chat", run, "--prompt", text, "--raw", "--max-new-tokens", 12)
    assert said.exit_code == 0, said.output
    assert said.stdout.strip() == expected["reply"]


def test_chat_uses_the_runs_prompt_and_scores_labels(run):
    from lancy_trl.chat import Session

    session = Session.load(str(run))
    assert session.system and "financial analyst" in session.system
    message = session.messages("Sales fell 12%.")[-1]["content"]
    assert "What is the sentiment" in message and "Sentence: Sales fell 12%." in message
    said = lancy("chat", run, "--prompt", "Sales fell 12%.", "--labels", "--max-new-tokens", 4)
    assert said.exit_code == 0, said.output
    probabilities = dict(line.split("\t") for line in said.stdout.strip().splitlines()[-3:])
    assert set(probabilities) == {"negative", "neutral", "positive"}
    assert abs(sum(map(float, probabilities.values())) - 1) < 1e-4


def test_a_merged_adapter_is_written_into_memory_of_the_process_own_with_the_same_values(tiny_model, tmp_path):
    """Weights loaded from safetensors are the file's pages mapped copy-on-write; merging an adapter into them copied
    each page at its first write, one fault per 4 KB (about a second for a 135M model). lancy copies the targets
    first: no merged weight is left inside the file's mapping, and the values are peft's own merge's."""
    from pathlib import Path

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lancy_trl.config import EvalArgs, resolve
    from lancy_trl.models import ModelSource, load_model

    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora).save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "adapter")  # as a run saves it
    args = resolve(EvalArgs, flags={"model": str(tiny_model)})
    source = ModelSource("tiny", str(tiny_model), "local", adapter=str(tmp_path / "adapter"))
    model = load_model(source, args, device="cpu", for_training=False).model
    want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter")
    want = want.merge_and_unload().state_dict()
    file = str(Path(tiny_model) / "model.safetensors")
    mapped = []
    for line in Path("/proc/self/maps").read_text().splitlines():  # address range, perms, offset, dev, inode, path
        parts = line.split()
        if len(parts) >= 6 and parts[5] == file:
            mapped.append(tuple(int(x, 16) for x in parts[0].split("-")))
    assert mapped  # the file is mapped, as the copy-on-write trap needs
    targets = [n for n in want if n.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight"))]
    assert targets
    for name, value in model.state_dict().items():
        assert torch.equal(value, want[name]), name
    for name in targets:
        ptr = model.state_dict()[name].data_ptr()
        assert not any(lo <= ptr < hi for lo, hi in mapped), name


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """A LoRA run on a base stored in bf16, as most hub models are."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.conftest import build_tiny_model

    base = build_tiny_model(tmp_path_factory.mktemp("bf16-base"))
    AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).save_pretrained(base)
    out = tmp_path_factory.mktemp("runs")
    result = lancy("sft", "--model", base, "--max-steps", 3, "--learning-rate", "1e-2", "--max-examples", 40,
                   "--run-name", "r", "--output-dir", out)
    assert result.exit_code == 0, result.output
    return out / "r"


def test_a_merged_export_keeps_the_base_models_type_and_is_checked_against_the_fp32_merge(bf16_run, tmp_path):
    """The adapter is merged in fp32 (training keeps fp32 weights); `auto` writes the base's bf16, half the bytes,
    read back and compared with the fp32 merge on the run's held-out prompts; `--dtype fp32` writes the merge as
    computed, unchecked, since it is the run's model itself."""
    from safetensors import safe_open

    kept = lancy("export", bf16_run, "--output-dir", tmp_path / "auto")
    assert kept.exit_code == 0, kept.output
    assert "bf16 weights, read back against the fp32 merge" in kept.output
    assert "most likely token agreeing" in kept.output and "label accuracy on the run's" in kept.output
    wide = lancy("export", bf16_run, "--dtype", "fp32", "--output-dir", tmp_path / "fp32")
    assert wide.exit_code == 0, wide.output
    assert "fp32 weights" in wide.output and "read back" not in wide.output
    sizes = {}
    for name, want in (("auto", "bfloat16"), ("fp32", "float32")):
        folder = tmp_path / name
        assert json.loads((folder / "config.json").read_text())["dtype"] == want
        assert f"weights: {dict(auto='bf16', fp32='fp32')[name]}" in (folder / "README.md").read_text()
        with safe_open(folder / "model.safetensors", "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {dict(auto="BF16", fp32="F32")[name]}
        sizes[name] = (folder / "model.safetensors").stat().st_size
    assert sizes["auto"] < 0.55 * sizes["fp32"]


def test_an_export_that_computes_something_else_is_refused_and_kept_aside(bf16_run, tmp_path, monkeypatch):
    """The read-back check can fail: with no tolerance left, the bf16 rounding is too much, the export stops with
    one line and the folder stays under its .part name."""
    from lancy_trl.export import merged

    monkeypatch.setitem(merged.TOLERANCE, "bf16", 0.0)
    result = lancy("export", bf16_run, "--output-dir", tmp_path / "auto")
    assert result.exit_code == 1
    assert "does not compute what the run's model computes" in result.output
    assert (tmp_path / "auto.part").is_dir() and not (tmp_path / "auto").exists()
