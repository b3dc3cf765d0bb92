"""`--report-to`: MLflow and trackio log a run through the Trainer's own callbacks into local databases (MLflow's in
the run, trackio's beside the runs), read back; `none` writes no tracker; lancy's run.json is written whatever is chosen."""

import json
import os
import subprocess
import sys

from tests.conftest import lancy, only_run, sft


def quick(tiny_model, out):
    return ["--model", tiny_model, "--output-dir", out, "--max-steps", 4, "--max-examples", 32, "--eval-steps", 2,
            "--logging-steps", 1]


def test_mlflow_logs_the_run_into_a_file_store_inside_it(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = sft(*quick(tiny_model, tmp_path / "runs"), "--report-to", "mlflow", "--report-to", "tensorboard",
                 "--offline")  # no byte leaves the machine: the network guard would fail the run
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    from mlflow.tracking import MlflowClient

    assert not (run / "mlruns").exists()  # MLflow 3's file store is in maintenance: an SQLite database instead
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("lancy").experiment_id])
    assert logged.info.run_name == run.name
    losses = client.get_metric_history(logged.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3, 4] and all(m.value > 0 for m in losses)
    assert "eval_loss" in logged.data.metrics and logged.data.params["learning_rate"] == "0.0002"
    assert (run / "tensorboard").is_dir() and json.loads((run / "run.json").read_text())["status"] == "complete"


def test_report_to_none_writes_no_tracker_and_the_report_says_so(tiny_model, tmp_path):
    result = sft(*quick(tiny_model, tmp_path / "runs"), "--report-to", "none")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    assert not (run / "tensorboard").exists() and not (run / "mlflow.db").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert lancy("report", run).exit_code == 0
    assert "No training curves" in (run / "report.html").read_text()


def test_a_tracker_mistake_is_one_line_before_any_run(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    for flags, words in ((["--report-to", "wandb"], "not a tracker"),
                         (["--report-to", "mlflow", "--offline"], "--offline refuses MLFLOW_TRACKING_URI")):
        result = sft(*quick(tiny_model, tmp_path / "runs"), *flags)
        assert result.exit_code == 1 and words in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_trackio_logs_the_run_into_a_database_beside_the_runs(tiny_model, tmp_path):
    """As a user runs it, a process of its own: trackio is imported with TRL, and reads where its database goes
    then, once."""
    env = {k: v for k, v in os.environ.items() if k != "TRACKIO_DIR"}
    done = subprocess.run([sys.executable, "-m", "lancy_trl", "sft", *map(str, quick(tiny_model, tmp_path / "runs")),
                           "--report-to", "trackio", "--offline"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    run = only_run(tmp_path / "runs")
    import sqlite3

    with sqlite3.connect(tmp_path / "runs" / "trackio" / "lancy.db") as db:  # not ~/.cache/huggingface/trackio
        logged = [(name, json.loads(m)) for name, m in db.execute("select run_name, metrics from metrics order by id")]
    assert {name for name, _ in logged} == {run.name}  # the tracker's run is named as lancy's
    assert [m["train/global_step"] for _, m in logged if "train/loss" in m] == [1, 2, 3, 4]
    assert not (run / "tensorboard").exists()


def test_a_run_that_is_not_offline_makes_no_network_call(tiny_model, tmp_path):
    """TRL's trainers report each run (trainer, model family, set-up) to the hub as they are built, unless
    huggingface_hub's switch says no; CI and offline mode hide it. A user's online run on a local model: its hub is a
    local server that records what reaches it, and an audit hook records every host the process looks up or connects
    to. Nothing may reach either."""
    import http.server
    import threading

    seen: list[str] = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (http.server's naming)
            seen.append(f"HEAD {self.path}")
            self.send_response(200)
            self.end_headers()

        do_GET = do_POST = do_HEAD  # noqa: N815

        def log_message(self, *args):
            pass

    site, calls = tmp_path / "site", tmp_path / "calls.txt"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "def hook(event, args):\n"
        "    if event in ('socket.getaddrinfo', 'socket.connect'):\n"
        f"        with open({str(calls)!r}, 'a') as f:\n"
        "            f.write(f'{event} {args[1] if event == \"socket.connect\" else args[0]}\\n')\n"
        "sys.addaudithook(hook)\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    quiet = ("CI", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "LANCY_OFFLINE",
             "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK")
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", PYTHONPATH=str(site))
    try:
        done = subprocess.run([sys.executable, "-m", "lancy_trl", "sft", "--model", tiny_model, "--output-dir",
                               str(tmp_path / "runs"), "--max-steps", "2", "--max-examples", "16", "--eval-fraction", "0"],
                              capture_output=True, text=True, env=env, timeout=300)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((only_run(tmp_path / "runs") / "run.json").read_text())["offline"] is False  # an online run
    assert seen == []
    assert not calls.exists(), calls.read_text()
