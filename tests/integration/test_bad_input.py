"""Every mistake a user can make on the command line: one line naming the problem and the fix, exit code 1, no
traceback, and no run directory left behind. One row per mistake: add a row for each new one."""

import json

import pytest
from typer.testing import CliRunner

from lancy_trl.cli import app


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory):
    """The tiny model with its weights as a pickle (pytorch_model.bin) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    from tests.conftest import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("bin-model"))
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def _files(tmp_path, pickled=None):
    """The bad files the table refers to by name."""
    def write(name, text):
        path = tmp_path / name
        path.write_text(text)
        return path

    rows = "".join(json.dumps({"prompt": f"p{i}", "completion": "a" if i % 2 else "b"}) + "\n" for i in range(8))
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text('{"model_type": "llama"}')
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "bert")
    (tmp_path / "not-a-run").mkdir()
    return {
        "EMPTY": write("empty.jsonl", ""),
        "BLANK_LINES": write("blank.jsonl", "\n\n  \n"),
        "BROKEN": write("broken.jsonl", rows + '{"prompt": "x", "completion": \n'),
        "LIST_ROW": write("list.jsonl", rows + "[1, 2]\n"),
        "BAD_JSON": write("bad.json", '[{"prompt": "x",'),
        "COLUMNS": write("cols.jsonl", '{"foo": 1, "bar": 2}\n'),
        "NO_ASSISTANT": write("chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"),
        "BAD_MESSAGES": write("msgs.jsonl", json.dumps({"messages": "hello"}) + "\n"),
        "NO_ANSWERS": write("none.csv", "prompt,completion\nhello,\nworld,\n"),
        "CSV_HEADER_ONLY": write("header.csv", "prompt,completion\n"),
        "MIXED": write("mixed.csv", "prompt,completion\nx,y\n"),
        "ROWS": write("rows.jsonl", rows),
        "BIN_MODEL": pickled or tmp_path,
        "QA": write("qa.jsonl", "".join(json.dumps({"prompt": f"q{i}", "completion": f"answer number {i}"}) + "\n"
                                        for i in range(8))),
        "TXT": write("notes.txt", "some text\n"),
        "YAML_KEY": write("key.yaml", "max_stepz: 3\n"),
        "YAML_TYPE": write("type.yaml", "max_steps: many\n"),
        "YAML_LIST": write("list.yaml", "- 1\n- 2\n"),
        "YAML_BROKEN": write("broken.yaml", "max_steps: [1,\n"),
        "A_FILE": write("a-file", "x"),
        "NO_TOKENIZER": no_tokenizer,
        "BERT": tmp_path / "bert",
        "NOT_A_RUN": tmp_path / "not-a-run",
    }


CASES = [
    # (command and arguments; names in capitals are files from _files, MODEL the tiny model), words expected
    ("sft --dataset nope.jsonl", "dataset file 'nope.jsonl' not found"),
    ("sft --dataset fnsent", "did you mean 'finsent'"),
    ("sft --dataset someone/private-set", "is not in lancy's registry"),
    ("sft --dataset EMPTY", "empty.jsonl is empty"),
    ("sft --dataset BLANK_LINES", "blank.jsonl is empty"),
    ("sft --dataset BROKEN", "broken.jsonl line 9: not valid JSON"),
    ("sft --dataset LIST_ROW", "list.jsonl line 9: expected a JSON object"),
    ("sft --dataset BAD_JSON", "bad.json line 1: not valid JSON"),
    ("sft --dataset COLUMNS", "lancy reads `messages`"),
    ("sft --dataset NO_ASSISTANT", "chat.jsonl line 1: the conversation has no assistant turn"),
    ("sft --dataset BAD_MESSAGES", "msgs.jsonl line 1: `messages` must be a list"),
    ("sft --dataset NO_ANSWERS", "every one of its 2 rows was skipped (2 empty or missing answer)"),
    ("sft --dataset CSV_HEADER_ONLY", "header.csv has a header but no rows"),
    ("sft --dataset finsent --data-files TXT", "finsent does not read .txt files"),
    ("sft --dataset finsent --data-files reports/*.txt", "matches no file"),
    ("sft --dataset ROWS --dataset finsent --data-files MIXED", "prefix each file with its dataset"),
    ("sft --dataset finsent --data-files ROWS --data-files MIXED", "cannot read .csv, .jsonl files together"),
    ("sft --dataset finsent --data-files missing.parquet", "data file(s) not found: missing.parquet"),
    ("sft --dataset-config sst2", "finsent does not take --dataset-config 'sst2'"),
    ("sft --mixture-rates 0.5 0.5", "2 value(s) for 1 dataset"),
    ("sft --dataset ROWS --dataset finsent --mixture-rates 0.5 0.6", "must sum to 1"),
    ("sft --batch-size 0", "--batch-size must be positive"),
    ("sft --max-steps -2", "--max-steps must be positive, or -1"),
    ("sft --max-steps 0", "--max-steps must be positive, or -1"),
    ("sft --num-train-epochs 0", "--num-train-epochs must be positive"),
    ("sft --learning-rate -1", "--learning-rate must be positive"),
    ("sft --lora-dropout 1.5", "--lora-dropout must be in [0, 1)"),
    ("sft --eval-fraction 1", "--eval-fraction must be in [0, 1)"),
    ("sft --checkpoint-layers 2", "--checkpoint-layers must be in [0, 1]"),
    ("sft --save-minutes -1", "--save-minutes must be 0 (off) or positive"),
    ("sft --precision fp8", "--precision must be one of auto, fp32, bf16, fp16"),
    ("sft --device tpu", "--device must be one of"),
    ("sft --precision fp16", "fp16 is not supported on CPU"),
    ("sft --device cuda", "torch sees no CUDA GPU"),
    ("sft --load-in-4bit --no-use-lora", "--load-in-4bit trains LoRA adapters"),
    ("sft --load-in-4bit --load-in-8bit", "--load-in-4bit and --load-in-8bit exclude each other"),
    ("sft --moe_load_in_8bit --no-use-lora", "--load-in-8bit trains LoRA adapters"),
    ("sft --attn-implementation flash_attention_2", "flash_attention_2 needs a CUDA GPU"),
    ("sft --lean-activations --precision bf16", "--lean-activations needs fp32"),
    ("sft --shared-prefix --attn-implementation eager", "--shared-prefix needs SDPA"),
    ("sft --lora-target-modules q_proj nonexistent", "--lora-target-modules nonexistent: no such module"),
    ("sft --output-dir A_FILE/runs", "cannot write runs to"),
    ("sft --model ./nowhere", "model path './nowhere' does not exist"),
    ("sft --model someone/missing-model", "is neither a local directory nor cached"),
    ("sft --model smollm2-135m-instrct", "did you mean 'smollm2-135m-instruct'"),
    ("sft --model nowhere.gguf", "GGUF file 'nowhere.gguf' not found"),
    ("sft --model NO_TOKENIZER", "has no tokenizer files"),
    ("sft --model BERT", "encoder-only"),
    ("sft --config missing.yaml", "config file 'missing.yaml' not found"),
    ("sft --config YAML_KEY", "unknown key 'max_stepz'"),
    ("sft --config YAML_TYPE", "key 'max_steps' in"),
    ("sft --config YAML_LIST", "must hold a mapping"),
    ("sft --config YAML_BROKEN", "is not valid YAML"),
    ("sft --resume latest", "no resumable run"),
    ("sft --resume NOT_A_RUN", "is not a lancy run directory"),
    ("eval --model ./nowhere", "model path './nowhere' does not exist"),
    ("eval --compare-base --limit 2", "--compare-base needs a fine-tuned model"),
    ("eval --dataset EMPTY", "empty.jsonl is empty"),
    ("eval --dataset finsent --split nope", "finsent has no split 'nope'"),
    ("eval --dataset finsent --method score --dataset-config x", "finsent does not take --dataset-config 'x'"),
    ("eval --limit 0", "--limit must be positive"),
    ("pretrain", "no text to train on"),
    ("pretrain --data-files reports/*.txt", "matches no file"),
    ("pretrain --dataset EMPTY", "empty.jsonl is empty"),
    ("pretrain --max-steps -5", "--max-steps must be positive, or -1"),
    ("pretrain --dataset TXT --streaming", "so it has no epochs: pass --max-steps N"),
    ("pretrain --dataset finsent --streaming --max-steps 2", "finsent is a classification dataset"),
    ("pretrain --dataset TXT --streaming --max-steps 2 --redact-pii", "redact the files first"),
    ("pretrain --dataset TXT --streaming --max-steps 2", "no more than the 64 documents held out"),
    ("pretrain --dataset COLUMNS --streaming --max-steps 2", "has no `text` column to stream"),
    ("grpo --num-generations 3 --batch-size 16", "--num-generations 3 does not divide the 16 completions of a step"),
    ("grpo --num-generations 1", "needs at least 2"),
    ("grpo --batch-size 8", "--num-generations 16 (classification's default) does not divide the 8 completions"),
    ("grpo --reward lable", "unknown reward 'lable'"),
    ("grpo --reward numeric", "--reward numeric scores math answers, but this run's task is classification"),
    ("grpo --reward nowhere.py:score", "no file nowhere.py"),
    ("grpo --dataset TXT", "is plain text, with no prompts to answer"),
    ("grpo --dataset QA --reward format", "--reward format knows where"),
    ("grpo --dataset QA", "task is qa, which has no default reward"),
    ("sft --canaries 2 --canary-repeats 0", "--canary-repeats at least 1"),
    ("sft --canaries -3", "--canaries must be 0 or more"),
    ("pretrain --dataset TXT --streaming --max-steps 2 --canaries 2", "drop --streaming or --canaries"),
    ("eval --canaries", "planted no canaries"),
    ("sft --model BIN_MODEL", "holds pickled weights (*.bin) and no model.safetensors"),
    ("eval --model BIN_MODEL --limit 2", "lancy loads safetensors only"),
    ("export NOT_A_RUN", "is not a lancy run directory"),
    ("export NOT_A_RUN --dtype fp8", "--dtype fp8: merged weights are written as auto"),
    ("chat ./nowhere --prompt hi", "model path './nowhere' does not exist"),
    ("chat NOT_A_RUN --prompt hi --max-new-tokens 0", "--max-new-tokens must be positive"),
    ("datasets scan", "nothing to scan"),
    ("datasets scan EMPTY", "empty.jsonl is empty"),
    ("manifest NOT_A_RUN", "is not a lancy run directory"),
    ("manifest NOT_A_RUN --verify", "is not a lancy run directory"),
]


@pytest.mark.parametrize("command, words", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line_exit_1_and_no_run_left(command, words, tiny_model, tmp_path, monkeypatch,
                                                       pickled_model):
    files = _files(tmp_path, pickled_model)
    monkeypatch.chdir(tmp_path)
    argv = []
    for word in command.split():
        head, _, rest = word.partition("/")
        argv.append(str(files[head]) + ("/" + rest if rest else "") if head in files else word)
    if argv[0] in ("sft", "pretrain", "grpo", "eval") and "--model" not in argv:
        argv += ["--model", str(tiny_model)]
    if argv[0] in ("sft", "pretrain", "grpo") and "--output-dir" not in argv:
        argv += ["--output-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, argv)
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert words in output and output.startswith("error:") and output.count("error:") == 1, output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    left = {"runs", "eval_runs"} & {p.name for p in tmp_path.iterdir()}
    assert not left, f"an output folder was left: {left}"  # made only when a run starts


def test_the_table_covers_at_least_thirty_mistakes():
    assert len(CASES) >= 30 and len({c for c, _ in CASES}) == len(CASES)
