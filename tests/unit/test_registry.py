"""The dataset registry: every entry of DATASETS.md, label words pinned per class id, lookups, label hygiene,
splits and mixtures, on rows written in each hub schema."""

import json

import pytest

from lancy_trl.config import resolve
from lancy_trl.data import adapters
from lancy_trl.data.build import build_data, check_rates, mixture_counts
from lancy_trl.data.registry import entries, lookup, require, sample_rows
from lancy_trl.data.sources import load_source, parse_data_files
from lancy_trl.errors import LancyError
from lancy_trl.train.methods.sft import SFTArgs
from tests.conftest import write_sample

# Every dataset in ../shared/DATASETS.md, by registry name
DOC_ENTRIES = [
    "imdb", "glue-cola", "glue-sst2", "glue-mrpc", "glue-qqp", "glue-mnli", "glue-qnli", "glue-rte", "glue-wnli",
    "financial-phrasebank", "twitter-fin-sentiment", "twitter-fin-topic", "fiqa-sentiment", "fingpt-sentiment",
    "adaptllm-fpb", "adaptllm-fiqa-sa", "adaptllm-headline", "mmlu-pro", "mmlu", "fiqa-qa", "finance-alpaca",
    "financial-qa-10k", "adaptllm-convfinqa", "adaptllm-ner", "sujet-finance-qa-vision", "gsm8k", "finance-math",
    "math-dataset", "bigcodebench", "openwebtext", "bookcorpus", "wikitext", "common-corpus", "financial-reports-sec",
]

# label id -> word, in hub order, for every classification entry with a fixed label set
PINNED = {
    "finsent": ["negative", "neutral", "positive"],
    "imdb": ["negative", "positive"],
    "glue-cola": ["unacceptable", "acceptable"],
    "glue-sst2": ["negative", "positive"],
    "glue-mrpc": ["not_equivalent", "equivalent"],
    "glue-qqp": ["not_duplicate", "duplicate"],
    "glue-mnli": ["entailment", "neutral", "contradiction"],
    "glue-qnli": ["entailment", "not_entailment"],
    "glue-rte": ["entailment", "not_entailment"],
    "glue-wnli": ["not_entailment", "entailment"],
    "financial-phrasebank": ["negative", "neutral", "positive"],
    "twitter-fin-sentiment": ["Bearish", "Bullish", "Neutral"],
    "twitter-fin-topic": [
        "Analyst Update", "Fed | Central Banks", "Company | Product News", "Treasuries | Corporate Debt", "Dividend",
        "Earnings", "Energy | Oil", "Financials", "Currencies", "General News | Opinion", "Gold | Metals | Materials",
        "IPO", "Legal | Regulation", "M&A | Investments", "Macro", "Markets", "Politics", "Personnel Change",
        "Stock Commentary", "Stock Movement",
    ],
    "fiqa-sentiment": ["negative", "neutral", "positive"],
    "fingpt-sentiment": [
        "negative", "neutral", "positive", "mildly negative", "moderately negative", "strong negative",
        "mildly positive", "moderately positive", "strong positive",
    ],
}


def test_every_documented_dataset_is_an_entry_with_a_sample_and_template():
    assert set(DOC_ENTRIES) <= set(entries()) and len(entries()) >= 26
    for name, spec in entries().items():
        assert sample_rows(name), name
        if spec.kind != "pretraining":
            template = adapters.load_template(spec.template)
            assert set(template) >= {"system", "user"}, name


@pytest.mark.parametrize("name", list(PINNED))
def test_label_word_for_every_class_id(name):
    spec = entries()[name]
    assert list(spec.labels) == PINNED[name]
    if spec.label.get("from", "id") == "id":
        for i, word in enumerate(PINNED[name]):
            row = {c: "x" for c in spec.fields.values()} | {spec.label_column: i}
            assert adapters.from_spec(row, spec, 0, None)[0]["target"] == word


