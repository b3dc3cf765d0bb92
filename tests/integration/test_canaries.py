"""Canaries: planted in the training rows (seeded, recorded), and their exposure rising with repetition."""

import json

from datasets import Dataset

from lancy_trl.privacy import canaries
from tests.conftest import lancy


def test_plant_inserts_each_canary_as_often_as_asked_in_the_rows_shape():
    system = {"role": "system", "content": "You are a financial analyst."}
    rows = Dataset.from_list([{"prompt": [system, {"role": "user", "content": f"q{i}"}],
                               "completion": [{"role": "assistant", "content": "neutral"}], "source": "finsent"}
                              for i in range(20)])
    planted_rows, planted = canaries.plant(rows, k=3, repeats=4, seed=7)
    assert len(planted_rows) == 32 and len({c["secret"] for c in planted}) == 3
    texts = [r["completion"][0]["content"] for r in planted_rows if r["source"] == "canary"]
    assert sorted(texts) == sorted(canaries.PREFIX + c["secret"] for c in planted for _ in range(4))
    canary_row = next(r for r in planted_rows if r["source"] == "canary")
    assert canary_row["prompt"] == [system, {"role": "user", "content": canaries.REQUEST}]  # the run's system prompt
    assert canaries.plant(rows, k=3, repeats=4, seed=7)[1] == planted  # seeded: a resume plants the same
    text_rows, _ = canaries.plant(Dataset.from_list([{"text": "a report"}] * 5), k=1, repeats=1, seed=7)
    assert sum(r["text"].startswith(canaries.PREFIX) for r in text_rows) == 1


def test_exposure_rises_with_repetition(tiny_model, tmp_path):
    exposures = {}
    for repeats in (1, 10, 40):
        name = f"x{repeats}"
        trained = lancy("sft", "--model", tiny_model, "--learning-rate", "2e-3", "--max-examples", 40, "--canaries", 2,
                         "--canary-repeats", repeats, "--eval-steps", 1000, "--run-name", name,
                         "--output-dir", tmp_path / "runs")
        assert trained.exit_code == 0, trained.output
        assert "planted 2 canaries" in trained.output
        run = tmp_path / "runs" / name
        record = json.loads((run / "canaries.json").read_text())
        assert len(record["canaries"]) == 2 and record["prompt"][-1]["content"] == canaries.REQUEST
        scored = lancy("eval", "--model", run, "--canaries", "--canary-candidates", 200, "--json")
        assert scored.exit_code == 0, scored.output
        report = json.loads(scored.stdout.strip().splitlines()[-1])
        assert [c["secret"] for c in report["canaries"]] == [c["secret"].strip() for c in record["canaries"]]
        exposures[repeats] = report["mean_exposure"]
    # measured 1.56 / 4.07 / 5.75 bits of at most log2(201) = 7.65
    assert exposures[1] < 3 and exposures[1] + 1 < exposures[10] < exposures[40], exposures
    shown = lancy("eval", "--model", tmp_path / "runs" / "x40", "--canaries", "--canary-candidates", 50)
    assert "mean exposure" in shown.output and "recited" in shown.output


def test_eval_canaries_needs_a_run_that_planted_them(tiny_model):
    result = lancy("eval", "--model", tiny_model, "--canaries")
    assert result.exit_code == 1 and "planted no canaries" in result.output
