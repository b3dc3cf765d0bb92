import pytest

from lancy_trl.cli.options import normalize_argv
from lancy_trl.config import resolve
from lancy_trl.errors import LancyError
from lancy_trl.train.methods.sft import SFTArgs


def test_flags_override_yaml_which_overrides_defaults():
    args = resolve(SFTArgs, {"learning_rate": "1e-4", "max_steps": 50, "batch_size": 4}, {"max_steps": 10})
    assert (args.learning_rate, args.max_steps, args.batch_size, args.max_length) == (1e-4, 10, 4, 256)


def test_every_yaml_problem_is_reported_at_once():
    with pytest.raises(LancyError) as e:
        resolve(SFTArgs, {"max_step": 5, "batch_size": "eight", "use_lora": "yes"}, source="r.yaml")
    msg = str(e.value)
    assert "unknown key 'max_step' in r.yaml; did you mean 'max_steps'" in msg
    assert "key 'batch_size' in r.yaml: expected a whole number" in msg
    assert "key 'use_lora'" in msg


def test_value_checks_name_the_flag():
    with pytest.raises(LancyError) as e:
        resolve(SFTArgs, flags={"batch_size": 0, "precision": "fp8", "lora_dropout": 1.5, "checkpoint_layers": 2})
    msg = str(e.value)
    assert "--batch-size must be positive" in msg and "--precision must be one of" in msg and "--lora-dropout" in msg
    assert "--checkpoint-layers must be in [0, 1] (got 2" in msg


def test_underscore_and_legacy_spellings_are_rewritten():
    multi = {"--dataset", "--mixture-rates", "--dataset-config"}
    argv = ["--max_steps", "5", "--use_lora", "--resume_from_checkpoint=latest", "--datasets", "imdb", "glue",
            "--mixture_rates", "0.7", "0.3", "--lr", "1e-4"]
    assert normalize_argv(argv, multi) == [
        "--max-steps", "5", "--use-lora", "--resume=latest", "--dataset", "imdb", "--dataset", "glue",
        "--mixture-rates", "0.7", "--mixture-rates", "0.3", "--learning-rate", "1e-4",
    ]


def test_shipped_recipes_resolve():
    from pathlib import Path

    from lancy_trl.config import load_yaml, resolve
    from lancy_trl.train.methods.sft import SFTArgs

    recipes = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        args = resolve(SFTArgs, load_yaml(path), source=str(path))
        assert args.dataset
