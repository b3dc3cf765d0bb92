"""lancy's options map onto TRL's SFTConfig with defaults chosen by device."""

import pytest

from lancy_trl.config import SFTArgs, resolve


@pytest.mark.parametrize(("device", "flags", "expected"), [
    ("cuda", {}, 64),  # bucketed shapes on GPUs
    ("cpu", {}, None),  # padding is compute on CPU
    ("cuda", {"pad_to_multiple_of": 8}, 8),
    ("cpu", {"pad_to_multiple_of": 16}, 16),
])
def test_batches_are_padded_to_a_multiple_by_device(tmp_path, device, flags, expected):
    from lancy_trl.train.sft import to_trl_config

    args = resolve(SFTArgs, flags=flags)
    info = {"device": device, "precision": "fp32", "attn_implementation": "sdpa"}
    config = to_trl_config(args, tmp_path, info, has_eval=False)
    assert config.pad_to_multiple_of == expected
    assert config.packing is False and config.completion_only_loss is True
