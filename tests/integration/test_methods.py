"""Every training method of the registry makes runs that the same commands continue, score, hand over and check:
killed -9 mid-run then `--resume latest`, `lancy eval` on its held-out rows and on the rows it trained on, `lancy
audit`, `lancy export`, and `lancy manifest --verify`."""

import json
import signal

import pytest

from lancy_trl.train import methods
from tests import procs
from tests.conftest import lancy, only_run

COMMON = ["--max-steps", 4, "--save-steps", 2, "--eval-steps", 2, "--max-examples", 32, "--learning-rate", "1e-2"]
OWN = {"pretrain": ["--dataset", "finsent", "--max-length", 64, "--batch-size", 4],
       "grpo": ["--batch-size", 8, "--num-generations", 4]}


@pytest.mark.parametrize("name", methods.names())
def test_every_methods_runs_resume_score_export_and_verify_alike(name, tiny_model, tmp_path):
    out = tmp_path / "runs"
    killed = procs.start([name, "--model", tiny_model, "--output-dir", out, *COMMON, *OWN.get(name, [])],
                         {"LANCY_FAULT": "step@3"}, tmp_path / "killed.log")
    assert killed.wait() == -signal.SIGKILL, killed.output()
    resumed = lancy(name, "--resume", "latest", "--output-dir", out)
    assert resumed.exit_code == 0 and "Resuming" in resumed.output, resumed.output
    run = only_run(out)
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    held = lancy("eval", "--model", run, "--json")
    assert held.exit_code == 0, held.output
    report = json.loads(held.stdout.strip().splitlines()[-1])
    assert report["rows"] > 0 and report["model"], report
    trained = lancy("eval", "--model", run, "--split", "train", "--limit", 8, "--json")
    assert trained.exit_code == 0 and "not a held-out score" in trained.output, trained.output
    audited = lancy("audit", run, "--limit", 4, "--bootstrap", 20, "--json")
    assert audited.exit_code == 0, audited.output
    audit = json.loads(audited.stdout.strip().splitlines()[-1])
    assert audit["members"] == audit["non_members"] == 4 and len(audit["attacks"]) == 5
    assert audit["tokens"] == ("text" if name == "pretrain" else "answer")
    exported = lancy("export", run)
    assert exported.exit_code == 0 and (run / "export" / "merged" / "model.safetensors").is_file(), exported.output
    verified = lancy("manifest", run, "--verify")
    assert verified.exit_code == 0, verified.output
