"""What lancy reads from its libraries beyond their documented API still exists in the installed versions: the
check to run when moving a bound in pyproject.toml."""

import inspect


def test_trl_attributes_lancy_trainer_reads():
    from trl import SFTTrainer

    source = inspect.getsource(SFTTrainer)
    for name in ("self._metrics", "self._total_train_tokens", "self.aux_loss_enabled"):
        assert name in source, f"TRL's SFTTrainer no longer has {name}: update lancy_trl/train/trainer.py"


def test_transformers_registries_and_layers_lancy_extends():
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_layers import GradientCheckpointingLayer

    assert callable(AttentionInterface.register) and callable(AttentionMaskInterface.register)
    assert callable(sdpa_attention_forward) and callable(sdpa_mask)
    assert "gradient_checkpointing" in inspect.getsource(GradientCheckpointingLayer)


def test_installed_versions_are_inside_the_bounds():
    import importlib.metadata as md

    from packaging.requirements import Requirement

    for line in md.requires("lancy-trl") or []:
        req = Requirement(line)
        if req.marker is None and req.name in ("transformers", "trl", "peft"):
            assert req.specifier.contains(md.version(req.name)), (req.name, md.version(req.name), str(req.specifier))
