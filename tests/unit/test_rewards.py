"""`lancy grpo`'s shipped rewards on hand-written tables, adversarial outputs included, and the --reward parser."""

import pytest

from lancy_trl.errors import LancyError
from lancy_trl.train import rewards

LABELS = ("negative", "neutral", "positive")


def chat(text):
    return [{"role": "assistant", "content": text}]


def score(func, texts, answers, **kwargs):
    return func(prompts=kwargs.pop("prompts", [[]] * len(texts)), completions=[chat(t) for t in texts], answer=answers,
                completion_ids=kwargs.pop("ids", [[0]] * len(texts)), **kwargs)


@pytest.mark.parametrize("text, answer, expected", [
    ("positive", "positive", 1.0),
    ("Positive.", "positive", 1.0),
    ("  **positive**\n", "positive", 1.0),
    ('"neutral"', "neutral", 1.0),
    ("ＰＯＳＩＴＩＶＥ", "positive", 1.0),  # full-width letters
    ("negative", "positive", 0.0),
    ("", "positive", 0.0),
    ("I cannot say whether this is positive.", "positive", 0.0),  # the label word inside a refusal
    ("positive negative", "positive", 0.0),
    ("positively", "positive", 0.0),
    ("positive " * 500, "positive", 0.0),  # very long
    ("not_entailment", "not_entailment", 1.0),
])
def test_label(text, answer, expected):
    assert score(rewards.label_reward, [text], [answer]) == [expected]


@pytest.mark.parametrize("text, answer, expected", [
    ("Step 1: 3 + 4 = 7\n#### 7", "Natalia sold 3+4 = 7 clips.\n#### 7", 1.0),
    ("The answer is 1,234.", "1234", 1.0),
    ("The answer is $1,234.50", "1234.5", 1.0),
    ("Revenue fell to (1,234) thousand", "-1234", 1.0),  # accounting negative
    ("The margin was 25%", "0.25", 1.0),
    ("It came to 4.2 million", "4200000", 1.0),
    ("2.5bn", "2500000000", 1.0),
    ("The result is ٤٢", "42", 1.0),  # Arabic-Indic digits
    ("First 12, then 30, finally 42", "42", 1.0),  # several numbers: the last one counts
    ("42 is wrong, the answer is 41", "42", 0.0),
    ("Option (3) applies", "-3", 0.0),  # a bare integer in parentheses is not a negative
    ("", "42", 0.0),
    ("no number here", "42", 0.0),
    ("7" * 5000, "42", 0.0),  # very long
    ("3.14159", "3.14", 1.0),  # at the precision the answer is written to
])
def test_numeric(text, answer, expected):
    assert score(rewards.numeric_reward, [text], [answer]) == [expected]


@pytest.mark.parametrize("text, answer, expected", [
    ("B", "B", 1.0),
    ("(c)", "C", 0.0),  # lower case is not an option letter
    ("The answer is (C).", "C", 1.0),
    ("B) Inventory", "B", 1.0),
    ("A company would say B", "B", 1.0),  # "A company": a word, not an option
    ("(A) or (B)", "B", 0.0),  # a hedge between two options
    ("", "A", 0.0),
])
def test_choice(text, answer, expected):
    assert score(rewards.choice_reward, [text], [answer]) == [expected]


def test_format_follows_the_task_and_the_prompt():
    label_format = rewards.format_reward_for("classification", LABELS)
    assert score(label_format, ["negative", "Neutral.", "It is positive", ""], ["positive"] * 4) == [1, 1, 0, 0]
    math_format = rewards.format_reward_for("math", ())
    asks = [{"role": "system", "content": "give the final answer on its own line as `#### <number>`"}]
    texts = ["3 + 4 = 7\n#### 7", "3 + 4 = 7, so 7", "#### seven", "#### 7\nhope that helps"]
    assert score(math_format, texts, ["7"] * 4, prompts=[asks] * 4) == [1, 0, 0, 0]
    assert score(math_format, texts, ["7"] * 4, prompts=[[]] * 4) == [1, 1, 0, 1]  # no marker asked: a number
    choice_format = rewards.format_reward_for("multiple_choice", ())
    assert score(choice_format, ["B", "(D) because", "answer is (A)", "A company"], ["B"] * 4) == [1, 1, 1, 0]


def test_length_penalty_past_the_budget():
    length = rewards.length_reward_for(budget=8, limit=16)
    ids = [[0] * n for n in (0, 8, 12, 16, 40)]
    assert score(length, [""] * 5, [""] * 5, ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_parse_names_and_weights():
    assert rewards.parse("format:0.2") == ("format", 0.2)
    assert rewards.parse("label") == ("label", 1.0)
    assert rewards.parse("my_rewards.py:score") == ("my_rewards.py:score", 1.0)
    assert rewards.parse("my_rewards.py:score:-0.5") == ("my_rewards.py:score", -0.5)


def test_load_defaults_to_the_task_and_checks_fit():
    funcs, weights = rewards.load([], "classification", LABELS)
    assert [f.__name__ for f in funcs] == ["label"] and weights == [1.0]
    funcs, weights = rewards.load(["numeric", "format:0.2", "length:0.1"], "math", budget=64, limit=128)
    assert [f.__name__ for f in funcs] == ["numeric", "format", "length"] and weights == [1.0, 0.2, 0.1]
    with pytest.raises(LancyError, match="scores classification answers, but this run's task is math: use --reward numeric"):
        rewards.load(["label"], "math")
    with pytest.raises(LancyError, match="unknown reward 'lable'.*label.*shipped rewards are label, numeric"):
        rewards.load(["lable"], "classification")
    with pytest.raises(LancyError, match="task is qa, which has no default reward"):
        rewards.load([], "qa")
    with pytest.raises(LancyError, match="--reward format knows where"):
        rewards.load(["format"], "qa")


def test_user_functions_from_a_file_or_a_module(tmp_path):
    (tmp_path / "mine.py").write_text(
        "def score(completions, answer, **kwargs):\n    return [float(len(c[0]['content']) < 10) for c in completions]\n"
        "def strict(completions, answer):\n    return [0.0] * len(completions)\n"
    )
    funcs, weights = rewards.load([f"{tmp_path}/mine.py:score:0.5"], "qa")
    assert weights == [0.5] and score(funcs[0], ["short", "a much longer answer"], ["", ""]) == [1.0, 0.0]
    funcs, _ = rewards.load(["lancy_trl.train.rewards:label_reward"], "qa")
    assert funcs[0] is rewards.label_reward
    for spec, words in [(f"{tmp_path}/mine.py:strict", "must accept \\*\\*kwargs"),
                        (f"{tmp_path}/mine.py:nope", "has no function 'nope'"),
                        (f"{tmp_path}/none.py:score", "no file"),
                        ("no_such_module_x:score", "cannot import module")]:
        with pytest.raises(LancyError, match=words):
            rewards.load([spec], "qa")
