"""`lancy grpo` on the tiny model: a run that logs its rewards, resumes, is scored by `lancy eval`, continues a
`lancy sft` run's adapter, and takes a user's own reward function."""

import json

from tests.conftest import lancy


def logged(run):
    return [json.loads(line) for line in (run / "logs" / "training.log").read_text().splitlines()
            if line.startswith("{") and '"reward"' in line]


def test_grpo_logs_rewards_resumes_and_is_scored(tiny_model, tmp_path):
    args = ["grpo", "--model", tiny_model, "--max-steps", 4, "--save-steps", 2, "--max-examples", 40, "--batch-size", 8,
            "--num-generations", 8,
            "--eval-steps", 2,
            "--reward", "label", "--reward", "format:0.5", "--reward", "length:0.1", "--output-dir", tmp_path / "runs"]
    result = lancy(*args)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert "_finsent-sentiment_grpo_" in run.name
    text = " ".join(result.output.split())
    assert "8 completions each of up to 8 tokens, reward label + format x0.5 + length x0.1" in text
    assert "shared prefixes computed once per batch" in text and "mean reward" in text
    steps = logged(run)
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    for key in ("rewards/label/mean", "rewards/format/mean", "rewards/length/mean", "reward", "reward_std",
                "completions/mean_length", "completions/clipped_ratio"):
        assert all(key in s for s in steps), key
    for s in steps:  # the total is the weighted sum of the functions' means
        total = s["rewards/label/mean"] + 0.5 * s["rewards/format/mean"] + 0.1 * s["rewards/length/mean"]
        assert abs(s["reward"] - total) < 1e-5
    info = json.loads((run / "run.json").read_text())
    assert (info["command"], info["status"], info["rewards"], info["reward_weights"]) == \
        ("grpo", "complete", ["label", "format", "length"], [1.0, 0.5, 0.1])
    assert info["model_info"]["lean_logps"] and info["model_info"]["shared_prefix"]
    assert "reward_last_tenth" in json.loads((run / "metrics.json").read_text())
    log = (run / "logs" / "training.log").read_text()  # greedy answers to the held-out prompts, as training goes
    assert [int(line.split("step ")[1].split(":")[0]) for line in log.splitlines() if "greedy accuracy" in line] == [0, 2, 4]
    assert "answers negative" in log and "no label" in log
    phases = {"data", "model", "prepare", "build", "train", "save"}  # and startup in a process's first run alone
    assert phases <= set(info["phase_seconds"]) <= phases | {"startup"}
    assert info["phase_seconds"]["train"] > 0
    scored = lancy("eval", "--model", run, "--method", "score", "--json")
    assert scored.exit_code == 0, scored.output
    out = json.loads(scored.stdout.strip().splitlines()[-1])
    assert (out["task"], out["split"], out["held_out"]) == ("classification", "test", True)

    from tests.conftest import kill_after_first_checkpoint

    kill_after_first_checkpoint(run)
    assert "is a `lancy grpo` run" in lancy("sft", "--resume", "latest", "--run-dir", run).output
    resumed = lancy("grpo", "--resume", "latest", "--run-dir", run)
    assert resumed.exit_code == 0, resumed.output
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["steps"] == 4
    assert [s["step"] for s in logged(run)][-2:] == [3, 4]


