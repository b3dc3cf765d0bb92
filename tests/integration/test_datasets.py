"""Every registry entry from local files in its hub schema: `lancy datasets preview` shows what the trainer will see,
and `lancy sft` trains a few steps on it with the tiny model. Plus list/show, mixtures and the thinking switch."""

import json

import pytest
from typer.testing import CliRunner

from lancy_trl.cli import app
from lancy_trl.data.registry import entries, sample_rows
from tests.conftest import lancy, tensorboard_tags, write_sample

runner = CliRunner()
NAMES = [n for n in entries() if n != "finsent"]



@pytest.mark.parametrize("name", NAMES)
def test_preview_from_local_files_in_the_hub_schema(name, tmp_path):
    spec = entries()[name]
    fmt = "parquet" if name in ("imdb", "glue-mnli", "mmlu", "twitter-fin-topic") else "jsonl"
    files = write_sample(name, tmp_path, fmt)
    result = lancy("datasets", "preview", name, "--data-files", *files, "-n", 2, "--json")
    assert result.exit_code == 0, result.output
    shown = [json.loads(line) for line in result.output.splitlines()]
    assert 1 <= len(shown) <= 2
    for example in shown:
        if spec.kind == "pretraining":
            assert set(example) == {"text"} and example["text"]
            continue
        assert [m["role"] for m in example["prompt"]] == ["system", "user"]
        answer = example["chosen"] if spec.kind == "preference" else example["completion"]
        assert answer == [{"role": "assistant", "content": example["target"]}]
        if spec.kind == "classification":
            allowed = example.get("choices") or list(spec.labels)
            assert example["target"] in allowed
            if spec.template not in ("few_shot", "instruction_input"):  # these sources name the choices themselves
                assert ", ".join(allowed) in example["prompt"][-1]["content"]
    if spec.kind == "classification" and spec.label.get("from", "id") == "id":
        split = spec.source_split("train", list(sample_rows(name))) or next(iter(sample_rows(name)))
        first = next(r for r in sample_rows(name)[split] if r[spec.label_column] != -1)
        assert shown[0]["target"] == spec.labels[first[spec.label_column]]


@pytest.mark.parametrize("name", NAMES)
def test_sft_trains_a_few_steps_on_every_entry(name, tmp_path, tiny_model):
    """Every entry trains with its method: preference pairs with `lancy dpo`, the others with `lancy sft`."""
    files = write_sample(name, tmp_path)
    command = "dpo" if entries()[name].kind == "preference" else "sft"
    result = lancy(command, "--dataset", name, "--data-files", *files, "--model", tiny_model, "--max-steps", 2,
                   "--batch-size", 2, "--eval-steps", 2, "--save-steps", 10, "--output-dir", tmp_path / "runs",
                   "--max-length", 512)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["steps"] == 2
    assert info["data"]["train_tokens"]["tokens"]["all"] > 0
    assert f"{entries()[name].name}-{entries()[name].task}" in run.name


