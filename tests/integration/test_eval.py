"""Scoring with a shared prompt cache must equal scoring each full sequence; the CLI writes its reports."""

import json

import pytest

from typer.testing import CliRunner

from lancy_trl.cli import app


@pytest.mark.parametrize("attn, fn", [("sdpa", "score_batch"), ("eager", "score_batch"), ("sdpa", "score_batch_cached")])
def test_label_scores_equal_full_forward_log_likelihood(tiny_model, attn, fn):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lancy_trl.evaluation import classify

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    system = {"role": "system", "content": "you are a financial analyst classify the sentiment"}  # a shared prefix
    prompts = [[system, {"role": "user", "content": "profit rose"}], [system, {"role": "user", "content": "the bank report was weak a"}],
               [system, {"role": "user", "content": "a"}]]
    labels = ["negative", "neutral", "mildly positive", "xyz"]  # 2 to 16 tokens with the end-of-turn token
    label_ids = classify.label_token_ids(tok, prompts[0], labels)
    assert len({len(ids) for ids in label_ids}) > 1
    ids = classify.encode_prompts(tok, prompts)
    assert classify.common_prefix(ids) >= 4  # the shared-prefix path runs
    with torch.no_grad():
        fast = getattr(classify, fn)(model, ids, label_ids, pad_id=0)
        for i, p in enumerate(ids):
            for j, lab in enumerate(label_ids):
                seq = torch.tensor([p + lab])
                logp = torch.log_softmax(model(seq).logits[0, :-1], -1)
                want = sum(logp[len(p) - 1 + t, lab[t]] for t in range(len(lab)))
                assert abs(fast[i, j].item() - want.item()) < 1e-3


def test_eval_cli_writes_metrics_predictions_and_png(tiny_model, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app, ["eval", "--model", str(tiny_model), "--limit", "6", "--output-dir", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    score, gen = data["model"]["score"], data["model"]["generate"]
    assert score["n"] == 6 and 0 <= score["accuracy"] <= 1 and "ece" in score and "invalid_rate" not in score
    assert set(score["per_class"]) == {"negative", "neutral", "positive"} and "invalid_rate" in gen
    assert score["examples_per_second"] > 0
    assert (out / "metrics.json").is_file() and (out / "confusion.png").stat().st_size > 1000
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and abs(sum(preds[0]["probs"].values()) - 1) < 1e-4


def test_compare_base_needs_a_fine_tuned_model(tiny_model, tmp_path):
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model), "--compare-base", "--limit", "2"])
    assert result.exit_code == 1 and "--compare-base needs a fine-tuned model" in result.output
