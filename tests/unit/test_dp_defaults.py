"""Under --dp-epsilon lancy chooses DP-SGD's own settings where the user set none, says so, and warns before
training when the noise will drown what the run could learn."""

import pytest

from lancy_trl.config import resolve
from lancy_trl.privacy.dp import RECIPE, Plan, noise_to_signal, too_noisy
from lancy_trl.train.methods.sft import SFTArgs


def test_dp_epsilon_alone_takes_the_recipe_and_every_flag_or_key_overrides_it():
    plain = resolve(SFTArgs)
    assert (plain.batch_size, plain.learning_rate, plain.lora_r, plain.implied) == (8, None, 16, {})
    private = resolve(SFTArgs, flags={"dp_epsilon": 8})
    assert {k: getattr(private, k) for k in RECIPE} == RECIPE and private.implied == RECIPE
    mine = resolve(SFTArgs, {"lora_r": 8}, flags={"dp_epsilon": 8, "learning_rate": 1e-3})
    assert (mine.lora_r, mine.learning_rate, mine.batch_size) == (8, 1e-3, RECIPE["batch_size"])
    assert set(mine.implied) == set(RECIPE) - {"lora_r", "learning_rate"}


def test_a_private_run_adapts_the_query_and_value_projections_where_the_model_has_them(tiny_model):
    from transformers import AutoModelForCausalLM

    from lancy_trl.train.arguments import lora_size, target_modules

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert target_modules(resolve(SFTArgs, flags={"dp_epsilon": 8}), model) == ["q_proj", "v_proj"]
    every = target_modules(resolve(SFTArgs), model)
    assert {"q_proj", "v_proj", "down_proj"} <= set(every)
    assert target_modules(resolve(SFTArgs, flags={"dp_epsilon": 8, "lora_target_modules": ["down_proj"]}),
                          model) == ["down_proj"]
    q = model.model.layers[0].self_attn.q_proj
    layers = len(model.model.layers)
    v = model.model.layers[0].self_attn.v_proj
    both = 4 * layers * (q.in_features + q.out_features + v.in_features + v.out_features)
    assert lora_size(resolve(SFTArgs, flags={"dp_epsilon": 8, "dp_train_lora_a": True}), model) == both
    assert lora_size(resolve(SFTArgs, flags={"dp_epsilon": 8}), model) == 4 * layers * (q.out_features + v.out_features)


@pytest.mark.parametrize("sigma, weights, batch, warned", [
    (0.441, 4_884_480, 8, True),  # the old defaults on SmolLM2-135M: one label for every sentence
    (1.895, 92_160, 32, True),  # the recipe at epsilon 1: 0.347
    (0.615, 92_160, 32, False),  # the recipe at epsilon 8 (B matrices alone): 0.653 held-out accuracy on finsent
    (0.615, 230_400, 32, False),  # the same with A trained too: 0.493-0.613
])
def test_noise_to_signal_warns_before_training_with_the_figure_and_the_remedies(sigma, weights, batch, warned):
    plan = Plan(epsilon=8, delta=1 / 202, max_grad_norm=1.0, sample_rate=batch / 202, steps=24, noise_multiplier=sigma)
    ratio = noise_to_signal(plan, weights, batch)
    assert ratio == pytest.approx(sigma * weights ** 0.5 / batch)
    line = too_noisy(plan, weights, batch)
    assert (line is not None) == warned
    if warned:
        assert f"{ratio:.0f}x" in line and "add training rows" in line and "raise --dp-epsilon" in line
