"""The attack arithmetic of lancy_trl/evaluation/membership.py on figures worked out by hand."""

import math

import pytest

from lancy_trl.evaluation.membership import Tokens, attack_scores, lowest_mean, roc


def test_roc_reads_one_for_separated_scores_and_half_for_the_same_scores():
    apart = roc([0.9, 0.8, 0.7, 0.95], [0.1, 0.2, 0.3, 0.15], rounds=50)
    assert apart["auc"] == 1.0 and apart["tpr_at_1pct_fpr"] == 1.0 and apart["auc_low"] == 1.0
    same = roc([0.5] * 4, [0.5] * 4, rounds=50)
    assert same["auc"] == 0.5 and same["auc_low"] == same["auc_high"] == 0.5
    flipped = roc([0.1, 0.2], [0.8, 0.9], rounds=50)
    assert flipped["auc"] == 0.0


def test_min_k_averages_the_lowest_share_at_least_one_token():
    assert lowest_mean([-1.0, -5.0, -2.0, -0.5, -3.0], 0.4) == pytest.approx(-4.0)  # the 2 lowest of 5
    assert lowest_mean([-2.0], 0.2) == -2.0


def test_each_attack_scores_a_likelier_answer_higher():
    rows = [{"prompt": [], "completion": [{"role": "assistant", "content": "alpha beta"}]}] * 2
    sure = Tokens(logps=[-0.1, -0.2], mu=[-0.5, -0.5], sigma=[0.5, 0.5])
    unsure = Tokens(logps=[-2.0, -3.0], mu=[-0.5, -0.5], sigma=[0.5, 0.5])
    base = Tokens(logps=[-1.0, -1.0], mu=[-1.0, -1.0], sigma=[1.0, 1.0])
    scores = attack_scores(rows, [sure, unsure], [base, base], k=0.5)
    for name, (a, b) in scores.items():
        assert a > b, name
    assert scores["loss"][0] == pytest.approx(-0.15)
    assert scores["min_k_plus"][1] == pytest.approx((-3.0 + 0.5) / 0.5)  # the lowest standardised token
    assert scores["reference"][0] == pytest.approx(-0.15 + 1.0)
    assert scores["zlib"][0] == pytest.approx(-0.3 / len(__import__("zlib").compress(b"alpha beta")))
    assert "reference" not in attack_scores(rows, [sure, unsure], None)
    assert not math.isnan(scores["min_k_plus"][0])