def test_every_classification_entry_is_pinned_or_reads_row_options():
    for name, spec in entries().items():
        if spec.kind == "classification":
            assert name in PINNED or spec.label.get("from") == "options", name


def test_addressed_by_hub_id_and_config_or_short_name():
    assert require("glue", "wnli").name == "glue-wnli"
    assert require("nyu-mll/glue", "sst2").name == "glue-sst2"
    assert require("glue-sst2").config == "sst2"
    assert require("stanfordnlp/imdb", "None").name == "imdb"
    assert require("phrasebank").config == "sentences_allagree"
    assert require("takala/financial_phrasebank", "sentences_66agree").config == "sentences_66agree"
    assert lookup("no-such-thing") is None
    with pytest.raises(LancyError, match="glue needs a config; choose one with --dataset-config: cola, sst2"):
        require("glue")
    with pytest.raises(LancyError, match="did you mean 'imdb'.*lancy datasets list"):
        require("imbd")
    with pytest.raises(LancyError, match="no config 'sentences_99agree'"):
        require("phrasebank", "sentences_99agree")


def test_unlabelled_rows_are_dropped_with_a_count_and_bad_labels_name_the_row(tmp_path):
    files = write_sample("glue-sst2", tmp_path)
    bundle = build_data(resolve(SFTArgs, flags={"dataset": ["glue"], "dataset_config": ["sst2"], "data_files": files}))
    assert bundle.stats["skipped"] == {"test": {"label -1 or missing (unlabelled rows)": 1}}
    assert bundle.test is None and bundle.stats["eval_from"] == "validation split"
    assert any(n.endswith("test.jsonl: dropped 1 row(s): label -1 or missing (unlabelled rows)") for n in bundle.notes)
    bad = tmp_path / "bad.jsonl"
    rows = [{"sentence": "a", "label": 0, "idx": 0}, {"sentence": "b", "label": 2, "idx": 1}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LancyError, match=r"bad.jsonl line 2: label 2 is not one of \['negative', 'positive'\]"):
        build_data(resolve(SFTArgs, flags={"dataset": ["glue-sst2"], "data_files": [str(bad)]}))


@pytest.mark.parametrize("score, word", [(-0.5, "negative"), (-0.1, "neutral"), (0.0999, "neutral"), (0.1, "positive"),
                                         (-0.1001, "negative"), (1.0, "positive")])
def test_fiqa_scores_are_binned(score, word):
    spec = require("fiqa-sentiment")
    assert adapters.from_spec({"sentence": "s", "score": score}, spec, 0, None)[0]["target"] == word


def test_answers_read_from_row_options_and_letters():
    fpb = require("adaptllm-fpb")
    row = sample_rows("adaptllm-fpb")["test"][0]
    out = adapters.from_spec(row, fpb, 0, None)[0]
    assert out["target"] == row["options"][row["gold_index"]] and out["choices"] == row["options"]
    mmlu = require("mmlu")
    out = adapters.from_spec({"question": "q", "subject": "s", "choices": ["w", "x", "y", "z"], "answer": 2}, mmlu, 0, None)[0]
    assert out["target"] == "C" and "C. y" in out["prompt"][-1]["content"]
    pro = require("mmlu-pro")
    with pytest.raises(LancyError, match="answer 'E' does not name one of the 3 options"):
        adapters.from_spec({"question": "q", "options": ["a", "b", "c"], "answer": "E"}, pro, 7, None)


