"""Train, then evaluate the run: on a user's own files, with the rows the run held out, never its training rows
unless asked, and saying which rows were scored."""

import csv
import json
import random

import pytest

from tests.conftest import lancy


def sorted_rows(n=48):
    """Label-sorted rows (all negatives first), as exported spreadsheets often are."""
    rng = random.Random(1)
    rows = [{"prompt": f"profit {w} this quarter {i}", "completion": "positive" if w == "rose" else "negative"}
            for i, w in enumerate(rng.choice(["rose", "fell"]) for _ in range(n))]
    return sorted(rows, key=lambda r: r["completion"])


def train(tiny_model, tmp_path, dataset, *extra):
    result = lancy("sft", "--model", tiny_model, "--dataset", dataset, "--max-steps", 2, "--output-dir",
                    tmp_path / "runs", "--eval-steps", 2, *extra)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    return run, result.output


def evaluate(run, *extra):
    result = lancy("eval", "--model", run, "--json", "--method", "score", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def predictions(run):
    return [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]


def test_jsonl_run_is_scored_on_its_held_out_rows_only(tiny_model, tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = sorted_rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run, _ = train(tiny_model, tmp_path, path)
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "classification" and info["labels"] == ["negative", "positive"]
    held = [json.loads(line) for line in (run / "data" / "validation.jsonl").read_text().splitlines()]
    assert len(held) == info["held_out"]["validation"]["rows"] == 5  # 10% of 48, seeded
    out, _ = evaluate(run)
    assert (out["split"], out["rows"], out["held_out"]) == ("validation", 5, True)
    assert out["rows_from"] == "10% of train held out (seed 42)" and out["task"] == "classification"
    scored = {p["prompt"] for p in predictions(run)}
    assert scored == {r["prompt"][-1]["content"] for r in held}
    from lancy_trl.config import resolve
    from lancy_trl.data.build import build_data
    from lancy_trl.train.methods.sft import SFTArgs

    trained = {r["prompt"][-1]["content"] for r in build_data(resolve(SFTArgs, info["config"])).train}
    assert not scored & trained  # none of the scored rows was trained on
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert (metrics["split"], metrics["rows"], metrics["held_out"]) == ("validation", 5, True)


def test_training_rows_only_when_asked_and_said(tiny_model, tmp_path, pc_file):
    run, _ = train(tiny_model, tmp_path, pc_file)
    out, result = evaluate(run, "--split", "train", "--limit", 6)
    assert (out["split"], out["held_out"], out["rows"]) == ("train", False, 6)
    assert "not a held-out score" in result.output
    assert json.loads((run / "eval" / "metrics.json").read_text())["held_out"] is False
    result = lancy("eval", "--model", run, "--split", "test")
    assert result.exit_code == 1 and "held out no 'test' rows (it has: validation)" in result.output


def test_csv_with_an_empty_answer_trains_and_evaluates(tiny_model, tmp_path):
    path = tmp_path / "sheet.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        for r in sorted_rows():
            writer.writerow({"instruction": "Classify the sentiment.", "input": r["prompt"], "output": r["completion"]})
        writer.writerow({"instruction": "Classify the sentiment.", "input": "profit rose", "output": ""})
    run, output = train(tiny_model, tmp_path, path)
    assert f"{path}: dropped 1 row(s): empty or missing answer" in " ".join(output.split())
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["train_examples"] + info["data"]["eval_examples"] == 48  # the empty answer is not a row
    assert info["labels"] == ["negative", "positive"]  # never "None"
    out, _ = evaluate(run)
    assert out["held_out"] is True and out["rows"] == info["held_out"]["validation"]["rows"]


def test_free_text_answers_are_scored_by_exact_match_and_f1(tiny_model, tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"what is the fee {i}"},
                          {"role": "assistant", "content": f"the fee is {i} percent a year"}]} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run, _ = train(tiny_model, tmp_path, path)
    assert json.loads((run / "run.json").read_text())["task"] == "qa"
    result = lancy("eval", "--model", run, "--json", "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    report = out["model"]["generate"]
    assert out["task"] == "qa" and report["n"] == 3 and {"exact_match", "f1"} <= set(report)


def test_the_run_template_and_system_prompt_are_the_ones_scored(tiny_model, tmp_path, pc_file):
    run, _ = train(tiny_model, tmp_path, pc_file, "--system-prompt", "you are a bank analyst")
    held = [json.loads(line) for line in (run / "data" / "validation.jsonl").read_text().splitlines()]
    assert all(r["prompt"][0] == {"role": "system", "content": "you are a bank analyst"} for r in held)
    from lancy_trl.config import EvalArgs, resolve
    from lancy_trl.evaluation.runner import eval_rows
    from lancy_trl.runs import read

    es = eval_rows(resolve(EvalArgs, flags={"model": str(run)}), read(run), run)
    assert es.rows == held


def test_limit_is_a_seeded_sample_not_the_first_rows(tiny_model, tmp_path):
    path = tmp_path / "sorted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sorted_rows()))
    from lancy_trl.config import EvalArgs, resolve
    from lancy_trl.evaluation.runner import eval_rows

    es = eval_rows(resolve(EvalArgs, flags={"dataset": str(path), "limit": 10}), {}, None)
    assert {r["target"] for r in es.rows} == {"negative", "positive"}  # the first 10 rows are all negative
    again = eval_rows(resolve(EvalArgs, flags={"dataset": str(path), "limit": 10}), {}, None)
    assert es.rows == again.rows and es.split == "train" and es.notes  # same seed, same rows; train said


def test_data_files_test_split_for_a_train_only_registry_entry(tiny_model, tmp_path):
    from tests.conftest import write_sample

    (train_file,) = write_sample("fingpt-sentiment", tmp_path)
    test_file = train_file.replace("train=", "test=")
    result = lancy("eval", "--model", tiny_model, "--dataset", "fingpt-sentiment", "--data-files", test_file,
                    "--json", "--method", "score", "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["split"] == "test" and out["rows"] >= 1


@pytest.mark.parametrize("eos", ["<|im_end|>", "<|endoftext|>"])
def test_generation_stops_at_the_end_of_turn_token(eos):
    """Base models of Qwen3 and Llama-3.2 end a turn with a token that is not EOS; generation stops at both."""
    from lancy_trl.data.template import stop_ids
    from tests.conftest import build_tokenizer

    tok = build_tokenizer()
    tok.eos_token = eos
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    assert set(stop_ids(tok)) == {tok.eos_token_id, end_of_turn}
    captured = {}

    class Model:  # records what generation is asked to stop at
        device = "cpu"

        def eval(self):
            return self

        def generate(self, **kwargs):
            captured.update(kwargs)
            return kwargs["input_ids"]

    from lancy_trl.evaluation.classify import generate_texts

    generate_texts(Model(), tok, [[{"role": "user", "content": "profit rose"}]], max_new=3)
    assert set(captured["eos_token_id"]) == {tok.eos_token_id, end_of_turn}


def test_a_mixture_run_is_scored_per_source_and_overall(tiny_model, tmp_path):
    a, b = tmp_path / "labels.jsonl", tmp_path / "answers.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in sorted_rows(40)))
    b.write_text("".join(json.dumps({"prompt": f"fee {i}", "completion": f"the fee is {i} percent"}) + "\n"
                         for i in range(40)))
    result = lancy("sft", "--model", tiny_model, "--dataset", a, "--dataset", b, "--mixture-rates", 0.5, 0.5,
                    "--max-steps", 2, "--output-dir", tmp_path / "runs", "--eval-steps", 2)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    result = lancy("eval", "--model", run, "--json", "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    labels, answers = out["sources"]["labels"], out["sources"]["answers"]
    assert (labels["task"], answers["task"]) == ("classification", "qa")
    assert labels["held_out"] and answers["held_out"] and labels["rows"] + answers["rows"] == out["rows"]
    gen = out["model"]["generate"]  # overall: accuracy and F1 weighted by rows
    want = (labels["model"]["generate"]["accuracy"] * labels["rows"] + answers["model"]["generate"]["f1"] * answers["rows"])
    assert gen["n"] == out["rows"] and gen["accuracy"] == pytest.approx(want / out["rows"])
    sources = {json.loads(line)["source"] for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()}
    assert sources == {"labels", "answers"}
    table = lancy("eval", "--model", run, "--max-new-tokens", 4)
    assert table.exit_code == 0 and "labels (classification" in table.output and "answers (qa" in table.output
    assert lancy("report", run).exit_code == 0  # the page shows each source and the mixture as realised
    page = (run / "report.html").read_text()
    per_source = page.split("<h3>Per source</h3>")[1].split("</table>")[0]
    assert "<td>labels</td><td>generate</td><td>accuracy</td>" in per_source and "<td>answers</td>" in per_source
    assert "mixture as realised" in page


def test_a_finished_run_has_a_manifest_that_detects_a_changed_file(tiny_model, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sorted_rows()))
    run, _ = train(tiny_model, tmp_path, path)
    manifest = json.loads((run / "manifest.json").read_text())
    assert str(path.resolve()) in manifest["data"] and "adapter_model.safetensors" in manifest["output"]["files"]
    assert "model.safetensors" in manifest["base_model"]["files"] and "validation.jsonl" in manifest["held_out"]
    ok = lancy("manifest", run, "--verify")
    assert ok.exit_code == 0 and "verified:" in ok.output
    path.write_text(path.read_text().replace("rose", "grew", 1))  # one edited training row
    bad = lancy("manifest", run, "--verify")
    assert bad.exit_code == 1 and f"data: {path.resolve()} changed" in bad.output
    (run / "model" / "adapter_model.safetensors").unlink()
    assert "output: " in lancy("manifest", run, "--verify").output and "is missing" in lancy("manifest", run, "--verify").output
