import json

import pytest

from lancy_trl.config import resolve
from lancy_trl.data.adapters import detect_format, from_local
from lancy_trl.data.build import build_data
from lancy_trl.errors import LancyError
from lancy_trl.train.methods.sft import SFTArgs


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "row, user, answer",
    [
        ({"prompt": "p", "completion": "c"}, "p", "c"),
        ({"instruction": "do", "input": "this", "output": "done"}, "do\n\nthis", "done"),
        ({"instruction": "do", "input": "", "output": "done"}, "do", "done"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "q", "a"),
    ],
)
def test_local_formats_become_prompt_completion_messages(row, user, answer):
    out = from_local(row, detect_format(list(row), "f"), system_prompt=None)
    assert out["prompt"][-1] == {"role": "user", "content": user}
    assert out["completion"] == [{"role": "assistant", "content": answer}]


def test_text_rows_stay_language_modelling():
    assert from_local({"text": "hello"}, "text", None) == {"text": "hello"}


def test_unknown_columns_name_what_was_found(tmp_path):
    with pytest.raises(LancyError, match="has columns sentence, label; lancy reads `messages`"):
        detect_format(["sentence", "label"], "x.jsonl")


def test_demo_dataset_has_three_balanced_classes_and_a_seeded_held_out_slice():
    args = resolve(SFTArgs)
    bundle = build_data(args)
    assert bundle.name == "finsent-sentiment" and bundle.labels == ("negative", "neutral", "positive")
    assert bundle.stats["train_examples"] + bundle.stats["eval_examples"] == 225
    assert len(bundle.test) == 75
    row = bundle.train[0]
    assert row["completion"][0]["content"] in bundle.labels
    assert "negative, neutral, positive" in row["prompt"][-1]["content"]
    again = build_data(args)
    assert again.stats["train_fingerprint"] == bundle.stats["train_fingerprint"]
    train_prompts = {r["prompt"][-1]["content"] for r in bundle.train}
    assert not train_prompts & {r["prompt"][-1]["content"] for r in bundle.eval}


def test_empty_and_missing_files_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LancyError):
        build_data(resolve(SFTArgs, flags={"dataset": [str(empty)]}))
    with pytest.raises(LancyError, match="not found"):
        build_data(resolve(SFTArgs, flags={"dataset": [str(tmp_path / "nope.jsonl")]}))


def test_bad_label_names_the_row(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"sentence": "a", "label": 1}, {"sentence": "b", "label": 7}])
    with pytest.raises(LancyError, match="t.jsonl line 2: label 7 is not one of"):
        build_data(resolve(SFTArgs, flags={"dataset": ["finsent"], "data_files": [str(f)]}))


def test_flags_that_do_not_apply_are_refused_not_ignored():
    cases = [
        ({"dataset": ["finsent", "finsent"]}, "named twice"),
        ({"dataset_config": ["sst2"]}, "finsent does not take --dataset-config 'sst2'"),
        ({"mixture_rates": [0.5, 0.5]}, "2 value\\(s\\) for 1 dataset"),
    ]
    for flags, message in cases:
        with pytest.raises(LancyError, match=message):
            build_data(resolve(SFTArgs, flags=flags))


def test_max_examples_is_a_seeded_sample_not_the_first_rows(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "negative" if i < 30 else "positive"} for i in range(60)]  # label-sorted
    f = write_jsonl(tmp_path / "sorted.jsonl", rows)
    flags = {"dataset": [str(f)], "max_examples": 10, "eval_fraction": 0.0}
    bundle = build_data(resolve(SFTArgs, flags=flags))
    assert len(bundle.train) == 10 and set(bundle.train["target"]) == {"negative", "positive"}
    assert bundle.train["prompt"] == build_data(resolve(SFTArgs, flags=flags)).train["prompt"]  # the same seed, the same rows
    assert "sampled with seed 42" in bundle.stats["max_examples"]


def test_empty_and_null_answers_are_dropped_and_counted_never_stringified(tmp_path):
    rows = [{"prompt": "a", "completion": "yes"}, {"prompt": "b", "completion": None}, {"prompt": "c", "completion": ""},
            {"prompt": "d", "completion": "no"}, {"prompt": "e"}, {"prompt": "f", "completion": "  "}]
    f = tmp_path / "holes.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bundle = build_data(resolve(SFTArgs, flags={"dataset": [str(f)], "eval_fraction": 0.0}))
    assert sorted(bundle.train["target"]) == ["no", "yes"]
    assert bundle.stats["skipped"] == {"train": {"empty or missing answer": 4}}
    assert f"{f}: dropped 4 row(s): empty or missing answer" in bundle.notes


def test_answers_max_length_would_cut_are_dropped_with_a_count():
    from datasets import Dataset

    from lancy_trl.data.tokens import fit
    from tests.conftest import build_tokenizer

    tok = build_tokenizer(pad=True)
    rows = [{"prompt": [{"role": "user", "content": "profit rose"}],
             "completion": [{"role": "assistant", "content": "positive " * n}]} for n in (1, 40, 2)]
    ds, report = fit(Dataset.from_list(rows), tok, max_length=30, kwargs={}, where="training")
    assert len(ds) == 2 and report["dropped_answer_cut"] == {"all": 1}  # trained whole or not at all
    with pytest.raises(LancyError, match="1 answer\\(s\\) would be cut"):
        fit(Dataset.from_list(rows[1:2]), tok, max_length=30, kwargs={}, where="training")
