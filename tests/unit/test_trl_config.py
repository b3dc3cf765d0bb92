"""lancy's options map onto TRL's SFTConfig with defaults chosen by device."""

import pytest

from lancy_trl.config import resolve
from lancy_trl.train.methods.sft import SFTArgs


@pytest.mark.parametrize(("device", "flags", "expected"), [
    ("cuda", {}, 64),  # bucketed shapes on GPUs
    ("cpu", {}, None),  # padding is compute on CPU
    ("cuda", {"pad_to_multiple_of": 8}, 8),
    ("cpu", {"pad_to_multiple_of": 16}, 16),
])
def test_batches_are_padded_to_a_multiple_by_device(tmp_path, device, flags, expected):
    from lancy_trl.train.arguments import sft_config

    args = resolve(SFTArgs, flags=flags)
    info = {"device": device, "precision": "fp32", "attn_implementation": "sdpa"}
    config = sft_config(args, tmp_path, info, has_eval=False)
    assert config.pad_to_multiple_of == expected
    assert config.packing is False and config.completion_only_loss is True


@pytest.mark.parametrize(("device", "flags", "expected"), [
    ("cpu", {}, (8, 1)),  # whole batches
    ("cpu", {"use_lora": False}, (8, 1)),
    ("cuda", {}, (8, 1)),
    ("cpu", {"micro_batch_size": 4}, (4, 2)),
    ("cpu", {"batch_size": 6, "micro_batch_size": 4}, (3, 2)),  # the largest divisor of the batch that fits
    ("cpu", {"batch_size": 2, "gradient_accumulation_steps": 3}, (2, 3)),
    ("cpu", {"micro_batch_size": 8}, (8, 1)),
    ("cuda", {"micro_batch_size": 2, "gradient_accumulation_steps": 2}, (2, 8)),
])
def test_batches_run_as_micro_batches_by_device_and_mode(tmp_path, device, flags, expected):
    from lancy_trl.train.arguments import sft_config

    args = resolve(SFTArgs, flags=flags)
    info = {"device": device, "precision": "fp32", "attn_implementation": "sdpa"}
    config = sft_config(args, tmp_path, info, has_eval=False)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == expected
    assert config.per_device_eval_batch_size == args.batch_size


@pytest.mark.parametrize(("precision", "flag", "expected"), [
    ("fp32", None, True), ("bf16", None, False), ("fp32", False, False), ("fp32", True, True),
])
def test_lean_activations_only_in_fp32(precision, flag, expected):
    from lancy_trl.train.arguments import use_lean_activations

    args = resolve(SFTArgs, flags={} if flag is None else {"lean_activations": flag})
    assert use_lean_activations(args, {"precision": precision}) is expected


def test_lean_activations_with_bf16_is_refused_with_the_fix():
    from lancy_trl.errors import LancyError
    from lancy_trl.train.arguments import use_lean_activations

    with pytest.raises(LancyError, match="pass --precision fp32 or drop --lean-activations"):
        use_lean_activations(resolve(SFTArgs, flags={"lean_activations": True}), {"precision": "bf16"})
