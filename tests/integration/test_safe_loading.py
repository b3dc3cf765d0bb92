"""Nothing lancy reads can run code: weights load from safetensors only (pickled ones are refused: see
test_bad_input.py), runs save safetensors, and a resume reads its checkpoint's optimizer, scheduler and RNG state
with `weights_only` (tensors and plain containers, no code)."""

import torch

from tests.conftest import kill_after_first_checkpoint, only_run, sft


def test_runs_save_safetensors_and_resume_reads_checkpoints_weights_only(tiny_model, tmp_path, monkeypatch):
    assert sft("--model", tiny_model, "--output-dir", tmp_path / "runs", "--save-steps", 2, "--max-steps", 4,
               "--eval-steps", 2).exit_code == 0
    run = only_run(tmp_path / "runs")
    assert (run / "model" / "adapter_model.safetensors").is_file()
    # weights are safetensors everywhere; the Trainer's training_args.bin is written for reference and never read
    assert {p.name for p in run.rglob("*.bin")} <= {"training_args.bin"}
    kill_after_first_checkpoint(run)
    real, calls = torch.load, []

    def strict(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        assert kwargs.get("weights_only") is True, "a checkpoint read without weights_only"
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", strict)
    resumed = sft("--resume", "latest", "--run-dir", run)
    assert resumed.exit_code == 0, resumed.output
    assert calls and all(calls)  # the optimizer, scheduler and RNG states were read, each with weights_only


def test_trust_remote_code_is_said_aloud(tiny_model, tmp_path):
    result = sft("--model", tiny_model, "--trust-remote-code", "--max-steps", 1, "--output-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "--trust-remote-code: loading" in " ".join(result.output.split())
    plain = sft("--model", tiny_model, "--max-steps", 1, "--output-dir", tmp_path / "runs")
    assert "trust-remote-code" not in plain.output