def test_grpo_continues_an_sft_runs_adapter(tiny_model, tmp_path):
    from safetensors.torch import load_file

    sft = lancy("sft", "--model", tiny_model, "--max-steps", 2, "--learning-rate", "1e-2", "--max-examples", 40,
                 "--run-name", "sft", "--output-dir", tmp_path / "runs")
    assert sft.exit_code == 0, sft.output
    grpo = lancy("grpo", "--model", tmp_path / "runs" / "sft", "--max-steps", 1, "--learning-rate", "1e-9",
                  "--batch-size", 8, "--num-generations", 8,
                  "--max-examples", 40, "--run-name", "grpo", "--output-dir", tmp_path / "runs")
    assert grpo.exit_code == 0, grpo.output
    before = load_file(tmp_path / "runs" / "sft" / "model" / "adapter_model.safetensors")
    after = load_file(tmp_path / "runs" / "grpo" / "model" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and all(before[k].abs().sum() > 0 for k in lora_b)  # sft moved B away from its zero start
    assert all((before[k] - after[k]).abs().max() < 1e-4 for k in before)  # grpo went on from there, not from zero
    info = json.loads((tmp_path / "runs" / "grpo" / "run.json").read_text())
    assert info["model_info"]["lora_continued_from"].endswith("sft/model")
    # the KL anchor (on by default from a run) is the sft run's model: 0 at the start. Against the bare base model
    # (the adapter disabled, which the sft steps at 1e-2 moved away from) it would not be.
    kls = [s["kl"] for s in logged(tmp_path / "runs" / "grpo")]
    assert kls and all(abs(kl) < 1e-6 for kl in kls)
    assert not (tmp_path / "runs" / "grpo" / "model" / "ref").exists()  # TRL's frozen copy is not the run's model
    # full fine-tuning from the LoRA run: the adapter merged in, every weight trained, the merged model the anchor
    full = lancy("grpo", "--model", tmp_path / "runs" / "sft", "--no-use-lora", "--max-steps", 1, "--learning-rate",
                 "1e-9", "--batch-size", 8, "--num-generations", 8, "--max-examples", 40, "--run-name", "full",
                 "--output-dir", tmp_path / "runs")
    assert full.exit_code == 0, full.output
    assert [abs(s["kl"]) < 1e-6 for s in logged(tmp_path / "runs" / "full")] == [True]


def test_grpo_with_a_users_reward_on_local_rows(tiny_model, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"what is {i} plus {i}?", "completion": f"it is {2 * i}"}) + "\n"
                            for i in range(24)))
    (tmp_path / "mine.py").write_text(
        "def short(completions, answer, **kwargs):\n"
        "    assert len(answer) == len(completions) and answer[0].startswith('it is')\n"
        "    return [1.0 if len(c[0]['content']) < 20 else 0.0 for c in completions]\n")
    result = lancy("grpo", "--model", tiny_model, "--dataset", rows, "--reward", f"{tmp_path}/mine.py:short",
                    "--max-steps", 2, "--batch-size", 4, "--num-generations", 2, "--output-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert all("rewards/short/mean" in s for s in logged(run))
    assert "128 tokens" in " ".join(result.output.split())  # a qa task's default completion length


def test_grpo_rewards_move_the_greedy_answers(tiny_model, tmp_path):
    """The small version of a GRPO learning run: a tiny model taught the answer's form (it says `neutral` to every
    sentence), then rewarded for `positive` alone. Its greedy answers to the held-out prompts, logged while it trains,
    must move to `positive`, and the collapse must be named. Fails if rewards stop reaching the policy."""
    (tmp_path / "mine.py").write_text(
        "def positive(completions, **kwargs):\n"
        "    return [float(c[0]['content'].strip() == 'positive') for c in completions]\n")
    runs = tmp_path / "runs"
    sft = lancy("sft", "--model", tiny_model, "--no-use-lora", "--max-steps", 40, "--learning-rate", "3e-2",
                "--run-name", "sft", "--output-dir", runs)
    assert sft.exit_code == 0, sft.output
    grpo = lancy("grpo", "--model", runs / "sft", "--no-use-lora", "--reward", f"{tmp_path}/mine.py:positive",
                 "--max-steps", 12, "--eval-steps", 6, "--learning-rate", "1e-2", "--run-name", "grpo",
                 "--output-dir", runs)
    assert grpo.exit_code == 0, grpo.output
    shares = {}
    for line in (runs / "grpo" / "logs" / "training.log").read_text().splitlines():
        if "greedy accuracy" in line:
            step = int(line.split("step ")[1].split(":")[0])
            shares[step] = float(line.split("positive ")[1].split("%")[0]) / 100
    assert sorted(shares) == [0, 6, 12]
    assert shares[0] < 0.5 and shares[12] > 0.9, shares
    assert "greedy answers are 'positive': the policy is collapsing onto one label" in \
        (runs / "grpo" / "logs" / "training.log").read_text()
