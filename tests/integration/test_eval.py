"""Scoring with a shared prompt cache must equal scoring each full sequence; the CLI writes its reports."""

import json
import math

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
    users = ["profit rose", "the bank report was weak a", "a"]
    prompts = [[system, {"role": "user", "content": u}] for u in users]
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


def random_model(tiny_model, arch, attn):
    """The tiny model's sizes in family `arch` with large random weights, so that each prompt gets its own answer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = AutoConfig.from_pretrained(tiny_model)
    sizes = {k: getattr(base, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads", "num_key_value_heads", "bos_token_id",
                                            "eos_token_id", "pad_token_id")}
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, **sizes, initializer_range=0.5, attn_implementation=attn)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"), ("qwen3", "sdpa")])
def test_generation_from_the_shared_prefix_equals_plain_generation(tiny_model, arch, attn, monkeypatch):
    """Greedy answers with the prompts' shared prefix run once (its cache repeated, each rest left-padded after it)
    are the plain left-padded batch's, token for token; models outside the checked families get the plain batch."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoTokenizer

    from lancy_trl.evaluation import classify

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = random_model(tiny_model, arch, attn)
    system = {"role": "system", "content": "you are a financial analyst classify the sentiment"}
    users = ["profit rose", "the bank report was weak and the outlook worse", "a", "costs fell by a third"]
    ids = classify.encode_prompts(tok, [[system, {"role": "user", "content": u}] for u in users])
    assert classify.generation_prefix(model, ids) >= 4
    with torch.inference_mode():
        shared = classify._generate(model, tok, ids, tok.pad_token_id, 8)
        with monkeypatch.context() as m:
            m.setattr(classify, "generation_prefix", lambda *a: 0)
            plain = classify._generate(model, tok, ids, tok.pad_token_id, 8)
    assert shared == plain and len(set(plain)) == len(users)
    for model_type, impl in (("gemma3", "sdpa"), ("llama", "flash_attention_2")):
        other = SimpleNamespace(config=SimpleNamespace(model_type=model_type, _attn_implementation=impl))
        assert classify.generation_prefix(other, ids) == 0
    assert classify.generation_prefix(model, ids[:1]) == 0


@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"), ("qwen3", "sdpa")])
def test_score_and_generate_from_one_prompt_pass_answer_as_each_alone(tiny_model, arch, attn, monkeypatch):
    """The default eval scores and generates from one prompt pass a batch (generation continues from score's cache):
    the label probabilities equal score's alone and the greedy texts generate's alone, token for token, with prompts
    of several lengths in a batch and a prompt with no shared prefix."""
    from transformers import AutoTokenizer

    from lancy_trl.evaluation import classify

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = random_model(tiny_model, arch, attn)
    system = {"role": "system", "content": "you are a financial analyst classify the sentiment"}
    users = ["profit rose", "the bank report was weak and the outlook worse", "a", "costs fell by a third", "b c"]
    prompts = [[system, {"role": "user", "content": u}] for u in users]
    labels = ["negative", "neutral", "mildly positive"]
    for batch in (3, 1):  # a shared prefix in each batch of several; none for one prompt alone
        both = classify.classify_both(model, tok, prompts, labels, batch, max_new=8)
        score = classify.classify(model, tok, prompts, labels, "score", batch, max_new=8)
        generate = classify.classify(model, tok, prompts, labels, "generate", batch, max_new=8)
        assert [r["output"] for r in both["generate"]] == [r["output"] for r in generate]
        assert len({r["output"] for r in generate}) >= 3  # answers that differ by prompt
        for got, want in zip(both["score"], score):
            assert got["prediction"] == want["prediction"]
            assert all(abs(got["probs"][k] - want["probs"][k]) < 1e-4 for k in labels)
    monkeypatch.setattr(classify, "PREFIX_GENERATION", ())  # a family outside the checked ones: the two run apart
    apart = classify.classify_both(model, tok, prompts, labels, 3, max_new=8)
    alone = classify.classify(model, tok, prompts, labels, "generate", 3, max_new=8)
    assert [r["output"] for r in apart["generate"]] == [r["output"] for r in alone]


