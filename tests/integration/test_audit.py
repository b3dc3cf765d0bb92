"""`lancy audit`: membership inference checked on cases whose answer is known. A tiny model made to memorise
random answers is caught by every attack (AUC near 1); the same rows scored by its base model, the control, read
near chance; mistakes are one line before any model loads."""

import json
import random

import pytest

from tests.conftest import lancy, sft

CODES = "amber birch cedar delta ember flint grove heron ivory jade kelp lotus".split()
WORDS = "revenue margin client ledger bond swap equity hedge yield coupon desk audit".split()


def random_answers(path, n=64, seed=0):
    """Rows whose answers are three random code words: nothing to generalise, only to memorise."""
    rng = random.Random(seed)
    rows = [{"prompt": " ".join(rng.choice(WORDS) for _ in range(6)) + f" {i}",
             "completion": " ".join(rng.choice(CODES) for _ in range(3))} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def memorised(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    data = random_answers(folder / "rows.jsonl")
    result = sft("--model", tiny_model, "--dataset", data, "--eval-fraction", 0.5, "--no-use-lora",
                 "--learning-rate", 1e-2, "--max-steps", 200, "--batch-size", 8, "--eval-steps", 200,
                 "--output-dir", folder / "runs", "--run-name", "memorised")
    assert result.exit_code == 0, result.output
    return folder / "runs" / "memorised"


def audit(*args):
    result = lancy("audit", *args, "--json", "--bootstrap", 200)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_run_that_memorised_random_answers_is_caught_and_its_base_control_reads_chance(memorised):
    report = audit(memorised)
    assert report["members"] == report["non_members"] == 32 and report["tokens"] == "answer"
    assert set(report["attacks"]) == {"loss", "zlib", "min_k", "min_k_plus", "reference"}
    for name, a in report["attacks"].items():
        assert a["auc"] > 0.95 and a["auc_low"] <= a["auc"] <= a["auc_high"], (name, a)
    assert report["attacks"]["loss"]["tpr_at_1pct_fpr"] > 0.5
    assert report["verbatim"]["members"] > 0.9 and report["verbatim"]["non_members"] < 0.1
    assert report["answer_loss"]["members"] < 0.5 * report["answer_loss"]["non_members"]  # the gap the attacks read
    assert json.loads((memorised / "audit.json").read_text())["attacks"] == report["attacks"]

    control = audit(memorised, "--base")
    assert control["model"] == "base" and control["attacks"]["reference"]["auc"] == 0.5
    for name, a in control["attacks"].items():
        assert 0.25 < a["auc"] < 0.75, (name, a)
    assert control["verbatim"]["members"] < 0.1
    loss = control["answer_loss"]
    assert abs(loss["members"] - loss["non_members"]) < 0.25 * loss["non_members"]  # the base model saw neither
    assert (memorised / "audit-base.json").is_file()


def test_unseen_rows_from_a_file_and_rows_seen_in_training_dropped(memorised, tmp_path):
    config = json.loads((memorised / "run.json").read_text())["config"]
    unseen = random_answers(tmp_path / "unseen.jsonl", n=40, seed=1)
    everything = open(config["dataset"][0]).read()  # the run's whole file: its 32 training rows among them
    unseen.write_text(unseen.read_text() + everything)
    report = audit(memorised, "--data-files", unseen, "--limit", 20)
    assert report["members"] == report["non_members"] == 20 and report["non_members_from"] == str(unseen)
    assert report["notes"] == ["32 non-member rows dropped: the same as a training row"]
    assert report["attacks"]["loss"]["auc"] > 0.95


@pytest.mark.parametrize("args, words", [
    (["NOT_A_RUN"], "is not a lancy run directory"),
    (["RUN", "--k", 0], "--k must be in (0, 1]"),
    (["RUN", "--data-files", "missing.jsonl"], "--data-files missing.jsonl: no such file"),
    (["NO_HELD_OUT"], "held out no rows to compare its training rows with: pass --data-files"),
])
def test_audit_mistakes_are_one_line(args, words, memorised, tiny_model, tmp_path):
    bare = tmp_path / "runs" / "bare"
    if "NO_HELD_OUT" in args:
        data = random_answers(tmp_path / "rows.jsonl", n=16)
        assert sft("--model", tiny_model, "--dataset", data, "--eval-fraction", 0, "--max-steps", 1,
                   "--output-dir", tmp_path / "runs", "--run-name", "bare").exit_code == 0
    argv = [{"NOT_A_RUN": tmp_path, "RUN": memorised, "NO_HELD_OUT": bare}.get(a, a) for a in args]
    result = lancy("audit", *argv)
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and output.startswith("error:") and words in output, output
    assert "Traceback" not in output


def test_a_run_still_training_is_not_audited_nor_told_to_resume(tmp_path):
    from lancy_trl import runs

    run = tmp_path / "live"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"command": "sft", "status": "running", "owner": runs.owner()}))
    result = lancy("audit", run)
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "is still training (pid" in output and "--resume" not in output, output