def test_cleaning_rules_from_the_hub_schemas():
    math = adapters.from_spec(sample_rows("math-dataset")["train"][0], require("math-dataset"), 0, None)[0]
    assert math["prompt"][-1]["content"] == "Solve 3*x + 2 = 11 for x." and math["target"] == "3"
    sujet = adapters.from_spec(sample_rows("sujet-finance-qa-vision")["train"][0], require("sujet-finance-qa-vision"), 0, None)
    assert [r["target"] for r in sujet] == ["$4.2 million", "2022"]  # one example per question in the JSON string
    gsm = adapters.from_spec(sample_rows("gsm8k")["train"][0], require("gsm8k"), 0, None)[0]
    assert gsm["target"].endswith("#### 72") and "<<48/2=24>>" in gsm["target"]
    code = adapters.from_spec(sample_rows("bigcodebench")["v0.1.4"][0], require("bigcodebench"), 0, None)[0]
    assert "def task_func(values):\n    return math.fsum" in code["target"]  # indentation kept
    alpaca = adapters.from_spec({"instruction": "Do it.", "input": "", "output": "ok"}, require("finance-alpaca"), 0, None)[0]
    assert alpaca["prompt"][-1]["content"] == "Do it."  # an empty input leaves no blank lines
    with pytest.raises(adapters.Skip):
        adapters.from_spec({"text": "   "}, require("wikitext"), 0, None)


def test_splits_are_mapped_per_entry(tmp_path):
    def build(name):
        return build_data(resolve(SFTArgs, flags={"dataset": [name], "data_files": write_sample(name, tmp_path)}))

    mnli = build("glue-mnli")
    assert mnli.stats["splits"] == {"train": "train", "validation": "validation_matched", "test": "test_matched"}
    fiqa = build("fiqa-sentiment")
    assert fiqa.stats["splits"]["validation"] == "valid"
    adapt = build("adaptllm-fpb")
    assert adapt.stats["splits"]["train"] == "test" and adapt.test is None
    assert any("no train split" in n for n in adapt.notes)
    assert adapt.labels == ("Negative", "Neutral", "Positive")


def test_held_out_slice_is_seeded_recorded_and_disjoint(tmp_path):
    rows = [{"sentence": f"sentence number {i}", "label": i % 3} for i in range(40)]
    f = tmp_path / "pb.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = resolve(SFTArgs, flags={"dataset": ["phrasebank"], "data_files": [str(f)], "eval_fraction": 0.25})
    a, b = build_data(args), build_data(args)
    assert a.stats["eval_from"] == "25% of train held out (seed 42)" and len(a.eval) == 10
    assert a.stats["train_fingerprint"] == b.stats["train_fingerprint"]
    users = lambda ds: {r["prompt"][-1]["content"] for r in ds}  # noqa: E731
    assert not users(a.train) & users(a.eval)


def test_phrasebank_raw_text_files_read_as_iso_8859_1(tmp_path):
    f = tmp_path / "Sentences_AllAgree.txt"
    f.write_bytes("Sales rose 5 % .@positive\nS\xe4kyl\xe4 plant closes .@negative\n".encode("iso-8859-1"))
    source = load_source("phrasebank", None, [str(f)])
    rows = list(source.raw["train"])
    assert rows[1] == {"sentence": "Säkylä plant closes .", "label": "negative"}
    assert adapters.from_spec(rows[0], source.spec, 0, None)[0]["target"] == "positive"


def test_file_names_give_the_split():
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    for name in ("test.parquet", "validation_matched-00000-of-00001.parquet", "data.parquet"):
        (d / name).write_text("")
    files = parse_data_files([str(d / n) for n in ("test.parquet", "validation_matched-00000-of-00001.parquet", "data.parquet")],
                             ["train", "validation", "validation_matched", "test"])
    assert {k: [Path(p).name for p in v] for k, v in files.items()} == {
        "test": ["test.parquet"], "validation_matched": ["validation_matched-00000-of-00001.parquet"], "train": ["data.parquet"],
    }


def test_hub_loading_errors_say_what_to_do(monkeypatch):
    with pytest.raises(LancyError, match="loads through a dataset script.*--data-files"):
        load_source("takala/financial_phrasebank", "sentences_allagree")
    with pytest.raises(LancyError, match=r"cannot load nyu-mll/glue \[sst2\] from the hub .*--data-files"):
        load_source("glue", "sst2")  # the tests run with HF_HUB_OFFLINE=1
    with pytest.raises(LancyError, match="streamed .* pass --max-examples"):
        load_source("openwebtext")


