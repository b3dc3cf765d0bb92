"""The real default: `lancy sft` on SmolLM2-135M-Instruct (hub, or the GGUF from PyPI), a few steps."""

import json

import pytest
from typer.testing import CliRunner

from lancy_trl.cli import app

pytestmark = pytest.mark.e2e


def test_default_run_learns_and_its_adapter_reloads(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = CliRunner().invoke(
        app, ["sft", "--max-steps", "6", "--eval-steps", "3", "--eval-max-batches", "1", "--output-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["model_info"]["architecture"] == "LlamaForCausalLM"
    log = [json.loads(line) for line in (run / "logs" / "training.log").read_text().splitlines() if line.startswith("{")]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0], losses

    # the saved adapter loads onto the base model and answers with a label word
    base = AutoModelForCausalLM.from_pretrained(info["base_model_path"])
    model = PeftModel.from_pretrained(base, run / "model").eval()
    tok = AutoTokenizer.from_pretrained(run / "model")
    row = {"role": "user", "content": "What is the sentiment of this sentence for an investor?\nSentence: Net "
           "profit rose 40 percent.\nAnswer with one word: negative, neutral, positive."}
    ids = tok.apply_chat_template([row], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip().lower()
    assert answer.split()[0].strip(".") in {"negative", "neutral", "positive"}, answer
