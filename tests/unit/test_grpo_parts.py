"""GRPO's pieces for classification: the class-balanced prompt order, the greedy-answer figures, the KL default."""

import pytest
import torch

from lancy_trl.train.callbacks import greedy_figures
from lancy_trl.train.grpo_trainer import BalancedRepeatSampler, balanced_order


def test_balanced_order_holds_every_class_in_each_round_whatever_their_shares():
    classes = ["a"] * 60 + ["b"] * 30 + ["c"] * 10  # 60/30/10: a uniform shuffle gives rounds without c
    order = balanced_order(classes, torch.Generator().manual_seed(0))
    assert len(order) == len(classes)
    for start in range(0, 99, 3):
        assert sorted(classes[i] for i in order[start:start + 3]) == ["a", "b", "c"]
    again = balanced_order(classes, torch.Generator().manual_seed(0))
    other = balanced_order(classes, torch.Generator().manual_seed(1))
    assert order == again and order != other  # seeded: a resumed run draws the same order


def test_balanced_sampler_keeps_trls_repeat_structure():
    classes = ["x", "y"] * 6
    sampler = BalancedRepeatSampler(classes, data_source=classes, mini_repeat_count=3, batch_size=2,
                                    repeat_count=2, shuffle=True, seed=0)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 12 * 3 * 2
    chunk = drawn[:12]  # one batch of 2 prompts, each 3 times, the batch twice
    assert chunk[:6] == chunk[6:] and chunk[:3] == [chunk[0]] * 3 and chunk[3:6] == [chunk[3]] * 3
    assert {classes[chunk[0]], classes[chunk[3]]} == {"x", "y"}


def test_greedy_figures_show_a_collapse():
    figures = greedy_figures(["neg", "pos", "neu", "pos"], ["pos", "pos", "pos", None], ["neg", "neu", "pos"])
    assert figures == pytest.approx({"eval_greedy_accuracy": 0.25, "eval_greedy_no_label": 0.25,
                                     "eval_greedy_share_neg": 0.0, "eval_greedy_share_neu": 0.0,
                                     "eval_greedy_share_pos": 0.75})


def test_the_kl_anchor_is_on_from_a_finished_run_only(tmp_path):
    from types import SimpleNamespace

    from lancy_trl.errors import LancyError
    from lancy_trl.train.methods.grpo import ANCHOR_BETA, beta, check

    (tmp_path / "run.json").write_text("{}")
    args = SimpleNamespace(model=str(tmp_path), beta=None, batch_size=16, gradient_accumulation_steps=1,
                           num_generations=8, num_processes=1, deepspeed=None, fsdp=None, use_lora=True)
    assert beta(args) == ANCHOR_BETA > 0
    assert beta(SimpleNamespace(model="smollm2-135m-instruct", beta=None)) == 0.0
    assert beta(SimpleNamespace(model=str(tmp_path), beta=0.0)) == 0.0
    with pytest.raises(LancyError, match="cannot be negative"):
        check(SimpleNamespace(**{**vars(args), "beta": -0.1}))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "adapter_config.json").write_text("{}")
    with pytest.raises(LancyError, match="would anchor to the base model"):
        check(SimpleNamespace(**{**vars(args), "use_lora": False, "num_processes": 2}))
    check(SimpleNamespace(**{**vars(args), "use_lora": False}))  # one process: the anchor is the merged model


def test_generations_and_batch_follow_the_task_unless_given():
    from types import SimpleNamespace

    from lancy_trl.errors import LancyError
    from lancy_trl.train.methods.grpo import fill_defaults

    def filled(task, **given):
        args = SimpleNamespace(**{"num_generations": None, "batch_size": None, "gradient_accumulation_steps": 1,
                                  **given})
        fill_defaults(args, task)
        return args.num_generations, args.batch_size

    assert filled("classification") == (16, 32)
    assert filled("math") == (8, 16)
    assert filled("classification", batch_size=48) == (16, 48)
    assert filled("math", num_generations=4) == (4, 8)
    with pytest.raises(LancyError, match="does not divide the 24 completions"):
        filled("classification", batch_size=24)


def test_little_signal_warns_when_most_groups_score_alike(caplog):
    from types import SimpleNamespace

    from lancy_trl.train.callbacks import LittleSignal

    watch = LittleSignal(every=2)
    for step, share in enumerate([0.9, 0.5, 0.9, 0.95], start=1):  # steps 1-2 average 0.7, steps 3-4 0.925
        with caplog.at_level("WARNING", logger="lancy"):
            watch.on_log(None, SimpleNamespace(global_step=step), None, logs={"frac_reward_zero_std": share})
    warned = [r.getMessage() for r in caplog.records if "little learning signal" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("step 4: in 92% of groups")