def test_hub_loading_asks_for_the_named_config(monkeypatch):
    import datasets

    calls = []

    def fake_load(path, name=None, **kw):
        calls.append((path, name, kw))
        return datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in sample_rows("glue-wnli").items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    bundle = build_data(resolve(SFTArgs, flags={"dataset": ["glue"], "dataset_config": ["wnli"]}))
    assert calls == [("nyu-mll/glue", "wnli", {})]
    assert bundle.stats["origin"] == "hub" and bundle.train[0]["target"] in ("entailment", "not_entailment")


@pytest.mark.parametrize("rates, message", [([0.7, 0.2], "sum to 1"), ([1.2, -0.2], "positive"), ([1.0], "1 value")])
def test_mixture_rates_are_checked(rates, message):
    with pytest.raises(LancyError, match=message):
        check_rates(rates, 2)


def test_mixture_counts_keep_the_total_and_oversample():
    assert mixture_counts([100, 10], [0.5, 0.5]) == [55, 55]
    assert mixture_counts([3, 3, 4], [0.2, 0.3, 0.5]) == [2, 3, 5]


def test_mixture_samples_by_rate_reproducibly(tmp_path):
    files = write_sample("imdb", tmp_path) + write_sample("glue-sst2", tmp_path)
    routed = [f"imdb:{f}" for f in files[:3]] + [f"2:{f}" for f in files[3:]]
    flags = {"dataset": ["stanfordnlp/imdb", "glue"], "dataset_config": ["None", "sst2"], "data_files": routed,
             "mixture_rates": [0.25, 0.75], "eval_fraction": 0.34}
    a = build_data(resolve(SFTArgs, flags=flags))
    b = build_data(resolve(SFTArgs, flags=flags))
    mixture = a.stats["mixture"]
    # imdb: 4 rows -> 2 train after the 34% held-out slice; sst2: 3 train; 5 in all, 25% / 75% -> 1.25 / 3.75
    assert (mixture["imdb"]["examples"], mixture["glue-sst2"]["examples"]) == (1, 4)
    assert mixture["glue-sst2"]["epochs_of_source"] > 1  # oversampled
    assert sorted(a.train["source"]) == ["glue-sst2"] * 4 + ["imdb"]
    assert a.stats["train_fingerprint"] == b.stats["train_fingerprint"]
    assert a.name == "imdb+glue-sst2-mix" and set(a.eval["source"]) == {"imdb", "glue-sst2"}


def test_mixture_files_must_say_which_dataset(tmp_path):
    files = write_sample("imdb", tmp_path)
    with pytest.raises(LancyError, match="prefix each file with its dataset"):
        build_data(resolve(SFTArgs, flags={"dataset": ["imdb", "glue-sst2"], "data_files": files}))


def test_a_local_file_takes_its_other_splits_from_data_files(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    val.write_text(json.dumps({"prompt": "vq", "completion": "va"}) + "\n")
    bundle = build_data(resolve(SFTArgs, flags={"dataset": [str(train)], "data_files": [f"validation={val}"]}))
    assert len(bundle.train) == 4
    assert bundle.stats["eval_from"] == "validation split" and len(bundle.eval) == 1


def test_an_unreachable_hub_uses_only_the_local_cache_at_once(monkeypatch):
    import datasets
    import huggingface_hub.constants as hub

    from lancy_trl.privacy import network

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("LANCY_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(network, "hub_reachable", lambda repo, repo_type="model": asked.append((repo, repo_type)))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    seen = []

    def fake_load(path, name=None, **kw):
        seen.append((datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(LancyError, match="not reachable and the dataset is not in the local datasets cache.*--data-files"):
        load_source("glue", "sst2")
    assert asked == [("nyu-mll/glue", "dataset")]
    assert seen == [(True, True)] and datasets.config.HF_HUB_OFFLINE is False and hub.HF_HUB_OFFLINE is False
