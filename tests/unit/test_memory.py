"""The memory estimate printed before the weights load: what each method, precision, engine and batch changes, the
shape read from a weightless model, and the line with the options that would fit."""

import dataclasses

import pytest

from lancy_trl.config import resolve
from lancy_trl.scale.memory import GB, Shape, alternatives, estimate
from lancy_trl.train.methods.sft import SFTArgs

ONE_B = Shape(params=1_200_000_000, linear=1_000_000_000, lora=2_000_000, layers=16, hidden=2048, intermediate=8192,
              vocab=128_256)  # about Llama-3.2-1B


def args(**flags):
    return resolve(SFTArgs, flags=flags)


def test_each_choice_moves_the_part_it_should():
    full, lora = estimate(args(use_lora=False), ONE_B, "cuda"), estimate(args(), ONE_B, "cuda")
    assert full.weights == pytest.approx(1.2e9 * 4) and full.optimizer == pytest.approx(2 * full.gradients)
    assert lora.gradients == pytest.approx(2_000_000 * 16 * 4) and lora.weights == full.weights
    four, eight = estimate(args(load_in_4bit=True), ONE_B, "cuda"), estimate(args(load_in_8bit=True), ONE_B, "cuda")
    assert four.weights < eight.weights < lora.weights
    assert four.weights == pytest.approx(0.2e9 * 4 + 1e9 * (0.5 + 0.06))  # embeddings stay fp32, linears in NF4
    checkpointed = estimate(args(gradient_checkpointing=True), ONE_B, "cuda")
    micro = estimate(args(micro_batch_size=2), ONE_B, "cuda")
    assert checkpointed.activations < lora.activations / 2 and micro.activations < lora.activations / 2
    assert estimate(args(precision="fp32"), ONE_B, "cuda").activations > lora.activations  # auto is bf16 on CUDA


@pytest.mark.parametrize("engine, sharded", [
    ("zero1", {"optimizer"}), ("zero2", {"optimizer", "gradients"}), ("zero3", {"optimizer", "gradients", "weights"}),
])
def test_zero_stages_divide_what_they_shard_among_the_processes(engine, sharded):
    alone = estimate(args(use_lora=False), ONE_B, "cuda", processes=4)
    split = estimate(args(use_lora=False, deepspeed=engine), ONE_B, "cuda", processes=4)
    for part in ("weights", "gradients", "optimizer"):
        expected = getattr(alone, part) / 4 if part in sharded else getattr(alone, part)
        assert getattr(split, part) == pytest.approx(expected), part
    offload = estimate(args(use_lora=False, deepspeed="zero3_offload"), ONE_B, "cuda", processes=4)
    assert offload.weights == offload.optimizer == 0


def test_the_shape_comes_from_a_weightless_model_and_matches_the_real_one(tiny_model):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lancy_trl.scale.memory import shape

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    s = shape(AutoConfig.from_pretrained(tiny_model), args())
    assert s.params == sum(p.numel() for p in model.parameters())
    lora = 16 * s.lora  # LoRA's A and B at rank 16 on the default targets: what peft will add
    from peft import LoraConfig, get_peft_model

    from lancy_trl.models import lora_targets

    peft = get_peft_model(model, LoraConfig(r=16, target_modules=lora_targets(model)))
    assert lora == sum(p.numel() for p in peft.parameters() if p.requires_grad)


def test_the_options_that_would_fit_are_each_estimated():
    run = args(use_lora=False, batch_size=8, max_length=1024)  # bf16 activations: auto precision on CUDA
    room = 36 * GB
    assert estimate(run, ONE_B, "cuda").total > room
    fits = alternatives(run, ONE_B, "cuda", 1, None, None, room)
    assert any(f.startswith("LoRA (drop --no-use-lora)") for f in fits)
    for option in fits:  # each one's own figure is under the room
        assert float(option.rsplit("about ", 1)[1].split(" GB")[0]) <= room / GB
    assert not alternatives(dataclasses.replace(run, use_lora=True), ONE_B, "cuda", 1, None, None, 0.1 * GB)


def test_a_run_over_the_device_warns_with_the_fix_and_goes_on(tiny_model, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lancy_trl.cli import app
    from lancy_trl.scale import memory

    monkeypatch.setattr(memory, "device_memory", lambda device: 0.1 * GB)
    result = CliRunner().invoke(app, ["sft", "--model", str(tiny_model), "--max-steps", "1",
                                      "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "warning: this run needs about" in result.output and "the cpu has 0.1 GB" in result.output
    assert "memory estimate for the longest batch" in result.output


def test_the_longest_row_is_guessed_from_characters_and_capped():
    from datasets import Dataset

    from lancy_trl.scale.memory import longest_row

    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "x" * 300}],
                               "completion": [{"role": "assistant", "content": "yes"}]},
                              {"prompt": [{"role": "user", "content": "short"}],
                               "completion": [{"role": "assistant", "content": "no"}]}])
    assert longest_row(rows, 1024) == 303 // 3 + 16
    assert longest_row(rows, 64) == 64
    assert longest_row(iter([]), 512) == 512  # streamed: full rows
