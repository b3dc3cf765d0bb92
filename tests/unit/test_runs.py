from datetime import datetime

import pytest

from lancy_trl import runs
from lancy_trl.config import resolve
from lancy_trl.errors import LancyError
from lancy_trl.train.methods.sft import SFTArgs


def test_run_name_follows_the_documented_pattern():
    args = resolve(SFTArgs, flags={"max_steps": 100, "use_lora": False})
    name = runs.run_name(args, "smollm2-135m", "finsent-sentiment", now=datetime(2026, 7, 30, 14, 32))
    assert name == "2026-07-30_14h32m_smollm2-135m_finsent-sentiment_sft_bs8_len256_steps100"


def test_run_directories_are_never_overwritten(tmp_path):
    first = runs.create(tmp_path, "r")
    second = runs.create(tmp_path, "r")
    assert first != second and first.is_dir() and second.is_dir()


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    run = runs.create(tmp_path, "r")
    runs.update(run, status="interrupted")
    for step, state in [(5, '{"global_step": 5}'), (10, '{"global_step": 10}'), (15, None), (20, '{"global_st'),
                        (25, '{"global_step": 20}')]:  # no state yet, a torn one, another step's
        ck = run / "checkpoints" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        if state:
            (ck / "trainer_state.json").write_text(state)
    assert runs.find_resume("latest", str(run), str(tmp_path)) == (run, run / "checkpoints" / "checkpoint-10")
    assert runs.find_resume("latest", None, str(tmp_path))[1].name == "checkpoint-10"
    assert [p.name for p in runs.partial_checkpoints(run)] == ["checkpoint-15", "checkpoint-20", "checkpoint-25"]
    with pytest.raises(LancyError, match="checkpoint-20 is incomplete .* resume from .*checkpoint-10, the newest complete"):
        runs.find_resume(str(run / "checkpoints" / "checkpoint-20"), None, str(tmp_path))


def test_resume_without_checkpoint_says_so(tmp_path):
    run = runs.create(tmp_path, "r")
    runs.update(run, status="failed")
    with pytest.raises(LancyError, match="stopped before its first checkpoint"):
        runs.find_resume("latest", str(run), str(tmp_path))
    with pytest.raises(LancyError, match="no resumable run"):
        runs.find_resume("latest", None, str(tmp_path / "empty"))


def test_a_run_resumes_only_with_the_command_that_made_it(tmp_path):

    from lancy_trl.train import driver, methods

    run = runs.create(tmp_path, "r")
    runs.update(run, status="interrupted", command="pretrain", config={})
    (run / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
    args = resolve(SFTArgs, flags={"resume": "latest", "run_dir": str(run)})
    with pytest.raises(LancyError, match="is a `lancy pretrain` run; resume it with `lancy pretrain --resume`"):
        driver.prepare(methods.get("sft"), args, {})
    runs.update(run, command="sft")
    plan = driver.prepare(methods.get("sft"), args, {})
    run_dir, checkpoint = plan.run_dir, plan.checkpoint
    assert run_dir == run and checkpoint.endswith("checkpoint-5")


def test_resume_latest_takes_the_newest_run_of_its_own_command(tmp_path):
    import os

    older, newer = runs.create(tmp_path, "sft-run"), runs.create(tmp_path, "pretrain-run")
    for run, command in ((older, "sft"), (newer, "pretrain")):
        runs.update(run, status="interrupted", command=command)
        (run / "checkpoints" / "checkpoint-3").mkdir(parents=True)
        (run / "checkpoints" / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}')
    os.utime(older / runs.RUN_FILE, (1, 1))  # the sft run is the older one
    assert runs.find_resume("latest", None, str(tmp_path), "sft")[0] == older
    assert runs.find_resume("latest", None, str(tmp_path), "pretrain")[0] == newer


def test_run_json_has_one_typed_shape(tmp_path):
    """runs.update takes RunRecord's fields only; runs.load reads them back typed, a newer lancy's extras kept."""
    import json

    run = runs.create(tmp_path, "r")
    runs.update(run, status="complete", steps=4, final_eval={"eval_loss": 1.5}, config={"learning_rate": 1e-4})
    with pytest.raises(ValueError, match="run.json has no field stpes"):
        runs.update(run, stpes=5)
    (run / runs.RUN_FILE).write_text(json.dumps({**json.loads((run / runs.RUN_FILE).read_text()), "later": 1}))
    record = runs.load(run)
    assert record.steps == 4 and record.final_eval["eval_loss"] == 1.5 and record.labels == []
    assert record.config["learning_rate"] == 1e-4 and record.extra == {"later": 1}