def test_mixture_from_the_cli_with_the_older_spelling(tmp_path, tiny_model):
    imdb, sst2 = write_sample("imdb", tmp_path), write_sample("glue-sst2", tmp_path)
    result = lancy("sft", "--datasets", "stanfordnlp/imdb", "glue", "--dataset_configs", "None", "sst2",
                   "--mixture_rates", 0.7, 0.3, "--data_files", *[f"1:{f}" for f in imdb], *[f"glue-sst2:{f}" for f in sst2],
                   "--model", tiny_model, "--max-steps", 1, "--batch-size", 2, "--output-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "Mixture as realised" in result.output
    (run,) = (tmp_path / "runs").iterdir()
    data = json.loads((run / "run.json").read_text())["data"]
    mixture = data["mixture"]
    assert set(mixture) == {"imdb", "glue-sst2"} and mixture["imdb"]["rate"] == 0.7
    assert all(m["tokens"] > 0 for m in mixture.values())
    assert data["train_tokens"]["examples"] == {k: m["examples"] for k, m in mixture.items()}
    tags = tensorboard_tags(run / "tensorboard")
    assert {"data/examples/imdb", "data/tokens/glue-sst2"} <= tags



def test_list_show_and_unknown_names():
    result = lancy("datasets", "list", "--json")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == len(entries()) and {"name", "kind", "task", "splits"} <= set(rows[1])
    wnli = next(r for r in rows if r["name"] == "glue-wnli")
    assert wnli["labels"] == {"0": "not_entailment", "1": "entailment"}
    assert lancy("datasets", "list").exit_code == 0
    show = lancy("datasets", "show", "glue", "--dataset-config", "wnli")
    assert show.exit_code == 0 and "0 not_entailment, 1 entailment" in show.output and "assistant:" in show.output
    bad = lancy("datasets", "show", "imbd")
    assert bad.exit_code == 1 and "did you mean 'imdb'" in bad.output and "lancy datasets list" in bad.output
    assert "Traceback" not in bad.output


def test_examples_left_without_an_answer_are_dropped_and_counted(tmp_path, tiny_model):
    rows = [{"sentence": "rose " * n, "label": n % 3} for n in (3, 4, 5, 6, 200, 300)]
    f = tmp_path / "long.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--dataset", "finsent", "--data-files", f, "--model", tiny_model, "--max-steps", 1, "--batch-size", 2,
              "--output-dir", tmp_path / "runs", "--eval-fraction", 0]
    result = lancy("sft", *common, "--max-length", 128)
    assert result.exit_code == 0, result.output
    assert "dropped 2 example(s) whose prompt fills --max-length 128" in " ".join(result.output.split())
    result = lancy("sft", *common, "--max-length", 8)
    assert result.exit_code == 1 and "raise --max-length" in result.output


QWEN3_LIKE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' %}{{ '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{{ message['content'] + '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)


def test_thinking_templates_answer_labels_with_thinking_off():
    from lancy_trl.data.template import chat_kwargs
    from tests.conftest import build_tokenizer

    tok = build_tokenizer(pad=True)
    assert chat_kwargs(tok, False) == {}
    tok.chat_template = QWEN3_LIKE
    kwargs = chat_kwargs(tok, False)
    assert kwargs == {"enable_thinking": False}
    prompt = [{"role": "user", "content": "sentiment"}]
    rendered = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False, **kwargs)
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "positive"}], tokenize=False, **kwargs)
    assert rendered.endswith("<think>\n\n</think>\n\n") and full.startswith(rendered)  # train and eval agree


def test_label_words_sharing_a_first_token_are_reported(tmp_path, tiny_model):
    files = write_sample("fingpt-sentiment", tmp_path)
    result = lancy("sft", "--dataset", "fingpt-sentiment", "--data-files", *files, "--model", tiny_model,
                   "--max-steps", 1, "--batch-size", 2, "--output-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    # the tiny tokenizer spells words it does not know letter by letter: "mildly" and "moderately" share "m"
    assert "mildly negative, moderately negative" in " ".join(result.output.split())


def test_lists_read_at_80_columns_and_never_break_a_name():
    from typer.testing import CliRunner

    from lancy_trl.data.registry import entries
    from lancy_trl.models import CATALOG

    runner = CliRunner()
    datasets = runner.invoke(app, ["datasets", "list"], env={"COLUMNS": "80"}).output
    models = runner.invoke(app, ["models", "list"], env={"COLUMNS": "80"}).output
    assert all(len(line) <= 80 for line in (datasets + models).splitlines())
    words = set(datasets.split()) | set(models.split())
    assert {s.name for s in entries().values()} <= words
    assert set(CATALOG) <= words and {e.hub_id for e in CATALOG.values()} <= words
    wide = runner.invoke(app, ["datasets", "list", "--wide"], env={"COLUMNS": "80"}).output
    assert {s.hub_id for s in entries().values() if s.hub_id} <= set(wide.split())
