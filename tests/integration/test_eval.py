"""Scoring with a shared prompt cache must equal scoring each full sequence; the CLI writes its reports."""

import json

from typer.testing import CliRunner

from lancy_trl.cli import app


def test_cached_label_scores_equal_full_forward_log_likelihood(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lancy_trl.evaluation.classify import encode_prompts, label_token_ids, score_batch

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [[{"role": "user", "content": "profit rose"}], [{"role": "user", "content": "the bank report was weak a"}]]
    labels = ["negative", "neutral", "positive"]
    label_ids = label_token_ids(tok, prompts[0], labels)
    ids = encode_prompts(tok, prompts)
    with torch.no_grad():
        fast = score_batch(model, ids, label_ids, pad_id=0)
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