def test_batches_of_like_lengths_answer_each_row_in_its_place(tiny_model, monkeypatch):
    """`classify` batches prompts longest first (less padding); each answer still lands on its own row: scores equal
    the row scored alone, and each generated text is its own prompt's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lancy_trl.evaluation import classify

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    users = ["a", "the bank report was weak and the outlook is worse", "profit rose", "costs fell by a third this year",
             "b c"]
    prompts = [[{"role": "user", "content": u}] for u in users]
    labels = ["negative", "neutral", "positive"]
    together = classify.classify(model, tok, prompts, labels, "score", batch_size=2)
    alone = [classify.classify(model, tok, [p], labels, "score", batch_size=1)[0] for p in prompts]
    assert len({str(r["probs"]) for r in alone}) == len(users)  # rows differ, so a misplaced answer would show
    for both, one in zip(together, alone):
        assert both["prediction"] == one["prediction"] and both["probs"] == pytest.approx(one["probs"], abs=1e-4)
    # generation: a random tiny model says the same for every row, so each row's text here names its own prompt
    monkeypatch.setattr(classify, "_generate", lambda model, tok, ids, *a: [tok.decode(i[-12:]) for i in ids])
    answers = classify.classify(model, tok, prompts, labels, "generate", batch_size=2)
    assert [a["output"] for a in answers] == [tok.decode(i[-12:]) for i in classify.encode_prompts(tok, prompts)]


def test_eval_cli_writes_metrics_predictions_and_png(tiny_model, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app, ["eval", "--model", str(tiny_model), "--limit", "6", "--output-dir", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    score, gen = data["model"]["score"], data["model"]["generate"]
    assert score["n"] == 6 and "ece" in score and "invalid_rate" not in score
    assert set(score["per_class"]) == {"negative", "neutral", "positive"} and "invalid_rate" in gen
    assert score["examples_per_second"] > 0
    assert (out / "metrics.json").is_file() and (out / "confusion.png").stat().st_size > 1000
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and abs(sum(preds[0]["probs"].values()) - 1) < 1e-4
    for method, report in (("score", score), ("generate", gen)):  # the reported accuracy is the predictions'
        mine = [p for p in preds if p["method"] == method]
        assert report["accuracy"] == pytest.approx(sum(p["prediction"] == p["target"] for p in mine) / len(mine))


def test_compare_base_needs_a_fine_tuned_model(tiny_model, tmp_path):
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model), "--compare-base", "--limit", "2"])
    assert result.exit_code == 1 and "--compare-base needs a fine-tuned model" in result.output


def _eval(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


@pytest.mark.parametrize("name", ["mmlu", "adaptllm-fpb"])
def test_rows_with_their_own_options_choose_among_them(name, tiny_model, tmp_path):
    from tests.conftest import write_sample

    files = write_sample(name, tmp_path)
    result = _eval("--model", tiny_model, "--dataset", name, "--data-files", *files, "--output-dir", tmp_path / "out",
                   "--json", "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["task"] == ("multiple_choice" if name == "mmlu" else "classification")
    assert {"score", "generate"} == set(out["model"])
    preds = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    for p in preds:
        assert p["prompt"] and p["target"]
        if p["method"] == "score":
            assert p["prediction"] in p["probs"] and sum(p["probs"].values()) == pytest.approx(1)
    score = [p for p in preds if p["method"] == "score"]
    assert out["model"]["score"]["accuracy"] == pytest.approx(sum(p["prediction"] == p["target"] for p in score) / len(score))


@pytest.mark.parametrize("name, metric", [("gsm8k", "accuracy"), ("fiqa-qa", "f1"), ("wikitext", "perplexity")])
def test_math_qa_and_text_tasks(name, metric, tiny_model, tmp_path):
    from tests.conftest import write_sample

    files = write_sample(name, tmp_path)
    result = _eval("--model", tiny_model, "--dataset", name, "--data-files", *files, "--output-dir", tmp_path / "out",
                   "--json", "--max-new-tokens", 8)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    (report,) = out["model"].values()
    assert metric in report and report["n"] >= 1 and report["examples_per_second"] > 0
    if name == "wikitext":
        assert report["perplexity"] > 1 and report["tokens"] > 0
    assert not (tmp_path / "out" / "confusion.png").exists()
    table = _eval("--model", tiny_model, "--dataset", name, "--data-files", *files, "--output-dir", tmp_path / "o2",
                  "--max-new-tokens", 8)
    assert table.exit_code == 0 and metric.replace("f1", "F1") in table.output


def test_perplexity_equals_the_models_own_loss(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lancy_trl.evaluation.tasks import perplexity

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["the company rose", "profit fell in the quarter and sales were weak"]
    got = perplexity(model, tok, texts, batch_size=2)
    nll, n = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        nll += loss * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    assert got["tokens"] == n and got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_code_and_score_on_free_text_are_refused(tiny_model, tmp_path):
    from tests.conftest import write_sample

    code = _eval("--model", tiny_model, "--dataset", "bigcodebench", "--data-files", *write_sample("bigcodebench", tmp_path))
    assert code.exit_code == 1 and "running its tests" in code.output
    math_score = _eval("--model", tiny_model, "--dataset", "gsm8k", "--data-files", *write_sample("gsm8k", tmp_path),
                       "--method", "score")
    assert math_score.exit_code == 1 and "--method generate" in math_score.output


def test_eval_uses_the_first_split_with_answers(tiny_model, tmp_path):
    from tests.conftest import write_sample

    files = write_sample("finance-math", tmp_path)  # test rows have no ground truth; validation has
    result = _eval("--model", tiny_model, "--dataset", "finance-math", "--data-files", *files, "--json",
                   "--max-new-tokens", 4, "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["generate"]["n"] == 2
