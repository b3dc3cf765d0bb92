import math

import pytest

from lancy_trl.evaluation.classify import parse_label
from lancy_trl.evaluation.metrics import classification_report, expected_calibration_error, matthews

LABELS = ["negative", "neutral", "positive"]


def test_report_on_a_hand_checked_example():
    targets = ["negative", "negative", "neutral", "positive", "positive", "positive"]
    preds = ["negative", "neutral", "neutral", "positive", "positive", None]
    r = classification_report(targets, preds, LABELS)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion"]["matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 2]]
    assert r["per_class"]["positive"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                                          "support": 3}
    assert r["per_class"]["neutral"]["precision"] == 0.5
    assert r["invalid_rate"] == pytest.approx(1 / 6)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.8) / 3)


def test_matthews_extremes():
    assert matthews([[5, 0], [0, 5]]) == pytest.approx(1.0)
    assert matthews([[0, 5], [5, 0]]) == pytest.approx(-1.0)
    assert matthews([[5, 0], [5, 0]]) == 0.0  # constant predictor


def test_ece_is_zero_when_confidence_matches_accuracy():
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0, 1.0], [False, False]) == pytest.approx(1.0)
    assert not math.isnan(expected_calibration_error([0.0], [False]))


@pytest.mark.parametrize(
    "text, label",
    [
        ("Positive", "positive"), (" negative.", "negative"), ("**neutral**", "neutral"),
        ("The sentiment is positive.", "positive"), ("I think it's negative for investors", "negative"),
        ("positive or negative", None), ("no idea", None), ("positively", None),
    ],
)
def test_parse_label(text, label):
    assert parse_label(text, LABELS) == label


def test_parse_prefers_the_longer_label():
    assert parse_label("not_entailment", ["entailment", "not_entailment"]) == "not_entailment"
    assert parse_label("Answer: not entailment", ["entailment", "not_entailment"]) == "not_entailment"
    assert parse_label("entailment", ["entailment", "not_entailment"]) == "entailment"
