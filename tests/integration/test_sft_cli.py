"""`lancy sft` end to end on a tiny random model: trains, saves, resumes, and fails cleanly on bad input."""

import json

import pytest
from typer.testing import CliRunner

from lancy_trl.cli import app
from tests.conftest import kill_after_first_checkpoint, only_run, sft

runner = CliRunner()



@pytest.fixture
def quick(tiny_model, tmp_path):
    return ["--model", tiny_model, "--output-dir", tmp_path / "runs", "--eval-steps", 2, "--save-steps", 2]



def test_lora_run_trains_saves_and_records(quick, tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM

    result = sft(*quick, "--max-steps", 4)
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    lines = [line.strip() for line in result.output.splitlines()]  # paths printed whole, whatever the width
    assert f"model: {run / 'model'}" in lines and f"logs: tensorboard --logdir {run / 'tensorboard'}" in lines
    assert run.name.endswith("_tiny-llama0_finsent-sentiment_sft_bs8_len256_steps4_lora-r16")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["steps"] == 4
    assert info["model_info"]["attn_implementation"] == "sdpa" and info["model_info"]["device"] == "cpu"
    assert (run / "config.yaml").is_file() and (run / "logs" / "training.log").stat().st_size > 0
    assert any((run / "tensorboard").iterdir())
    # eval every 2 steps: eval loss plus the score-method accuracy and macro-F1 of the label words
    final = info["final_eval"]
    assert "eval_loss" in final and "eval_score_macro_f1" in final
    # the in-training score accuracy is that of the held-out rows, as `lancy eval` scores them after the run
    scored = runner.invoke(app, ["eval", "--model", str(run), "--split", "validation", "--method", "score", "--json"])
    report = json.loads(scored.stdout.strip().splitlines()[-1])
    assert report["rows"] == info["held_out"]["validation"]["rows"]
    assert final["eval_score_accuracy"] == pytest.approx(report["model"]["score"]["accuracy"])
    assert json.loads((run / "metrics.json").read_text())["eval_score_accuracy"] == final["eval_score_accuracy"]
    from tests.conftest import tensorboard_tags

    assert {"eval/score_accuracy", "eval/score_macro_f1", "eval/loss"} <= tensorboard_tags(run / "tensorboard")
    assert "score accuracy" in (run / "logs" / "training.log").read_text()
    model = AutoPeftModelForCausalLM.from_pretrained(run / "model")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(torch.count_nonzero(p) > 0 for p in lora_b)  # B starts at zero: it moved


def test_full_fine_tuning_changes_the_weights(quick, tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    result = sft(*quick, "--max-steps", 3, "--no-use-lora", "--learning-rate", "1e-3")
    assert result.exit_code == 0, result.output
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(only_run(tmp_path / "runs") / "model").state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed



def test_a_killed_run_resumes_to_the_uninterrupted_result(quick, tmp_path):
    from lancy_trl import runs

    fast = ["--max-steps", 4, "--learning-rate", "1e-2"]  # the loss moves from step to step
    assert sft(*quick, *fast, "--run-name", "straight").exit_code == 0
    assert sft(*quick, *fast, "--run-name", "killed").exit_code == 0
    straight, killed = tmp_path / "runs" / "straight", tmp_path / "runs" / "killed"
    # the last checkpoint, which no step trains from, goes without the optimizer's moments; the others keep them
    saved = {c.name: (c / "optimizer.pt").is_file() for c in (killed / "checkpoints").glob("checkpoint-*")}
    assert saved == {"checkpoint-2": True, "checkpoint-4": False}
    kill_after_first_checkpoint(killed)
    assert runs.read(killed)["status"] == "interrupted"  # a dead owner is seen, not `running` forever
    result = sft("--resume", "latest", "--output-dir", tmp_path / "runs")  # the newest resumable run, named
    assert result.exit_code == 0, result.output
    assert f"Resuming {killed} from checkpoint-2" in result.output
    info, want = json.loads((killed / "run.json").read_text()), json.loads((straight / "run.json").read_text())
    assert info["status"] == "complete" and info["steps"] == 4
    # the train loss covers all four steps, not only the two after the resume
    assert info["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)
    assert len(list((tmp_path / "runs").iterdir())) == 2  # resumed in place, no new run


def test_a_complete_run_is_not_resumed(quick, tmp_path):
    assert sft(*quick, "--max-steps", 2).exit_code == 0
    run = only_run(tmp_path / "runs")
    result = sft("--resume", "latest", "--run-dir", run, "--max-steps", 4)
    assert result.exit_code == 1 and "is complete (2 steps)" in result.output and "--max-steps N" in result.output
    result = sft("--resume", "latest", "--output-dir", tmp_path / "runs")
    assert result.exit_code == 1 and "no resumable run" in result.output and "is complete" in result.output


def test_resume_refuses_changed_data(quick, tmp_path, pc_file):
    assert sft(*quick, "--dataset", pc_file, "--max-steps", 4).exit_code == 0
    run = only_run(tmp_path / "runs")
    kill_after_first_checkpoint(run)
    pc_file.write_text(pc_file.read_text().replace("rose", "grew"))
    result = sft("--resume", "latest", "--run-dir", run)
    assert result.exit_code == 1 and "training data changed" in result.output and "--allow-data-change" in result.output
    result = sft("--resume", "latest", "--run-dir", run, "--allow-data-change")
    assert result.exit_code == 0, result.output


def test_yaml_config_with_flag_override(quick, tmp_path):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("max_steps: 50\nlearning_rate: 1e-4\nlora_r: 4\n")
    result = sft(*quick, "--config", cfg, "--max_steps", 2)
    assert result.exit_code == 0, result.output
    config = json.loads((only_run(tmp_path / "runs") / "config.json").read_text())
    assert (config["max_steps"], config["learning_rate"], config["lora_r"]) == (2, 1e-4, 4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "nope.jsonl"], "dataset file 'nope.jsonl' not found"),
        (["--dataset", "fnsent"], "unknown dataset 'fnsent'; did you mean 'finsent'"),
        (["--batch-size", "0"], "--batch-size must be positive"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(quick, tmp_path, extra, message):
    result = sft(*quick, *extra)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unknown_flag_and_config_key_fail(quick, tmp_path):
    result = sft(*quick, "--max-stepz", 3)
    assert result.exit_code == 2 and "No such option" in result.output
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_stepz: 3\n")
    result = sft(*quick, "--config", cfg)
    assert result.exit_code == 1 and "unknown key 'max_stepz'" in result.output


def test_empty_dataset_and_encoder_only_model(quick, tmp_path):
    from transformers import BertConfig

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = sft(*quick, "--dataset", empty)
    assert result.exit_code == 1 and "Traceback" not in result.output
    bert = tmp_path / "bert"
    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(bert)
    result = sft("--model", bert, "--output-dir", tmp_path / "runs")
    assert result.exit_code == 1 and "encoder-only" in result.output


def test_local_prompt_completion_file(tiny_qwen, pc_file, tmp_path):
    result = sft("--model", tiny_qwen, "--dataset", pc_file, "--max-steps", 2, "--output-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "_pc_sft_" in only_run(tmp_path / "runs").name


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    for command in ("sft", "pretrain", "grpo", "dpo", "eval", "audit", "runs", "chat", "export", "manifest", "datasets", "models"):
        assert command in result.output


def test_list_flags_take_several_values_after_one_flag():
    import typer.main

    click_cmd = typer.main.get_command(app).commands["sft"]
    ctx = click_cmd.make_context("sft", ["--datasets", "a.jsonl", "b.jsonl", "--mixture_rates", "0.7", "0.3"])
    assert list(ctx.params["dataset"]) == ["a.jsonl", "b.jsonl"]
    assert list(ctx.params["mixture_rates"]) == [0.7, 0.3]


def test_help_and_dataset_list_import_no_heavy_libraries():
    """`lancy --help` and `lancy datasets list` stay instant: no torch, transformers, datasets (nor rich for the
    top-level help) get imported; bench-free check of what the timing depends on."""
    import subprocess
    import sys

    probe = (
        "import sys, io, contextlib\n"
        "from lancy_trl.cli import main\n"
        "sys.argv = ['lancy'] + sys.argv[1:]\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'trl', 'rich') if m in sys.modules]\n"
        "print(repr(heavy), len(out.getvalue()))\n"
    )
    def run(*argv):
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True).stdout
        heavy, size = out.rsplit(" ", 1)
        return eval(heavy), int(size)

    assert run("--help")[0] == [] and run("--help")[1] > 100
    heavy, size = run("datasets", "list", "--json")
    assert heavy == [] and size > 1000


def test_sft_help_shows_each_default():
    import dataclasses

    from lancy_trl.cli.options import _shown_default
    from lancy_trl.train.methods.sft import SFTArgs

    result = runner.invoke(app, ["sft", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.replace("│", " ").split())
    for f in dataclasses.fields(SFTArgs):
        if (shown := _shown_default(f)) is not None:
            assert f"[default: {shown}]" in text, f.name
    assert "[default: 16]" in text and "[default: finsent]" in text and "[auto|fp32|bf16|fp16]" in text


def test_a_second_ctrl_c_before_any_checkpoint_says_there_is_nothing_to_resume(quick, tmp_path, monkeypatch):
    from lancy_trl.train import callbacks

    def abort(self, args, state, control, **kwargs):
        raise KeyboardInterrupt  # what the second Ctrl-C raises

    monkeypatch.setattr(callbacks.GracefulInterrupt, "on_step_end", abort)
    result = sft(*quick, "--max-steps", 4)
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "aborted; stopped before the first checkpoint: nothing to resume" in output
    assert "--resume" not in output
    assert json.loads((only_run(tmp_path / "runs") / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_final_model_links_the_last_checkpoint_and_equals_a_written_one(quick, tmp_path, monkeypatch, lora):
    """The run's model/ is the last checkpoint's model files, linked, not written again; the same files, byte for
    byte, as the plain save writes."""
    from lancy_trl.train import ending

    flags = [*quick, "--max-steps", 2, "--save-steps", 2, *([] if lora else ["--no-use-lora"])]
    assert sft(*flags, "--run-name", "linked").exit_code == 0
    monkeypatch.setattr(ending, "linked_from_checkpoint", lambda *a: False)
    assert sft(*flags, "--run-name", "written").exit_code == 0
    linked, written = tmp_path / "runs" / "linked", tmp_path / "runs" / "written"
    names = sorted(p.name for p in (linked / "model").iterdir())
    assert names == sorted(p.name for p in (written / "model").iterdir())
    for name in set(names) - {"training_args.bin"}:
        assert (linked / "model" / name).read_bytes() == (written / "model" / name).read_bytes(), name
    import torch

    args = [torch.load(run / "model" / "training_args.bin", weights_only=False).to_dict() for run in (linked, written)]
    differ = {k for k in args[0] if args[0][k] != args[1][k]}
    assert differ <= {"output_dir", "logging_dir", "run_name"}, differ  # the runs' own folders and names
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (linked / "model" / weights).stat().st_ino == (linked / "checkpoints" / "checkpoint-2" / weights).stat().st_ino
    assert (written / "model" / weights).stat().st_nlink == 1
