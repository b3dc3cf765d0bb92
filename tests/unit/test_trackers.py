"""--report-to: known trackers only, installed ones only, and under --offline no tracking store off the machine; all
refused in one line before a model loads."""

import importlib.util
from types import SimpleNamespace

import pytest

from lancy_trl.errors import LancyError
from lancy_trl.train import trackers


def args(*report_to, offline=False):
    return SimpleNamespace(report_to=list(report_to), offline=offline)


@pytest.mark.parametrize("given, words", [
    (["wandb"], "--report-to wandb is not a tracker lancy reports to; choose from tensorboard, mlflow, trackio, none"),
    (["none", "mlflow"], "give it alone"),
])
def test_unknown_or_contradictory_trackers_are_refused(given, words):
    with pytest.raises(LancyError, match=words):
        trackers.check(args(*given))


def test_a_tracker_that_is_not_installed_names_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LancyError, match="--report-to mlflow needs the mlflow package: pip install mlflow"):
        trackers.check(args("mlflow"))


@pytest.mark.parametrize("env, value, tracker", [("MLFLOW_TRACKING_URI", "https://mlflow.example.com", "mlflow"),
                                                 ("MLFLOW_TRACKING_URI", "databricks://prod", "mlflow"),
                                                 ("TRACKIO_SPACE_ID", "someone/space", "trackio")])
def test_offline_refuses_a_store_off_the_machine_and_keeps_local_ones(monkeypatch, env, value, tracker):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setenv(env, value)
    with pytest.raises(LancyError, match=f"--offline refuses {env}={value}"):
        trackers.check(args(tracker, offline=True))
    trackers.check(args(tracker))  # without --offline the user's own server is theirs to use
    for local in ("file:///srv/mlruns", "sqlite:///srv/mlflow.db", "/srv/mlruns"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", local)
        monkeypatch.delenv("TRACKIO_SPACE_ID", raising=False)
        trackers.check(args(tracker, offline=True))


def test_local_stores_go_in_the_run_unless_set_and_tensorboard_is_lancys_own(monkeypatch, tmp_path):
    import os

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "TRACKIO_DIR"):
        monkeypatch.delenv(name, raising=False)
    with trackers.local_stores(args("mlflow", "trackio"), tmp_path):
        assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
        assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the next run's own
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    with trackers.local_stores(args("mlflow"), tmp_path):
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    import sys

    monkeypatch.setitem(sys.modules, "trackio.utils", SimpleNamespace(TRACKIO_DIR=tmp_path / "home" / "trackio"))
    with pytest.raises(LancyError, match="trackio was imported before lancy could point it at"):  # it reads it once
        trackers.trackio_folder(args("trackio"), tmp_path / "runs")
    monkeypatch.delitem(sys.modules, "trackio.utils")
    trackers.trackio_folder(args("trackio"), tmp_path / "runs")
    assert os.environ["TRACKIO_DIR"] == str(tmp_path / "runs" / "trackio")
    trackers.trackio_folder(args("trackio"), tmp_path / "other")  # set already: kept
    assert os.environ["TRACKIO_DIR"] == str(tmp_path / "runs" / "trackio")
    assert trackers.trainer_fields(args("tensorboard")) == {"report_to": "none"}
    assert trackers.trainer_fields(args("tensorboard", "mlflow")) == {"report_to": ["mlflow"]}
    assert trackers.trainer_fields(args("trackio"))["trackio_static_space_id"] is False  # never a Space
    assert trackers.trainer_fields(args("none")) == {"report_to": "none"}
