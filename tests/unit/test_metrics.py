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


# --- other task kinds ------------------------------------------------------------------------

from lancy_trl.evaluation.tasks import exact_match, final_number, numbers_match, parse_choice, token_f1  # noqa: E402


@pytest.mark.parametrize("text, letter", [
    ("I think the answer is (C).", "C"), ("The answer is B", "B"), ("B) Inventory", "B"), ("(D)", "D"), ("A", "A"),
    ("C. y", "C"), ("The correct option is D", "D"), ("A bond is debt", None), ("I do not know", None),
    ("answer is (Z)", None),
])
def test_choice_letters_are_parsed(text, letter):
    assert parse_choice(text, "ABCD") == letter


@pytest.mark.parametrize("prediction, target, match", [
    ("The total is $1,234.50", "1234.5", True),
    ("Natalia sold 48+24 = 72 clips.\n#### 72", "reasoning...\n#### 72", True),
    ("so the fee is 20 dollars", "#### 20", True),
    ("#### 71", "#### 72", False),
    ("The margin is 25%", "0.25", True),
    ("0.25", "25%", True),
    ("Revenue was $4.2 million", "4200000", True),
    ("about 4.2bn", "4,200,000,000", True),
    ("12.347", "12.35", True),  # at the precision the answer is given
    ("12.4", "12.35", False),
    ("99", "100", False),
    ("-0.2", "-0.2", True),
    ("no number here", "5", False),
])
def test_math_answers_match_numerically(prediction, target, match):
    assert numbers_match(prediction, target) is match


def test_final_number_prefers_the_marked_answer():
    assert final_number("3 * 12 = 36 pens, so the answer is 36. Check: 2 boxes")[0] == 36


def test_qa_exact_match_and_token_f1():
    assert exact_match("The Fed.", "fed") and not exact_match("the fed raised", "fed")
    assert token_f1("The fee is 1% a year", "a 1% yearly fee") == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))
    assert token_f1("", "") == 1.0 and token_f1("x", "y") == 0.0
