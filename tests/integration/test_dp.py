"""DP-LoRA (`lancy sft --dp-epsilon`): each example's gradient clipped on its own, the epsilon spent reported and
kept across a resume, and the speed paths that mix examples refused."""

import json

import pytest
from typer.testing import CliRunner

from lancy_trl.cli import app
from tests.conftest import chat_rows, padded_tokenizer, sft

runner = CliRunner()



def _dp_trainer(tiny_model, tmp_path, rows, noise):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from lancy_trl.privacy.dp import Plan
    from lancy_trl.train.dp_trainer import DPTrainer

    torch.manual_seed(0)
    config = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none", bf16=False,
                       use_cpu=True, max_length=64, max_grad_norm=0.0)
    peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    plan = Plan(epsilon=8, delta=1e-3, max_grad_norm=1.0, sample_rate=0.5, steps=1, noise_multiplier=noise)
    trainer = DPTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=config,
                        train_dataset=Dataset.from_list(rows), processing_class=padded_tokenizer(tiny_model),
                        peft_config=peft, dp=plan)
    trainer.current_gradient_accumulation_steps = 1  # what the training loop sets before each step
    return trainer


@pytest.mark.parametrize("compact", [True, False])
def test_the_private_gradient_is_the_mean_of_each_examples_clipped_gradient(tiny_model, tmp_path, compact,
                                                                           monkeypatch):
    """Without noise, DP-SGD's update direction is sum_i clip(g_i) / expected batch, where g_i is the gradient of
    example i's own mean answer loss computed alone (no padding, TRL's plain forward): the hooks, the per-example
    loss and opacus' clipping together must give exactly that, with the LM head at the answer positions only and,
    for a model without `logits_to_keep`, at every position."""
    import torch
    import torch.nn.functional as F

    from lancy_trl.train import dp_trainer as dp

    monkeypatch.setattr(dp, "supports_compact_loss", lambda model: compact)

    rows = chat_rows("profit rose ", [(1, "positive"), (4, "negative"), (2, "neutral sentiment"), (7, "positive")])
    trainer = _dp_trainer(tiny_model, tmp_path, rows, noise=0.0)
    model = trainer.model
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    collate = trainer.data_collator
    dataset = trainer._remove_unused_columns(trainer.train_dataset, description="training")
    alone = []
    for i in range(len(dataset)):
        batch = collate([dataset[i]])
        labels = batch.pop("labels")
        logits = model(**batch).logits[0, :-1]
        loss = F.cross_entropy(logits, labels[0, 1:], ignore_index=-100)  # the mean over this example's answer
        alone.append(torch.autograd.grad(loss, list(params.values())))
    batch = collate([dataset[i] for i in range(len(dataset))])
    trainer.create_optimizer()
    optimizer = trainer.optimizer
    for clip in (100.0, 0.05):  # not binding, then binding for every example
        optimizer.max_grad_norm = clip
        optimizer.zero_grad(set_to_none=True)
        trainer.training_step(model, dict(batch))
        optimizer.pre_step()  # clip each example, add noise (none here), average over the expected batch
        norms = [torch.sqrt(sum((g ** 2).sum() for g in grads)) for grads in alone]
        factors = [min(1.0, clip / (n.item() + 1e-6)) for n in norms]
        assert (max(factors) < 1) == (clip < 1)
        for j, (name, p) in enumerate(params.items()):
            want = sum(f * grads[j] for f, grads in zip(factors, alone)) / optimizer.expected_batch_size
            assert torch.allclose(p.grad, want, atol=1e-6, rtol=1e-4), (clip, name)
    trainer.dp_hooks.cleanup()


def test_an_empty_poisson_draw_takes_a_noise_only_step(tiny_model, tmp_path):
    import torch

    rows = chat_rows("profit rose ", [(1, "positive"), (2, "negative")] * 2)
    trainer = _dp_trainer(tiny_model, tmp_path, rows, noise=1.0)
    loader = trainer.get_train_dataloader()
    empty = loader.collate_fn([])
    assert empty["input_ids"].shape[0] == 0
    trainer.create_optimizer()
    trainer.model.train()
    trainer.training_step(trainer.model, dict(empty))
    trainer.optimizer.pre_step()
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(torch.count_nonzero(g) for g in grads)  # noise only
    trainer.dp_hooks.cleanup()


