"""`lancy pretrain` on the tiny model: plain-text files (globbed), packed blocks, held-out perplexity, resume, and
registry datasets contributing their text to a mixture."""

import json

from tests.conftest import lancy


def write_reports(folder, n=12):
    folder.mkdir()
    for i in range(n):
        (folder / f"r{i:02d}.txt").write_text(f"Revenue rose to {i} million euros in the quarter. " * (2 + 4 * i))
    return folder


def test_pretrain_on_globbed_text_files_then_eval_and_resume(tiny_model, tmp_path):
    reports = write_reports(tmp_path / "reports")
    args = ["pretrain", "--model", tiny_model, "--data-files", f"{reports}/*.txt", "--max-length", 64, "--batch-size", 2,
            "--max-steps", 4, "--eval-steps", 2, "--save-steps", 2, "--output-dir", tmp_path / "runs"]
    result = lancy(*args)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert "_reports_pretrain_" in run.name and "no attention across documents" in " ".join(result.output.split())
    info = json.loads((run / "run.json").read_text())
    assert (info["command"], info["task"], info["status"]) == ("pretrain", "pretraining", "complete")
    assert info["data"]["train_examples"] == 10 and info["held_out"]["validation"]["rows"] == 2  # 10% of 12, seeded
    final = json.loads((run / "metrics.json").read_text())
    assert final["eval_perplexity"] > 1 and abs(final["eval_perplexity"] - 2.718281828 ** final["eval_loss"]) < 1e-6
    # lancy eval scores the held-out documents' perplexity
    scored = lancy("eval", "--model", run, "--json")
    assert scored.exit_code == 0, scored.output
    out = json.loads(scored.stdout.strip().splitlines()[-1])
    assert (out["task"], out["split"], out["held_out"], out["rows"]) == ("pretraining", "validation", True, 2)
    assert out["model"]["perplexity"]["perplexity"] > 1
    # a complete pretrain run is refused like an sft run; sft does not resume it
    assert "is complete" in lancy("pretrain", "--resume", "latest", "--run-dir", run).output
    from tests.conftest import kill_after_first_checkpoint

    kill_after_first_checkpoint(run)
    assert "is a `lancy pretrain` run" in lancy("sft", "--resume", "latest", "--run-dir", run).output
    resumed = lancy("pretrain", "--resume", "latest", "--run-dir", run)
    assert resumed.exit_code == 0, resumed.output
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["steps"] == 4


def test_classification_data_contributes_its_text_to_a_pretraining_mixture(tiny_model, tmp_path):
    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(json.dumps({"text": f"note {i}: margins were stable"}) + "\n" for i in range(20)))
    result = lancy("pretrain", "--model", tiny_model, "--dataset", "finsent", "--dataset", notes, "--mixture-rates",
                    0.5, 0.5, "--max-length", 64, "--max-steps", 2, "--output-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    held = [json.loads(line) for line in (run / "data" / "validation.jsonl").read_text().splitlines()]
    assert all(set(r) == {"text", "source"} for r in held)
    finsent = [r["text"] for r in held if r["source"] == "finsent"]
    assert finsent and all(r.split("\n\n")[-1] in ("negative", "neutral", "positive") for r in finsent)


def test_pretrain_needs_text():
    result = lancy("pretrain")
    assert result.exit_code == 1 and "no text to train on" in result.output


def test_a_streamed_corpus_holds_out_its_head_and_trains_on_the_rest_only(tmp_path):
    from lancy_trl.config import resolve
    from lancy_trl.data.stream import streamed_text
    from lancy_trl.train.methods.pretrain import PretrainArgs

    reports = write_reports(tmp_path / "reports", n=30)
    files = [f"train={p}" for p in sorted(reports.glob("*.txt"))]
    args = resolve(PretrainArgs, flags={"dataset": [files[0][6:]], "data_files": files[1:], "streaming": True,
                                        "max_steps": 5, "batch_size": 2, "eval_max_batches": 3})
    data = streamed_text(args)
    held = set(data.eval["text"])
    trained = [row["text"] for row in data.train]  # the whole stream, in its seeded order
    everything = {p.read_text() for p in reports.glob("*.txt")}
    assert len(held) == 6 and not held & set(trained) and held | set(trained) == everything
    assert trained == [row["text"] for row in streamed_text(args).train]  # the same order on every read (resume)
    assert data.name == "reports" and data.stats["streamed"] and data.stats["held_out_documents"] == 6


def test_streamed_pretraining_runs_is_scored_and_resumes(tiny_model, tmp_path):
    reports = write_reports(tmp_path / "reports", n=40)
    result = lancy("pretrain", "--model", tiny_model, "--data-files", f"{reports}/*.txt", "--streaming",
                    "--max-length", 64, "--batch-size", 2, "--eval-max-batches", 2, "--max-steps", 4, "--eval-steps", 2,
                    "--save-steps", 2, "--output-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "streamed, tokenized and packed on the fly" in " ".join(result.output.split())
    (run,) = (tmp_path / "runs").iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["streamed"] and info["held_out"]["validation"]["rows"] == 4
    assert json.loads((run / "metrics.json").read_text())["eval_perplexity"] > 1
    from tests.conftest import kill_after_first_checkpoint

    kill_after_first_checkpoint(run)
    resumed = lancy("pretrain", "--resume", "latest", "--run-dir", run)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "run.json").read_text())["steps"] == 4
