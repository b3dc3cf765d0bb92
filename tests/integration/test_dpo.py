"""`lancy dpo`: preference pairs read from the usual schemas, made from a classification task's labels, trained on
the tiny model from the base and from an SFT run's adapter, scored by `lancy eval` as pairs and as labels."""

import json
from types import SimpleNamespace

import pytest

from tests.conftest import lancy

CONVERSATION = [{"role": "user", "content": "Is revenue up?"}]


def data_args(path, **kw):
    return SimpleNamespace(dataset=[str(path)], dataset_config=[], data_files=[], mixture_rates=[], system_prompt=None,
                           eval_fraction=0.0, max_examples=None, seed=0, redact_pii=False, **kw)


@pytest.mark.parametrize("row, prompt, chosen", [
    ({"prompt": "Is revenue up?", "chosen": "yes", "rejected": "no"}, CONVERSATION, "yes"),
    ({"chosen": CONVERSATION + [{"role": "assistant", "content": "yes"}],
      "rejected": CONVERSATION + [{"role": "assistant", "content": "no"}]}, CONVERSATION, "yes"),
    ({"chosen": "\n\nHuman: Is revenue up?\n\nAssistant: yes", "rejected": "\n\nHuman: Is revenue up?\n\nAssistant: no"},
     CONVERSATION, "yes"),
    ({"system": "Be brief.", "input": "Is revenue up?", "chosen": "yes", "rejected": "no"},
     [{"role": "system", "content": "Be brief."}, *CONVERSATION], "yes"),
    ({"question": "Is revenue up?", "response_j": "yes", "response_k": "no"}, CONVERSATION, "yes"),
], ids=["prompt-chosen-rejected", "conversations", "hh-rlhf-text", "orca", "stack-exchange-paired"])
def test_preference_files_are_read_in_each_schema(row, prompt, chosen, tmp_path):
    from lancy_trl.data.build import build_data

    path = tmp_path / "pairs.jsonl"
    empty = {k: ([] if isinstance(v, list) else "") for k, v in row.items() if k in ("chosen", "response_j")}
    same = {**row, **({"rejected": row["chosen"]} if "chosen" in row else {"response_k": row["response_j"]})}
    path.write_text("".join(json.dumps(r) + "\n" for r in [row, row, {**row, **empty}, same]))
    data = build_data(data_args(path), pairs=True)
    assert data.kind == "preference" and len(data.train) == 2
    first = data.train[0]
    assert first["prompt"] == prompt and first["chosen"] == [{"role": "assistant", "content": chosen}]
    assert first["rejected"][0]["content"] == "no"
    assert any("dropped" in n and "empty or missing answer" in n and "the same answer chosen and rejected" in n
               for n in data.notes), data.notes


def test_dpo_trains_from_the_base_and_from_an_sft_run_and_is_scored_as_pairs_and_labels(tiny_model, tmp_path):
    out = tmp_path / "runs"
    quick = ["--model", tiny_model, "--max-steps", 3, "--max-examples", 32, "--eval-steps", 3, "--output-dir", out]
    base = lancy("dpo", *quick, "--learning-rate", "5e-3", "--run-name", "from-base")
    assert base.exit_code == 0 and "reference the model without its adapter" in " ".join(base.output.split()), base.output
    info = json.loads((out / "from-base" / "run.json").read_text())
    assert info["command"] == "dpo" and info["task"] == "preference" and info["labels"] == ["negative", "neutral", "positive"]
    assert "eval_rewards/accuracies" in info["final_eval"] and info["held_out"]["test"]["rows"] == 75
    scored = lancy("eval", "--model", out / "from-base", "--json", "--limit", 12)
    report = json.loads(scored.stdout.strip().splitlines()[-1])
    assert set(report["model"]) == {"preference", "score", "generate"} and report["model"]["preference"]["n"] == 12
    assert lancy("sft", *quick, "--run-name", "sft").exit_code == 0
    then = lancy("dpo", *[q if q != tiny_model else out / "sft" for q in quick], "--run-name", "after-sft")
    assert then.exit_code == 0 and "reference a frozen copy of the run's adapter" in " ".join(then.output.split())
    assert not (out / "after-sft" / "model" / "ref").exists()  # the reference copy is not handed over
    labels = lancy("dpo", *quick, "--dataset", "finsent", "--run-name", "from-labels")
    assert labels.exit_code == 0 and "pairs made from its labels" in labels.output


@pytest.mark.parametrize("command, words", [
    (["sft", "--dataset", "finsent-preferences"], "holds preference pairs: train on them with `lancy dpo"),
    (["grpo", "--dataset", "finsent-preferences"], "holds preference pairs"),
    (["dpo", "--dataset", "QA"], "is a qa dataset, with one answer a row: lancy dpo needs pairs"),
    (["dpo", "--beta", "0"], "--beta must be positive"),
])
def test_preference_mistakes_are_one_line(command, words, tiny_model, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a long answer number {i}"}) + "\n"
                          for i in range(8)))
    argv = [str(qa) if w == "QA" else w for w in command]
    result = lancy(*argv, "--model", tiny_model, "--output-dir", tmp_path / "runs")
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and words in output and output.startswith("error:"), output
    assert not (tmp_path / "runs").exists()