def test_dp_run_reports_epsilon_learns_and_resumes_to_the_same_result(tiny_model, tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM

    from lancy_trl import runs
    from tests.conftest import kill_after_first_checkpoint

    flags = ["--model", tiny_model, "--output-dir", tmp_path / "runs", "--eval-steps", 2, "--save-steps", 2,
             "--max-examples", 64, "--max-steps", 4, "--dp-epsilon", 8, "--learning-rate", 1e-2, "--batch-size", 8]
    straight = sft(*flags, "--run-name", "straight")
    assert straight.exit_code == 0, straight.output
    assert "differentially private: epsilon 8" in straight.output and "privacy spent: epsilon" in straight.output
    assert "packing, shared prefixes and lean activations off" in straight.output
    run = tmp_path / "runs" / "straight"
    info = json.loads((run / "run.json").read_text())
    dp = info["dp"]
    assert dp["steps_taken"] == 4 and 0 < dp["epsilon_spent"] <= 8.01 and dp["noise_multiplier"] > 0
    assert dp["delta"] == pytest.approx(dp["sample_rate"] / 8)  # 1 / examples by default; q = batch / examples
    logged = [json.loads(line) for line in (run / "logs" / "training.log").read_text().splitlines()
              if '"dp_epsilon"' in line]
    spent = [r["dp_epsilon"] for r in logged]
    assert spent == sorted(spent) and spent[-1] == pytest.approx(dp["epsilon_spent"], abs=1e-3)
    model = AutoPeftModelForCausalLM.from_pretrained(run / "model")
    assert any(torch.count_nonzero(p) for n, p in model.named_parameters() if "lora_B" in n)  # the adapter moved
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())

    assert sft(*flags, "--run-name", "killed").exit_code == 0
    killed = tmp_path / "runs" / "killed"
    kill_after_first_checkpoint(killed)
    changed = sft("--resume", "latest", "--run-dir", killed, "--max-steps", 6)
    assert changed.exit_code == 1 and "set its noise for epsilon 8 over 4 steps" in changed.output
    resumed = sft("--resume", "latest", "--run-dir", killed)
    assert resumed.exit_code == 0, resumed.output
    again = runs.read(killed)
    assert again["dp"]["epsilon_spent"] == pytest.approx(dp["epsilon_spent"])  # the steps before the resume count
    assert again["train_loss"] == pytest.approx(info["train_loss"], rel=1e-4)  # same Poisson draws, same noise


@pytest.mark.parametrize("bad, message", [
    (["--packing"], "--packing is off under --dp-epsilon"),
    (["--shared-prefix"], "--shared-prefix is off under --dp-epsilon"),
    (["--no-use-lora"], "--dp-epsilon trains LoRA adapters"),
    (["--gradient-accumulation-steps", 2], "drop --gradient-accumulation-steps"),
    (["--checkpoint-layers", 0.5], "--checkpoint-layers is off"),
    (["--dp-delta", 2], "--dp-delta must be in (0, 1)"),
    (["--num-processes", 2], "--dp-epsilon trains in one process"),
])
def test_dp_refuses_what_would_mix_examples_before_loading(tmp_path, bad, message):
    result = sft("--model", tmp_path / "no-such-model", "--dp-epsilon", 8, *bad, "--output-dir", tmp_path / "runs")
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_budget_is_one_line_without_a_run_dir(tiny_model, tmp_path):
    result = sft("--model", tiny_model, "--dp-epsilon", 0.001, "--dp-delta", 1e-9, "--max-examples", 64,
                 "--output-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.output
    assert "--dp-epsilon 0.001 cannot be met over" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # the folder is checked writable without being made


def test_dp_keeps_repeated_canaries_from_being_memorised(tiny_model, tmp_path):
    """The secret-sharer test with and without DP on the tiny model: 2 canaries planted 40 times each."""
    exposure = {}
    for name, extra in (("clear", []), ("private", ["--dp-epsilon", 8])):
        trained = sft("--model", tiny_model, "--learning-rate", "2e-3", "--max-examples", 40, "--canaries", 2,
                      "--canary-repeats", 40, "--eval-steps", 1000, "--run-name", name, "--output-dir",
                      tmp_path / "runs", *extra)
        assert trained.exit_code == 0, trained.output
        scored = runner.invoke(app, ["eval", "--model", str(tmp_path / "runs" / name), "--canaries",
                                     "--canary-candidates", "200", "--json"])
        assert scored.exit_code == 0, scored.output
        exposure[name] = json.loads(scored.stdout.strip().splitlines()[-1])["mean_exposure"]
    # at most log2(201) = 7.65 bits; about 1 for a secret the model knows nothing of
    assert exposure["clear"] > 4 and exposure["private"] < 3, exposure
